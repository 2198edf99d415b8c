"""Assertion helper for ``--json`` runs, importable from any test module (tests/ is on sys.path)."""

from __future__ import annotations

import json


def one_json(stdout: str) -> dict:
    """stdout holds exactly one JSON object and nothing else (whitespace aside)."""
    text = stdout.strip()
    obj, end = json.JSONDecoder().raw_decode(text)
    assert end == len(text), f"more than one JSON object on stdout: {text[end : end + 200]!r}"
    assert isinstance(obj, dict)
    return obj
