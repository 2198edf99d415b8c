"""Progress on stderr (issue 20): plain lines for CI logs; on a terminal also a live status line with
the current stage and how long it has run."""

from __future__ import annotations

import io
import time

from rich.console import Console

from slimmer.cli import render


def _console(monkeypatch, terminal: bool) -> io.StringIO:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=100, highlight=False, soft_wrap=True)
    monkeypatch.setattr(render, "err_console", console)
    return out


def test_plain_lines_only_when_stderr_is_not_a_terminal(monkeypatch) -> None:
    out = _console(monkeypatch, terminal=False)
    with render.stage_printer(json_mode=False) as say:
        say("export", "exporting ONNX [opset 18]")
        say("verify", "verifying")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("exporting ONNX [opset 18]") and lines[1].endswith("verifying")
    assert lines[0].lstrip().startswith("[") and "s]" in lines[0]  # the run's elapsed seconds
    assert "\x1b" not in out.getvalue()  # no cursor movement or colour in a log


def test_a_terminal_gets_a_live_line_with_the_stage_and_its_elapsed_time(monkeypatch) -> None:
    out = _console(monkeypatch, terminal=True)
    with render.stage_printer(json_mode=False) as say:
        say("export", "exporting ONNX")
        time.sleep(1.3)  # the status refreshes several times a second
    text = out.getvalue()
    assert "exporting ONNX" in text
    assert "export" in text.replace("exporting", "") and "1s" in text  # the stage name and its elapsed seconds
    assert "\x1b[?25h" in text  # the live line is stopped (cursor shown again) when the block exits
