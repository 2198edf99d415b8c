"""The command line: a Typer app, one command per module. The only place that prints or exits."""

from __future__ import annotations

import typer

from slimmer.cli import bench, compress, demo, inspect, verify
from slimmer.errors import EXIT_INTERRUPTED

app = typer.Typer(
    name="slimmer",
    help="Prune a PyTorch checkpoint, export a smaller ONNX graph, and verify it with onnxruntime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("compress")(compress.compress_command)
app.command("demo")(demo.demo_command)
app.command("inspect")(inspect.inspect_command)
app.command("verify")(verify.verify_command)
app.command("bench")(bench.bench_command)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # an interrupt that arrived while an earlier one was being reported
        raise SystemExit(EXIT_INTERRUPTED) from None
