"""Rendering and error mapping shared by the commands: stderr for people, stdout for ``--json``."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from slimmer.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, SlimmerError
from slimmer.report import Report

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def stage_printer(json_mode: bool) -> Callable[[str, str], None]:
    """Progress as one plain line per stage on stderr (readable in CI logs and on terminals)."""
    start = time.perf_counter()

    def say(stage: str, message: str) -> None:
        err_console.print(f"[dim]\\[{time.perf_counter() - start:6.1f}s][/dim] {escape(message)}")

    return say


def emit_report(report: Report, json_mode: bool) -> None:
    if report.rank != 0:  # under torchrun only rank 0 reports
        return
    if json_mode:
        sys.stdout.write(json.dumps(report.to_dict(), allow_nan=False) + "\n")
        sys.stdout.flush()
    err_console.print(report)
    for w in report.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(w)}")
    if report.status != "ok":
        err_console.print(f"[bold red]error:[/bold red] {escape(str(report.error))}")


def run_guarded(fn: Callable[[], Any], *, debug: bool, json_mode: bool) -> Any:
    """Call ``fn``; map errors to exit codes with one clear message (tracebacks only with --debug)."""
    try:
        return fn()
    except typer.Exit:
        raise
    except SlimmerError as exc:
        if debug:
            traceback.print_exc()
        _fail(exc.exit_code, exc.message, exc.hint, json_mode)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # we are exiting: a second Ctrl-C must not escape
        try:
            _fail(EXIT_INTERRUPTED, "interrupted; no output was written", None, json_mode)
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
        _fail(
            EXIT_INTERNAL,
            f"internal error: {type(exc).__name__}: {exc}",
            "this is a bug in slimmer; rerun with --debug and report the traceback",
            json_mode,
        )


def _fail(code: int, message: str, hint: str | None, json_mode: bool) -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}")
    if hint:
        err_console.print(f"[bold]hint:[/bold] {escape(hint)}")
    if json_mode:
        payload = Report(status="failed", exit_code=code, error=message).to_dict()
        payload["hint"] = hint
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()
    raise typer.Exit(code)


def _in_test_runner() -> bool:
    """In-process CLI tests (typer's CliRunner) must get the exit code, not lose their process."""
    return "pytest" in sys.modules and os.environ.get("PYTEST_CURRENT_TEST") is not None
