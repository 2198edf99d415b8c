"""Peak memory of ``slimmer compress`` and ``slimmer inspect`` on large models (issue 20, BENCHMARKS
"Peak memory").

For each model: a state_dict of the torchvision model with random weights is saved (no download),
then each command runs once as its own process and its peak resident set (``wait4``'s
``ru_maxrss``) is divided by the fp32 parameter bytes:

- ``compress CKPT --method channel --macs-target 0.5`` (no fine-tuning: load, plan, remove
  channels, export, verify, write), goal ≤ 3×;
- ``inspect CKPT`` (parameters, MACs, channel groups and their blockers), goal ≤ 1.5×.

The ratio includes the interpreter with torch, onnx and onnxruntime imported (about 0.65 GB here),
which is why small models show large ratios. One run per command: peak memory does not vary like
time does.

    python bench/memory.py --models vit_h_14,regnet_y_128gf --write-docs
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common  # noqa: E402
from pipeline_cost import _checkpoint, _run  # noqa: E402

OUT = HERE / "memory.jsonl"
GOALS = {"compress": 3.0, "inspect": 1.5}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit_h_14,regnet_y_128gf")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the measured process")
    ap.add_argument("--commands", default="inspect,compress")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--write-docs", action="store_true", help="write the table into docs/BENCHMARKS.md")
    ap.add_argument("--report-only", action="store_true", help="do not run; tabulate --out")
    args = ap.parse_args()
    if not args.report_only:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        python = sys.executable
        commit = _common.versions().get("slimmer_commit")
        with tempfile.TemporaryDirectory(prefix="slimmer-memory-") as tmp:
            work = Path(tmp)
            for name in args.models.split(","):
                ckpt, opts, nbytes = _checkpoint(name, work)
                for command in args.commands.split(","):
                    cmd = [python, "-m", "slimmer", command, str(ckpt), *opts]
                    if command == "compress":
                        cmd += [
                            "--method",
                            "channel",
                            "--macs-target",
                            "0.5",
                            "-o",
                            str(work / f"{name}.onnx"),
                            "--force",
                        ]
                    t0 = time.perf_counter()
                    _, peak, _ = _run(cmd, env)
                    record = {
                        "model": name,
                        "command": command,
                        "param_bytes": nbytes,
                        "peak_rss_bytes": peak,
                        "ratio": round(peak / nbytes, 3),
                        "goal": GOALS.get(command),
                        "seconds": round(time.perf_counter() - t0, 1),
                        "threads": args.threads,
                        "slimmer_commit": commit,
                        "date": _common.today(),
                    }
                    _common.append_jsonl(args.out, record)
                    print(record, flush=True)
                ckpt.unlink(missing_ok=True)
    if args.write_docs:
        write_docs(args.out, "`python " + shlex.join(["bench/memory.py", *sys.argv[1:]]) + "`")


def write_docs(path: Path, command: str) -> None:
    rows = _common.read_jsonl(path)
    latest: dict[tuple[str, str], dict] = {}
    for r in rows:
        latest[(r["model"], r["command"])] = r
    lines = [
        f"Written by {command} from `bench/memory.jsonl` (the latest run of each model and command). Peak "
        "resident set of the whole process over the model's fp32 parameter bytes; the process includes "
        "the interpreter with torch, onnx and onnxruntime imported.",
        "",
        "| model | parameters (fp32) | command | peak RSS | ratio | goal | met | wall s | commit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, command), r in sorted(latest.items(), key=lambda kv: (-kv[1]["param_bytes"], kv[0][1])):
        met = "yes" if r["ratio"] <= r["goal"] else "**no**"
        lines.append(
            f"| {model} | {r['param_bytes'] / 1e9:.2f} GB | {command} | {r['peak_rss_bytes'] / 1e9:.2f} GB "
            f"| {r['ratio']:.2f}× | ≤ {r['goal']}× | {met} | {r['seconds']} | {r.get('slimmer_commit', '')} |"
        )
    _common.write_section("Peak memory", "\n".join(lines))


if __name__ == "__main__":
    main()
