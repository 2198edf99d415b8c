"""``slimmer bench A.onnx [B.onnx]``: onnxruntime latency, paired and interleaved when two are given.

``slimmer bench --calibrate [-o costs.json]``: measure the latency cost model's constants on this
machine (:mod:`slimmer.export.calibrate`), for ``compress --latency-costs``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer
from rich.markup import escape

from slimmer.cli.render import err_console, run_guarded, write_json

CALIBRATE = "Calibration (--calibrate)"


def bench_command(
    a: Path | None = typer.Argument(None, help="ONNX file (the baseline when two are given)", show_default=False),
    b: Path | None = typer.Argument(None, help="second ONNX file, timed interleaved with the first"),
    warmup: int | None = typer.Option(
        None, "--warmup", help="untimed runs per model first (default 10; 3 with --calibrate)", show_default=False
    ),
    pairs: int | None = typer.Option(
        None,
        "--pairs",
        help="timed runs per model, interleaved A, B, A, B (default 50); with --calibrate, timed rounds over "
        "the calibration graphs (default 100)",
        show_default=False,
    ),
    threads: int = typer.Option(1, "--threads", help="onnxruntime intra-op threads"),
    batch: int = typer.Option(1, "--batch", help="batch size for a dynamic batch axis"),
    dim: list[str] = typer.Option(
        [], "--dim", help="size of a symbolic input axis, NAME=SIZE (repeatable), e.g. --dim seq=128"
    ),
    calibrate: bool = typer.Option(
        False,
        "--calibrate",
        help="measure the latency cost model's constants on this machine (no ONNX file arguments); "
        "use the file with compress --latency-costs",
        rich_help_panel=CALIBRATE,
    ),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="--calibrate with 15 rounds instead of 100 (about 1.5 s instead of 6 s on one core; noisier)",
        rich_help_panel=CALIBRATE,
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="--calibrate: write the constants to this JSON file", rich_help_panel=CALIBRATE
    ),
    force: bool = typer.Option(False, "--force", help="replace an existing -o file", rich_help_panel=CALIBRATE),
    json_output: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Measure p50/p90 latency; with two files, the median per-pair speedup of B over A.
    With --calibrate, fit the latency cost model's constants on this machine instead."""
    if calibrate:
        _calibrate(a, b, warmup, pairs, threads, batch, dim, quick, output, force, json_output, debug)
        return

    def go():
        from slimmer.errors import ConfigError, InputError
        from slimmer.export.bench import paired_latency, parse_dims

        if a is None:
            raise ConfigError(
                "missing the ONNX file argument", hint="slimmer bench A.onnx [B.onnx], or slimmer bench --calibrate"
            )
        calibration_only = [n for n, v in (("--quick", quick), ("-o/--output", output), ("--force", force)) if v]
        if calibration_only:
            raise ConfigError(f"{', '.join(calibration_only)} apply to --calibrate", hint="add --calibrate")
        for p in (a, b):
            if p is not None and not Path(p).is_file():
                raise InputError(f"{p}: no such ONNX file")
        return paired_latency(
            a,
            b,
            warmup=10 if warmup is None else warmup,
            pairs=50 if pairs is None else pairs,
            threads=threads,
            batch=batch,
            dims=parse_dims(dim),
        )

    result = run_guarded(go, debug=debug, json_mode=json_output)
    if json_output:
        write_json(asdict(result))
    err_console.print(f"{a}: p50 {result.a.p50_ms:.3f} ms, p90 {result.a.p90_ms:.3f} ms ({result.a.runs} runs)")
    if result.b is not None:
        err_console.print(f"{b}: p50 {result.b.p50_ms:.3f} ms, p90 {result.b.p90_ms:.3f} ms ({result.b.runs} runs)")
        err_console.print(f"speedup of B over A (median of paired ratios): {result.speedup:.3f}x")


def _calibrate(a, b, warmup, pairs, threads, batch, dim, quick, output, force, json_output, debug) -> None:
    """``bench --calibrate``: usage checked and ``-o`` checked before timing; the file written last."""

    def go():
        from slimmer.errors import ConfigError
        from slimmer.export import calibrate as cal

        if a is not None or b is not None:
            raise ConfigError(
                "--calibrate times its own graphs: it takes no ONNX file arguments",
                hint="slimmer bench --calibrate [-o costs.json], or slimmer bench A.onnx [B.onnx] without --calibrate",
            )
        if batch != 1 or dim:
            raise ConfigError("--batch and --dim size the inputs of ONNX files; --calibrate uses batch 1")
        if quick and pairs is not None:
            raise ConfigError("--quick sets the rounds: give either --quick or --pairs")
        if force and output is None:
            raise ConfigError("--force replaces the -o file: give -o FILE")
        if output is not None:
            cal.check_output(output, force=force)  # before a calibration the write would then refuse
        rounds = cal.QUICK_ROUNDS if quick else (cal.ROUNDS if pairs is None else pairs)
        calibration = cal.calibrate(threads=threads, rounds=rounds, warmup=cal.WARMUP if warmup is None else warmup)
        if output is not None:
            cal.write_calibration(calibration, output, force=force)
        return calibration

    calibration = run_guarded(go, debug=debug, json_mode=json_output)
    if json_output:
        write_json({**calibration.to_json(), "output": None if output is None else str(output)})
    _print_calibration(calibration, output)


def _print_calibration(calibration, output: Path | None) -> None:
    from slimmer.structures.latency_cost import BUILT_IN

    costs = calibration.costs
    err_console.print(f"{'constant':<16}{'measured':>10}{'built-in':>10}   (per unit, relative to a dense MAC)")
    for name in ("dense_mac", "depthwise_mac", "element", "weight"):
        err_console.print(f"{name:<16}{getattr(costs, name):>10.3f}{getattr(BUILT_IN, name):>10.3f}")
    err_console.print(
        f"fit error {costs.fit_error:.1%} (relative RMS over {sum(p.in_fit for p in calibration.probes)} graphs), "
        f"{calibration.ns_per_dense_mac:.4f} ns per dense MAC, {calibration.rounds} rounds in "
        f"{calibration.seconds:.1f} s, {costs.threads} thread(s), onnxruntime {costs.onnxruntime}, "
        f"{escape(costs.machine or '')}"
    )
    for warning in calibration.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if output is not None:
        err_console.print(f"wrote {escape(str(output))}; use it with compress --latency-aware --latency-costs FILE")
