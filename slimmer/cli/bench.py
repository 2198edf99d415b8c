"""``slimmer bench A.onnx [B.onnx]``: onnxruntime latency, paired and interleaved when two are given."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from slimmer.cli.render import err_console, run_guarded, write_json


def bench_command(
    a: Path = typer.Argument(..., help="ONNX file (the baseline when two are given)"),
    b: Path | None = typer.Argument(None, help="second ONNX file, timed interleaved with the first"),
    warmup: int = typer.Option(10, "--warmup", help="untimed runs per model first"),
    pairs: int = typer.Option(50, "--pairs", help="timed runs per model, interleaved A, B, A, B"),
    threads: int = typer.Option(1, "--threads", help="onnxruntime intra-op threads"),
    batch: int = typer.Option(1, "--batch", help="batch size for a dynamic batch axis"),
    dim: list[str] = typer.Option(
        [], "--dim", help="size of a symbolic input axis, NAME=SIZE (repeatable), e.g. --dim seq=128"
    ),
    json_output: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Measure p50/p90 latency; with two files, the median per-pair speedup of B over A."""

    def go():
        from slimmer.export.bench import paired_latency, parse_dims

        for p in (a, b):
            if p is not None and not Path(p).is_file():
                from slimmer.errors import InputError

                raise InputError(f"{p}: no such ONNX file")
        return paired_latency(a, b, warmup=warmup, pairs=pairs, threads=threads, batch=batch, dims=parse_dims(dim))

    result = run_guarded(go, debug=debug, json_mode=json_output)
    if json_output:
        write_json(asdict(result))
    err_console.print(f"{a}: p50 {result.a.p50_ms:.3f} ms, p90 {result.a.p90_ms:.3f} ms ({result.a.runs} runs)")
    if result.b is not None:
        err_console.print(f"{b}: p50 {result.b.p50_ms:.3f} ms, p90 {result.b.p90_ms:.3f} ms ({result.b.runs} runs)")
        err_console.print(f"speedup of B over A (median of paired ratios): {result.speedup:.3f}x")
