"""The command line: a Typer app, one command per module. The only place that prints or exits."""

from __future__ import annotations

import functools
import os
import sys

import typer
import typer.main

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
    if JSON_FLAG in sys.argv[1:]:
        _leave(_main_json())
    try:
        app()
    except KeyboardInterrupt:  # an interrupt that arrived while an earlier one was being reported
        _leave(EXIT_INTERRUPTED)
    except SystemExit as exc:
        _leave(exc.code)


JSON_FLAG = "--json"


@functools.cache
def _command():
    """The click command behind ``app``, built once per process (what ``app()`` rebuilds on every call)."""
    return typer.main.get_command(app)


def _main_json() -> int:
    """Run with ``--json`` on the command line: every exit prints exactly one JSON object on stdout,
    option-parser errors (a bad value, an unknown option) included."""
    from typer.exceptions import Abort, TyperException  # the parser's errors (typer's own click)

    from slimmer.cli.render import JSON_WRITTEN, err_console, write_json
    from slimmer.report import Report

    before = JSON_WRITTEN["count"]
    message, hint = "", None
    try:
        code = _command()(standalone_mode=False)
        code = 0 if code is None else code
    except KeyboardInterrupt:
        code, message = EXIT_INTERRUPTED, "interrupted"
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except TyperException as exc:
        code = int(getattr(exc, "exit_code", 2))
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        hint = "run `slimmer COMMAND --help` for the options and their values"
        err_console.print(f"[bold red]error:[/bold red] {message}", markup=True, highlight=False)
    except Abort:
        code, message = EXIT_INTERRUPTED, "aborted"
    if not isinstance(code, int):
        code = 1
    if code == EXIT_INTERRUPTED and not message:
        message = "interrupted; no output was written"
    if JSON_WRITTEN["count"] == before and not _printed_help(code) and not _other_rank():
        payload = Report(status="ok" if code == 0 else "failed", exit_code=code, error=message or None).to_dict()
        payload["hint"] = hint
        write_json(payload)
    return code


def _other_rank() -> bool:
    """Under torchrun only rank 0 reports; the other ranks stay silent on stdout."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def _printed_help(code: int) -> bool:
    """``--help`` printed the usage text instead of running (exit 0): no JSON object then. ``-h`` is not
    a help option, and a ``--help`` that did not print help (an option value, a run that failed) leaves
    the failure's JSON object to be written."""
    return code == 0 and "--help" in sys.argv[1:]


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
