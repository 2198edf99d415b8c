"""Keeping stdout for the one JSON object under ``--json``, and messages free of terminal codes.

While the library runs with ``--json``, :func:`stdout_to_stderr` sends everything written to
stdout — ``print()`` in a user's model or builder (Python level) and torch's or onnxruntime's C++
output (file descriptor 1) — to stderr; the CLI writes the JSON object after it is restored.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]|\[(?:\d{1,3}(?:;\d{1,3})*)m")
"""CSI sequences (colours, cursor moves), two-byte escapes, and the bare ``[96m`` left when the
escape byte was dropped on the way."""


def strip_ansi(text: str | None) -> str | None:
    """``text`` without terminal escape codes (``None`` stays ``None``)."""
    return None if text is None else ANSI.sub("", text)


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool = True) -> Iterator[None]:
    """Inside the block, writes to ``sys.stdout`` and to file descriptor 1 land on stderr."""
    if not enabled:
        yield
        return
    saved_py = sys.stdout
    with contextlib.suppress(Exception):
        saved_py.flush()
    saved_fd = None
    try:
        sys.stdout.flush()
        saved_fd = os.dup(1)
        os.dup2(2, 1)
    except (OSError, ValueError):  # no usable descriptor 1 (closed): Python-level redirection still holds
        saved_fd = None
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        _flush_c_stdio()
        sys.stdout = saved_py
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)


def _flush_c_stdio() -> None:
    """Flush C stdio buffers (torch's C++ prints) while descriptor 1 still points at stderr."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)
