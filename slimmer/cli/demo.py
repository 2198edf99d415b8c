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
    """Compress the bundled ResNet-20 (Fashion-MNIST) and report accuracy before and after."""
    from slimmer.bundled import DEMO_ARCH, DEMO_SAMPLE, DEMO_WEIGHTS, bundled_file
    from slimmer.cli.render import run_guarded
    from slimmer.paths import make_parent, written_by_demo

    def paths() -> tuple[Path, Path, bool]:
        make_parent(Path(output))  # a file in the way is exit 3, not a crash
        weights = bundled_file(DEMO_WEIGHTS)
        return weights, bundled_file(DEMO_SAMPLE), force if force is not None else written_by_demo(output, weights)

    weights, sample, replace = run_guarded(paths, debug=debug, json_mode=json_output)
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
        force=replace,
    )
