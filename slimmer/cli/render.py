"""Rendering and error mapping shared by the commands: stderr for people, stdout for ``--json``."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from slimmer.cli.stdio import stdout_to_stderr, strip_ansi
from slimmer.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, SlimmerError
from slimmer.paths import PUBLISHED
from slimmer.report import Report

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class _Current:
    """The live status line's text, rendered afresh at every refresh: the stage, its message and the
    seconds since the stage began."""

    def __init__(self) -> None:
        self.stage, self.message, self.since = "", "starting", time.perf_counter()

    def __rich__(self) -> str:
        elapsed = time.perf_counter() - self.since
        return f"[bold]{escape(self.stage)}[/bold] {escape(self.message)} [dim]{elapsed:.0f}s[/dim]"


@contextmanager
def stage_printer(json_mode: bool) -> Iterator[Callable[[str, str], None]]:
    """Progress on stderr, one plain line per message with the run's elapsed time (what CI logs
    keep). On a terminal, also a live status line under them: a spinner, the current stage and how
    long it has been running, refreshed while a long stage (export included) works. The live line is
    gone when the block exits, before the report is rendered."""
    start = time.perf_counter()
    current = _Current()
    status = err_console.status(current, spinner="dots") if err_console.is_terminal else nullcontext()

    def say(stage: str, message: str) -> None:
        err_console.print(f"[dim]\\[{time.perf_counter() - start:6.1f}s][/dim] {escape(message)}")
        current.stage, current.message, current.since = stage, message, time.perf_counter()

    with status:
        yield say


def emit_report(report: Report, json_mode: bool) -> None:
    if report.rank != 0:  # under torchrun only rank 0 reports
        return
    report.error = strip_ansi(report.error)
    report.warnings = [strip_ansi(w) for w in report.warnings]
    if json_mode:
        write_json(report.to_dict())
    err_console.print(report)
    for w in report.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(w)}")
    if report.status != "ok":
        err_console.print(f"[bold red]error:[/bold red] {escape(str(report.error))}")


def run_guarded(fn: Callable[[], Any], *, debug: bool, json_mode: bool) -> Any:
    """Call ``fn``; map errors to exit codes with one clear message (tracebacks only with --debug). A
    failure after an output was published (the float ONNX file before ``--quantize int8``) names it."""
    start = len(PUBLISHED)

    def written(message: str) -> str:
        done = PUBLISHED[start:]
        return f"{message}; written before it: {', '.join(map(str, done))}" if done else message

    try:
        with stdout_to_stderr(json_mode):
            return fn()
    except typer.Exit:
        raise
    except SlimmerError as exc:
        if debug:
            traceback.print_exc()
        _fail(exc.exit_code, written(exc.message), exc.hint, json_mode)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # we are exiting: a second Ctrl-C must not escape
        try:
            message = written("interrupted") if PUBLISHED[start:] else "interrupted; no output was written"
            _fail(EXIT_INTERRUPTED, message, None, json_mode)
        finally:
            # The temporary files are already removed (the interrupt unwound through their cleanup).
            # Exit now: an interrupt landing inside torch's exporter can leave a pending signal that
            # would otherwise end the interpreter with SIGINT instead of the documented 130.
            sys.stdout.flush()
            sys.stderr.flush()
            if not _in_test_runner():
                os._exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: exit 1 and say so
        if debug:
            traceback.print_exc()
        if is_out_of_memory(exc):
            _fail(3, written(f"out of memory: {first_line(exc)}"), OOM_HINT, json_mode)
        _fail(
            EXIT_INTERNAL,
            written(f"internal error: {type(exc).__name__}: {exc}"),
            "this is a bug in slimmer; rerun with --debug and report the traceback",
            json_mode,
        )


def _fail(code: int, message: str, hint: str | None, json_mode: bool) -> None:
    message, hint = strip_ansi(message), strip_ansi(hint)
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}")
    if hint:
        err_console.print(f"[bold]hint:[/bold] {escape(hint)}")
    if json_mode:
        payload = Report(status="failed", exit_code=code, error=message).to_dict()
        payload["hint"] = hint
        write_json(payload)
    raise typer.Exit(code)


def _in_test_runner() -> bool:
    """In-process CLI tests (typer's CliRunner) must get the exit code, not lose their process."""
    return "pytest" in sys.modules and os.environ.get("PYTEST_CURRENT_TEST") is not None


OOM_HINT = "use a smaller --input-shape (or --batch-size / --batch); the machine cannot allocate this much memory"
JSON_WRITTEN = {"count": 0}
"""How many JSON objects this process wrote to stdout (``main`` adds one for an exit that wrote none)."""


def write_json(payload: dict) -> None:
    """The one JSON object of a ``--json`` run, on stdout."""
    from slimmer.report import _json_safe

    sys.stdout.write(json.dumps(_json_safe(payload), allow_nan=False) + "\n")
    sys.stdout.flush()
    JSON_WRITTEN["count"] += 1


def first_line(exc: BaseException) -> str:
    text = strip_ansi(str(exc)).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure (not a bug): MemoryError, or torch's allocator refusing a size."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text
        for s in (
            "can't allocate memory",
            "DefaultCPUAllocator",
            "out of memory",
            "numel overflow",
            "Storage size calculation overflowed",
            "invalid size",
        )
    )
