"""The command line: a Typer app, one command per module. The only place that prints or exits."""

from __future__ import annotations

import os
import sys

import typer

from slimmer.cli import bench, compress, demo, inspect, quantize, verify
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
app.command("quantize")(quantize.quantize_command)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # an interrupt that arrived while an earlier one was being reported
        _leave(EXIT_INTERRUPTED)
    except SystemExit as exc:
        _leave(exc.code)


def _leave(code: int | str | None) -> None:
    """Exit with ``code``. Under torchrun (a process group is up), leave without C++ static
    destructors: a gloo thread still winding down at interpreter exit can abort the process
    ("terminate called without an active exception") after every file was written and the ranks
    met at the final barrier, turning a finished run into exit -6."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))
    raise SystemExit(code)
