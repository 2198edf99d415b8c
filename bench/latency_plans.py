"""Paired onnxruntime latency of the two channel rankings on the MobileNetV2-style model-set member
(BENCHMARKS "Latency-aware ranking as the default?"): both plans at half the MACs, no fine-tuning,
exported at batch 1, each timed against the dense file and against each other (1 thread).

    OMP_NUM_THREADS=1 python bench/latency_plans.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_set import load_member  # noqa: E402

import slimmer  # noqa: E402
from slimmer.config import CompressConfig  # noqa: E402
from slimmer.export.bench import paired_latency  # noqa: E402
from slimmer.export.onnx import export_onnx  # noqa: E402

SHAPE = (1, 1, 28, 28)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=300, help="interleaved pairs per comparison")
    args = ap.parse_args()
    model = load_member("mbv2")
    with tempfile.TemporaryDirectory(prefix="slimmer-latency-plans-") as tmp:
        work = Path(tmp)
        paths = {}
        for aware in (False, True):
            out = work / f"mbv2.latency_aware_{aware}.onnx"
            config = CompressConfig(
                methods=("channel",), macs_target=0.5, latency_aware=aware, output=out, dynamic_batch=False
            )
            report = slimmer.compress(model, torch.zeros(SHAPE), config).report
            paths[aware] = out
            print(f"latency_aware={aware}: MACs {report.macs}, parameters {report.params}")
        dense = work / "mbv2.dense.onnx"
        exported = export_onnx(model.eval(), torch.zeros(SHAPE), dense, dynamic_batch=False)
        os.replace(exported.temp_path, dense)
        for aware in (False, True):
            result = paired_latency(dense, paths[aware], warmup=20, pairs=args.pairs, threads=1, batch=1)
            print(f"latency_aware={aware}: speedup over the dense file {result.speedup:.3f}x")
        result = paired_latency(paths[False], paths[True], warmup=20, pairs=args.pairs, threads=1, batch=1)
        print(f"latency-aware file over the MACs-ranked file: {result.speedup:.3f}x")


if __name__ == "__main__":
    main()
