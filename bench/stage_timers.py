"""Where one ``slimmer compress --method channel --macs-target 0.5`` spends its time, function by function
(BENCHMARKS "Pipeline cost"): the flow runs once in this process on a torchvision model with random weights,
with a wall-clock timer around each of the functions below; prints seconds and calls, largest first.

Attribution only: nested functions count inside their callers too (``build_groups`` holds ``capture``, the
exporter's ``torch.export.export`` sits inside ``export_onnx``), and one run on a busy machine is no timing.

    OMP_NUM_THREADS=1 python bench/stage_timers.py --model resnet50
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import sys
import tempfile
import time
from pathlib import Path

TIMED = [
    ("slimmer.stages", "load"),
    ("slimmer.stages", "check_forward"),
    ("slimmer.stages", "measure"),
    ("slimmer.stages", "dense_reference"),
    ("slimmer.graph.groups", "build_groups"),
    ("slimmer.graph.capture", "capture"),
    ("slimmer.structures.channel", "plan_channels"),
    ("slimmer.graph.blockers", "blockers"),
    ("slimmer.surgery", "shrink"),
    ("slimmer.graph.macs", "count_macs"),
    ("slimmer.stats", "count_macs"),
    ("slimmer.api", "assemble"),
    ("slimmer.export.onnx", "export_onnx"),
    ("slimmer.export.verify", "verify_onnx"),
]


def _instrument(seconds: dict[str, float], calls: collections.Counter) -> None:
    """Wrap every function of :data:`TIMED` where it is defined and wherever a slimmer module imported it."""
    import torch

    def wrap(key: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[key] += time.perf_counter() - start
                calls[key] += 1

        return timed

    import slimmer.api  # noqa: F401 - loads the modules that import the timed functions

    for module_name, attr in TIMED:
        original = getattr(importlib.import_module(module_name), attr)
        timed = wrap(f"{module_name}.{attr}", original)
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("slimmer") and getattr(module, attr, None) is original:
                setattr(module, attr, timed)
    torch.export.export = wrap("torch.export.export", torch.export.export)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50", help="a torchvision classifier")
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    args = ap.parse_args()
    import torch
    import torchvision

    seconds: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    _instrument(seconds, calls)
    import slimmer.api
    from slimmer.config import CompressConfig

    with tempfile.TemporaryDirectory(prefix="slimmer-timers-") as tmp:
        ckpt = Path(tmp) / f"{args.model}.pt"
        torch.save(getattr(torchvision.models, args.model)().state_dict(), ckpt)
        config = CompressConfig(
            model=ckpt,
            arch=f"torchvision:{args.model}",
            input_shape=(1, 3, args.size, args.size),
            methods=("channel",),
            macs_target=0.5,
            output=Path(tmp) / "out.onnx",
        )
        start = time.perf_counter()
        report = slimmer.api.run(config)
        total = time.perf_counter() - start
    print(f"{total:7.2f} s in slimmer.api.run; report timings_s {report.timings_s}")
    for key, value in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"{value:7.2f} s {calls[key]:3d} x {key}")


if __name__ == "__main__":
    main()
