"""TAS search (``--method search``) against channel pruning at half the MACs, same optimizer steps per row.

From the bundled resnet20-fmnist checkpoint on Fashion-MNIST (needs ``apt-get install
dataset-fashion-mnist``), every row runs ``slimmer compress`` with ``--macs-target 0.5``, the same
``--round-to``, batch 128, lr 0.01, and the same total number of optimizer steps ``--budget``:

- ``search``: ``--method search``, ``--search-steps S`` (S weight steps on one half of the training
  split and S architecture steps on the other: 2·S optimizer steps), then ``budget − 2·S`` fine-tuning
  steps distilling with the method's default ``--kd-weight`` 0.9 (TAS's transfer, T 4);
- ``channel``: ``--method channel`` (global L1 magnitude), ``budget`` fine-tuning steps (``--kd-weight`` 0.5);
- ``greg``: ``--method channel --regularizer greg``, ``budget / 2`` regularizing then ``budget / 2``
  fine-tuning steps.

Accuracy is top-1 on the first ``--eval-samples`` of the 10k test split after fine-tuning; latency
is the report's paired, interleaved onnxruntime latency of the original's export against the pruned file (CPU, 1 thread,
batch 1, ``--latency-pairs`` pairs): the median per-pair speedup.

    OMP_NUM_THREADS=1 python bench/search.py --budget 200 --search-steps 50 --seeds 0,1 --eval-samples 5000

Prints a markdown table; each run appends one JSON line to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "models" / "resnet20_fmnist.safetensors"


def row_flags(row: str, budget: int, search_steps: int) -> list[str]:
    """The method flags of one row (the shared flags are added by :func:`run`)."""
    if row == "search":
        if 2 * search_steps >= budget:
            raise SystemExit(f"--search-steps {search_steps}: 2·S must stay below --budget {budget}")
        return [
            "--method",
            "search",
            "--search-steps",
            str(search_steps),
            "--finetune-steps",
            str(budget - 2 * search_steps),
        ]
    if row == "channel":
        return ["--method", "channel", "--finetune-steps", str(budget)]
    if row == "greg":
        half = budget // 2
        return [
            "--method",
            "channel",
            "--regularizer",
            "greg",
            "--reg-steps",
            str(half),
            "--finetune-steps",
            str(budget - half),
        ]
    raise SystemExit(f"unknown row {row!r}: search, channel or greg")


def run(row: str, seed: int, args: argparse.Namespace, workdir: Path) -> dict:
    out = workdir / f"{row}-{seed}.onnx"
    argv = [
        sys.executable, "-m", "slimmer", "compress", str(WEIGHTS), "--arch", "resnet20-fmnist",
        "--data", "fashion-mnist", "--macs-target", "0.5", "--round-to", str(args.round_to),
        "--batch-size", "128", "--eval-samples", str(args.eval_samples), "--measure-latency",
        "--latency-pairs", str(args.latency_pairs), "--seed", str(seed), "-o", str(out), "--force", "--json",
        *row_flags(row, args.budget, args.search_steps),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{row} seed {seed} exited {done.returncode}:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    rec = {
        "row": row,
        "seed": seed,
        "command": "slimmer " + shlex.join(argv[3:]),
        "accuracy_before": report["accuracy"]["before"],
        "accuracy_after_prune": report["accuracy"]["after_prune"],
        "accuracy": report["accuracy"]["after_finetune"],
        "macs_kept": report["macs"]["after"] / report["macs"]["before"],
        "params_after": report["params"]["after"],
        "speedup": report["latency_ms"]["speedup"],
        "latency_ms": [report["latency_ms"]["before"], report["latency_ms"]["after"]],
        "seconds": round(seconds, 1),
    }
    if row == "search":
        s = report["pruning"]["search"]
        rec["search"] = {
            "expected_macs": s["expected_macs"],
            "argmax_macs": s["argmax_macs"],
            "final_macs": s["final_macs"],
            "lowered": s["lowered"],
            "raised": s["raised"],
            "depths": [d["depth"] for d in s["depths"]],
            "dropped": [b["block"] for b in s["dropped"]],
            "widths": s["widths"],
        }
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="search,channel,greg")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--budget", type=int, default=300, help="optimizer steps per row")
    ap.add_argument("--search-steps", type=int, default=75)
    ap.add_argument("--round-to", type=int, default=4)
    ap.add_argument("--latency-pairs", type=int, default=30)
    ap.add_argument("--eval-samples", type=int, default=10000, help="test images the accuracy is measured on")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "search.jsonl")
    args = ap.parse_args()
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes")
    command = "OMP_NUM_THREADS=1 python bench/search.py " + shlex.join(sys.argv[1:])
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="slimmer-bench-search-") as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for row in args.rows.split(","):
                rec = run(row, seed, args, Path(tmp))
                rec.update(date=stamp, bench_command=command, budget=args.budget)
                with args.out.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec) + "\n")
                results.setdefault(row, []).append(rec)
                extra = f"  depths {rec['search']['depths']}" if row == "search" else ""
                print(
                    f"{row:8s} seed {seed}: top-1 {rec['accuracy']:.4f}  MACs kept {rec['macs_kept']:.3f}  "
                    f"speedup {rec['speedup']:.2f}x  ({rec['seconds']:.0f} s){extra}",
                    flush=True,
                )
    print("\n| row | seeds | top-1 after (each) | mean | MACs kept | paired speedup (each) |")
    print("|---|---|---|---|---|---|")
    for row, recs in results.items():
        accs = [r["accuracy"] for r in recs]
        each = " / ".join(f"{100 * a:.2f}" for a in accs)
        macs = " / ".join(f"{r['macs_kept']:.3f}" for r in recs)
        speed = " / ".join(f"{r['speedup']:.2f}x" for r in recs)
        print(f"| {row} | {len(recs)} | {each} | {100 * statistics.mean(accs):.2f} | {macs} | {speed} |")


if __name__ == "__main__":
    main()
