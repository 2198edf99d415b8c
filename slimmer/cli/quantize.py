"""``slimmer quantize GRAPH.onnx``: static int8 (onnxruntime QDQ) of an ONNX file, gated like ``compress``."""

from __future__ import annotations

from pathlib import Path

import typer

from slimmer.cli.render import emit_report, run_guarded


def quantize_command(
    graph: Path = typer.Argument(..., help="the float ONNX file to quantize"),
    data: str | None = typer.Option(
        None, "--data", help="calibration and held-out samples: .npz (x, y), IDX folder, image folders, fashion-mnist"
    ),
    example_inputs: Path | None = typer.Option(
        None, "--example-inputs", help=".npz with one array per graph input (several inputs, integer ones too)"
    ),
    input_shape: str | None = typer.Option(
        None, "--input-shape", help="full input shape for --data when the graph's is not fixed, e.g. 1,3,224,224"
    ),
    mean: str | None = typer.Option(None, "--mean", help="input normalization mean for --data (default 0)"),
    std: str | None = typer.Option(None, "--std", help="input normalization std for --data (default 1)"),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="held-out fraction of a source without a split"),
    calibration_method: str = typer.Option("minmax", "--calibration-method", help="minmax, entropy or percentile"),
    calibration_samples: int = typer.Option(128, "--calibration-samples", help="samples used for calibration"),
    eval_samples: int = typer.Option(512, "--eval-samples", help="held-out samples for agreement and accuracy"),
    per_channel: bool = typer.Option(
        True, "--per-channel/--per-tensor", help="one weight scale per output channel (depthwise convs need it)"
    ),
    max_quantization_drop: float = typer.Option(
        1.0, "--max-quantization-drop", help="exit 5 when int8 accuracy is more than this many points below float"
    ),
    min_agreement: float = typer.Option(
        0.9, "--min-agreement", help="exit 5 when int8 and float agree on fewer top-1 classes (fraction)"
    ),
    min_cosine: float = typer.Option(
        0.99, "--min-cosine", help="exit 5 when the cosine of int8 and float outputs is lower"
    ),
    quantize_anyway: bool = typer.Option(
        False, "--quantize-anyway", help="keep the int8 file even when it is not faster than the float file"
    ),
    threads: int = typer.Option(1, "--threads", help="onnxruntime threads for the paired latency"),
    pairs: int = typer.Option(30, "--pairs", help="interleaved float/int8 timing pairs"),
    output: Path | None = typer.Option(None, "-o", "--output", help="int8 ONNX file (default <graph stem>.int8.onnx)"),
    report: Path | None = typer.Option(None, "--report", help="JSON report (default <output>.report.json)"),
    seed: int = typer.Option(0, "--seed", help="seed for random calibration inputs and the split"),
    force: bool = typer.Option(False, "--force", help="allow replacing existing outputs"),
    json_output: bool = typer.Option(False, "--json", help="print exactly one JSON object (the report) on stdout"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Quantize GRAPH to int8, verify it against GRAPH, time both, and keep int8 only when it is faster."""

    def go():
        from slimmer.config import parse_floats, parse_shape
        from slimmer.export.quantize_config import QuantizeConfig
        from slimmer.quantize_run import QuantizeJob, run_quantize

        config = QuantizeConfig(
            calibration_method=calibration_method,
            calibration_samples=calibration_samples,
            per_channel=per_channel,
            max_quantization_drop=max_quantization_drop,
            min_agreement=min_agreement,
            min_cosine=min_cosine,
            quantize_anyway=quantize_anyway,
            eval_samples=eval_samples,
            latency_pairs=pairs,
            latency_threads=threads,
            seed=seed,
        )
        job = QuantizeJob(
            graph=graph,
            config=config,
            data=data,
            example_inputs=example_inputs,
            input_shape=parse_shape(input_shape),
            mean=parse_floats(mean, "--mean"),
            std=parse_floats(std, "--std"),
            val_fraction=val_fraction,
            output=output,
            report=report,
            force=force,
        )
        return run_quantize(job)

    result = run_guarded(go, debug=debug, json_mode=json_output)
    emit_report(result, json_output)
    raise typer.Exit(result.exit_code)
