"""``slimmer demo``: the whole pipeline on the bundled Fashion-MNIST model and sample, offline.

By default it shows what slimmer is for: the bundled ResNet-20 channel-pruned to half its MACs
(every layer by the same ratio), fine-tuned briefly on half of the bundled sample (distilling from
the original), exported, verified, and timed against the original in onnxruntime, with accuracy on
the other half; then the pruned file quantized to int8 (static, calibrated on the training half)
and gated the same way.
"""

from __future__ import annotations

from pathlib import Path

import typer

from slimmer.cli.compress import run_compress

DEMO_STEPS = 200
DEMO_BATCH = 64
DEMO_ROUND_TO = 8
DEMO_SCOPE = "layer"
DEMO_LR = 0.01
"""The demo's recipe for 1,000 training images (measured, docs/BENCHMARKS.md "Demo"): least-squares
reconstruction, then 200 steps of pure distillation with pad-crop-flip at peak learning rate 0.01; channels
in multiples of 8, every layer pruned by the same ratio (on the bundled ResNet-20 the uniform ratio lost
0.6-0.7 points over three seeds, the global ranking 0.1-1.1). compress's default rate for SGD after
pruning, 0.1, was chosen on a full training split; on the demo's 1,000 images it lost 1.3 points."""


def demo_command(
    output: Path = typer.Option(
        Path("slimmer-demo/resnet20_fmnist.slim.onnx"), "-o", "--output", help="where the demo writes its ONNX file"
    ),
    method: str = typer.Option("channel", "--method", help="pruning method (see slimmer compress --help)"),
    macs_target: float | None = typer.Option(
        None, "--macs-target", help="channel: keep this fraction of the MACs (default 0.5 without --sparsity)"
    ),
    sparsity: float | None = typer.Option(
        None, "--sparsity", help="fraction of weights (or channels) to remove, in [0, 1)"
    ),
    criterion: str | None = typer.Option(
        None, "--criterion", help="importance criterion (default: lamp for --method unstructured, else magnitude)"
    ),
    finetune_steps: int = typer.Option(
        DEMO_STEPS, "--finetune-steps", help="fine-tuning steps on half of the bundled sample (0: none)"
    ),
    measure_latency: bool = typer.Option(
        True, "--measure-latency/--no-measure-latency", help="time the original against the pruned file"
    ),
    quantize: str = typer.Option(
        "int8",
        "--quantize",
        help="int8: also quantize the pruned file (calibrated on the bundled sample, gated and timed); none: skip",
    ),
    seed: int = typer.Option(
        0,
        "--seed",
        help="seed for every random choice; byte-identical files need the same seed, inputs, machine, versions "
        "and thread count (OMP_NUM_THREADS)",
    ),
    force: bool | None = typer.Option(
        None,
        "--force/--no-force",
        help="--force: replace any existing file at -o; --no-force: replace nothing; default: replace only the "
        "demo's own earlier outputs",
        show_default=False,
    ),
    json_output: bool = typer.Option(False, "--json", help="print exactly one JSON object (the report) on stdout"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Compress the bundled ResNet-20 (Fashion-MNIST): half the MACs, a brief fine-tune, verified, timed, then int8."""
    from slimmer.bundled import DEMO_ARCH, DEMO_SAMPLE, DEMO_WEIGHTS, bundled_file
    from slimmer.cli.render import run_guarded
    from slimmer.paths import make_parent, written_by_demo

    def paths() -> tuple[Path, Path, bool]:
        make_parent(Path(output))  # a file in the way is exit 3, not a crash
        weights = bundled_file(DEMO_WEIGHTS)
        return weights, bundled_file(DEMO_SAMPLE), force if force is not None else written_by_demo(output, weights)

    weights, sample, replace = run_guarded(paths, debug=debug, json_mode=json_output)
    if macs_target is None and sparsity is None and "channel" in method.split(","):
        macs_target = 0.5
    run_compress(
        json_output,
        debug,
        model=weights,
        arch=DEMO_ARCH,
        method=method,
        macs_target=macs_target,
        sparsity=sparsity,
        criterion=criterion,
        data=str(sample),
        val_fraction=0.5,
        finetune_steps=finetune_steps,
        batch_size=DEMO_BATCH,
        round_to=DEMO_ROUND_TO if "channel" in method.split(",") else None,
        scope=DEMO_SCOPE if "channel" in method.split(",") else "global",
        reconstruct=True,
        augment=finetune_steps > 0,
        kd_weight=1.0,
        lr=DEMO_LR,
        measure_latency=measure_latency,
        quantize=None if quantize.lower() == "none" else quantize,
        output=output,
        seed=seed,
        force=replace,
    )
