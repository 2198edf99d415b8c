"""Pipeline cost and peak memory of ``slimmer compress`` (issue 20, BENCHMARKS "Pipeline cost").

For each model, two whole processes are timed in turn, A B A B … (``--pairs`` pairs after one
warm-up pair), and the median of the per-pair wall-time ratios A/B is reported:

- A: ``slimmer compress CKPT --method channel --macs-target 0.5`` (no fine-tuning), which loads,
  measures, plans, removes channels, exports, verifies at two batch sizes and writes the report;
- B: the same model exported by hand (``bench/by_hand.py``): load the checkpoint, one
  ``torch.export`` capture, ``torch.onnx.export`` of that program (dynamic batch), one onnxruntime
  comparison against PyTorch.

B does less (no pruning, no plan, one batch verified); the ratio is what slimmer's whole pipeline
costs over the unavoidable steps. Peak RSS of each process (``wait4``'s ``ru_maxrss``) is reported
over the fp32 parameter bytes. torchvision models are built with random weights (no download).

    python bench/pipeline_cost.py --models resnet50,mobilenet_v2,vit_b_16,bundled --pairs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common  # noqa: E402

OUT = HERE / "pipeline_cost.jsonl"


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in bytes, exit code) of one whole process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]}... exited {proc.returncode}: {err[-800:]}")
    return wall, usage.ru_maxrss * 1024, proc.returncode


def _checkpoint(name: str, work: Path) -> tuple[Path, list[str], int]:
    """(checkpoint, the model options of both commands, fp32 parameter bytes)."""
    import torch

    if name == "bundled":
        from slimmer.bundled import DEMO_WEIGHTS, bundled_file
        from slimmer.zoo import ARCHITECTURES

        model = ARCHITECTURES.get("resnet20-fmnist").build()
        ckpt = Path(bundled_file(DEMO_WEIGHTS))
        opts = ["--arch", "resnet20-fmnist"]
    else:
        import torchvision

        model = getattr(torchvision.models, name)()
        ckpt = work / f"{name}.pt"
        torch.save(model.state_dict(), ckpt)
        size = 299 if name == "inception_v3" else 224
        opts = ["--arch", f"torchvision:{name}", "--input-shape", f"1,3,{size},{size}"]
    return ckpt, opts, sum(p.numel() * 4 for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="bundled,resnet50,mobilenet_v2,vit_b_16")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of both processes")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="slimmer-pipeline-") as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            ckpt, opts, nbytes = _checkpoint(name, work)
            slim = [python, "-m", "slimmer", "compress", str(ckpt), *opts, "--method", "channel"]
            slim += ["--macs-target", "0.5", "-o", str(work / f"{name}.slim.onnx"), "--force"]
            hand = [python, str(HERE / "by_hand.py"), str(ckpt), *opts, "-o", str(work / f"{name}.hand.onnx")]
            _run(slim, env), _run(hand, env)  # warm-up pair (file caches, compiled kernels)
            walls: dict[str, list[float]] = {"slimmer": [], "by_hand": []}
            peaks: dict[str, list[float]] = {"slimmer": [], "by_hand": []}
            for _ in range(args.pairs):
                for key, cmd in (("slimmer", slim), ("by_hand", hand)):
                    wall, peak, _ = _run(cmd, env)
                    walls[key].append(wall)
                    peaks[key].append(peak)
            ratios = [a / b for a, b in zip(walls["slimmer"], walls["by_hand"], strict=True)]
            record = {
                "model": name,
                "pairs": args.pairs,
                "threads": args.threads,
                "ratio_median": round(statistics.median(ratios), 3),
                "ratios": [round(r, 3) for r in ratios],
                "param_bytes": nbytes,
                "peak_rss_over_params": {k: round(max(v) / nbytes, 2) for k, v in peaks.items()},
                "date": _common.today(),
                "versions": _common.versions(),
            }
            _common.append_jsonl(args.out, record)
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
