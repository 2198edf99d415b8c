"""Time of a channel-pruning run against model size, across the torchvision zoo (issue 20, Build 3).

Reads a coverage run (``bench/coverage.py``: one subprocess per model, which builds it, plans and
shrinks to half the MACs, exports ONNX and checks it in onnxruntime) and tabulates each model's
wall time against its parameter count and MACs: the median per size band and the exponent ``b``
of a least-squares fit ``seconds ≈ a · size^b`` in log-log (``b = 1`` is linear, ``b < 1``
grows slower than the model).

    python bench/time_vs_size.py --runs bench/coverage.r2.jsonl --write-docs

No timing is done here; the figures are the coverage run's, with its load (see its date).
"""

from __future__ import annotations

import argparse
import itertools
import math
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

BANDS_M = (0, 2, 5, 10, 25, 50, 100, 200, 1000)  # parameter bands, millions


def exponent(rows: list[dict], size: str, measure: str = "wall_seconds") -> float:
    """``b`` of ``measure ≈ a · size^b`` over ``rows`` (least squares in log-log)."""
    logs = [math.log(r[size]) for r in rows], [math.log(r[measure]) for r in rows]
    return statistics.linear_regression(*logs).slope


def body(rows: list[dict], source: str, command: str) -> str:
    meta = next((r for r in rows if r.get("meta")), {})
    commit = meta.get("versions", {}).get("slimmer_commit", "?")
    done = [r for r in rows if not r.get("meta") and r.get("passed") and r.get("wall_seconds")]
    lines = [
        f"Written by {command} from `{source}` ({len(done)} models that passed; that run: "
        f"`{meta.get('command', '?')}`, {meta.get('date', '?')}, slimmer {commit}, "
        "on the shared 2-core machine while other work ran, so single times carry load noise). Time is the "
        "whole subprocess per model: import, build, plan, shrink to half the MACs, ONNX export, onnxruntime check.",
        "",
        f"Fitted exponent b in seconds ≈ a · size^b: **{exponent(done, 'params_before'):.2f} against parameters**, "
        f"{exponent(done, 'macs_before'):.2f} against MACs, {exponent(done, 'params_before', 'peak_rss_mb'):.2f} "
        "for peak RSS against parameters (b = 1 is linear).",
        "",
        "| parameters | models | median wall time (s) | slowest (s) | median s per M parameters "
        "| median peak RSS (MB) |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for lo, hi in itertools.pairwise(BANDS_M):
        band = [r for r in done if lo * 1e6 <= r["params_before"] < hi * 1e6]
        if not band:
            continue
        slowest = max(band, key=lambda r: r["wall_seconds"])
        lines.append(
            f"| {lo}–{hi} M | {len(band)} | {statistics.median(r['wall_seconds'] for r in band):.0f} "
            f"| {slowest['wall_seconds']:.0f} ({slowest['model']}) "
            f"| {statistics.median(r['wall_seconds'] / (r['params_before'] / 1e6) for r in band):.1f} "
            f"| {statistics.median(r['peak_rss_mb'] for r in band):.0f} |"
        )
    slow = sorted(done, key=lambda r: -r["wall_seconds"])[:5]
    named = [f"{r['model']} {r['wall_seconds']:.0f} s ({r['params_before'] / 1e6:.0f} M parameters)" for r in slow]
    lines += [
        "",
        "Slowest five: "
        + ", ".join(named)
        + ". Time follows the number of operations in the graph (capture, planning and export walk it) far more "
        "than the parameter count; memory is the part that grows with the weights (Peak memory).",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path(__file__).resolve().parent / "coverage.r2.jsonl")
    ap.add_argument("--write-docs", action="store_true", help="write the section of docs/BENCHMARKS.md")
    args = ap.parse_args()
    text = body(_common.read_jsonl(args.runs), f"bench/{args.runs.name}", "`python " + shlex.join(sys.argv) + "`")
    if args.write_docs:
        _common.write_section("Time against model size", text)
    else:
        print(text)


if __name__ == "__main__":
    main()
