"""The console script's entry point (``slimmer`` and ``python -m slimmer``).

Importing the command line takes seconds (torch among its modules), and a Ctrl-C in that time used to
end in a traceback and, with ``--json``, no JSON object. This module imports only the standard library
until the command line is loaded, so an interrupt there ends like any other: exit 130, one line on
stderr, and with ``--json`` exactly one JSON object on stdout.
"""

from __future__ import annotations

import json
import signal
import sys

from slimmer.errors import EXIT_INTERRUPTED  # standard library only

MESSAGE = "interrupted while starting; no output was written"


def main() -> None:
    try:
        from slimmer.cli import main as run
    except KeyboardInterrupt:
        _interrupted_while_starting()
    run()


def _interrupted_while_starting() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # exiting: a second Ctrl-C must not escape
    if "--json" in sys.argv[1:]:
        from slimmer.report import Report  # no torch: the same keys as every other JSON object

        payload = Report(status="failed", exit_code=EXIT_INTERRUPTED, error=MESSAGE).to_dict()
        payload["hint"] = None
        sys.stdout.write(json.dumps(payload, allow_nan=False) + "\n")
        sys.stdout.flush()
    sys.stderr.write(f"error: {MESSAGE}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_INTERRUPTED)
