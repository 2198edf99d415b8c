"""The error hierarchy of slimmer.

Every error the library raises on purpose is a :class:`SlimmerError`; each subclass carries the exit
code the command line maps it to (see INTERFACE.md). The library never exits or prints: it raises,
and the CLI renders ``str(error)`` and ``error.hint``.
"""

from __future__ import annotations


class SlimmerError(Exception):
    """Base class. ``exit_code`` is what ``slimmer`` exits with; ``hint`` says what to do next."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(SlimmerError, ValueError):
    """A usage or configuration error: a bad option value or an unknown name (exit 2)."""

    exit_code = 2


class InputError(SlimmerError):
    """The input was rejected: unreadable, unsafe, unsupported or inconsistent (exit 3)."""

    exit_code = 3


class UnsafeCheckpointError(InputError):
    """The checkpoint would run code when loaded and ``--trust-remote-code`` was not given."""

    def __init__(self, message: str, *, unsafe_globals: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.unsafe_globals = unsafe_globals


class OutputError(InputError):
    """An output path cannot be written (exists without --force, read-only, disk full) (exit 3)."""


class ExportError(SlimmerError):
    """The ONNX export failed or did not produce what was asked (exit 4)."""

    exit_code = 4


class VerificationError(SlimmerError):
    """Outputs differ beyond tolerance, are not finite, or the sparsity was not reached (exit 5)."""

    exit_code = 5


EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
