"""``slimmer demo``: the whole pipeline on the bundled Fashion-MNIST model and sample, offline."""

from __future__ import annotations

from pathlib import Path

import typer

from slimmer.cli.compress import run_compress


def demo_command(
    output: Path = typer.Option(
        Path("slimmer-demo/resnet20_fmnist.slim.onnx"), "-o", "--output", help="where the demo writes its ONNX file"
    ),
    method: str = typer.Option("unstructured", "--method", help="pruning method"),
    sparsity: float | None = typer.Option(
        None, "--sparsity", help="fraction of weights (or channels) to remove, in [0, 1); default 0.5"
    ),
    criterion: str = typer.Option("lamp", "--criterion", help="importance criterion"),
    seed: int = typer.Option(0, "--seed", help="seed for every random choice"),
    force: bool = typer.Option(True, "--force/--no-force", help="the demo replaces its own earlier outputs by default"),
    json_output: bool = typer.Option(False, "--json", help="print exactly one JSON object (the report) on stdout"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Compress the bundled ResNet-20 (Fashion-MNIST) and report accuracy before and after."""
    from slimmer.bundled import DEMO_ARCH, DEMO_SAMPLE, DEMO_WEIGHTS, bundled_file
    from slimmer.cli.render import run_guarded

    def paths() -> tuple[Path, Path]:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        return bundled_file(DEMO_WEIGHTS), bundled_file(DEMO_SAMPLE)

    weights, sample = run_guarded(paths, debug=debug, json_mode=json_output)
    run_compress(
        json_output,
        debug,
        model=weights,
        arch=DEMO_ARCH,
        method=method,
        sparsity=sparsity,
        criterion=criterion,
        data=str(sample),
        val_fraction=1.0,
        output=output,
        seed=seed,
        force=force,
    )
