"""Time the channel analysis (``slimmer.graph.groups``) phase by phase on torchvision models with
random weights at their input size (``_common.example``): the ``torch.export`` capture, the rule walk
(``trace_channels``) and the grouping (``groups_from_trace``). Each phase's median over ``--repeats``
runs, in seconds, one line per model; the capture is taken once and reused by the other phases.

    OMP_NUM_THREADS=1 python bench/channel_analysis.py --models resnet50,mobilenet_v2,vit_b_16 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,mobilenet_v2,vit_b_16")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from slimmer.graph.groups import capture, groups_from_trace, trace_channels

    for name in args.models.split(","):
        model, x = _common.build_model(name), _common.example(name)
        t0 = time.perf_counter()
        captured = capture(model, (x,))
        capture_s = time.perf_counter() - t0
        walks, groupings = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            space, labels = trace_channels(captured)
            walks.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            groups = groups_from_trace(captured, space, labels)
            groupings.append(time.perf_counter() - t0)
        print(
            f"{name}: capture {capture_s:.2f} s, trace_channels {statistics.median(walks):.3f} s, "
            f"groups_from_trace {statistics.median(groupings):.3f} s ({len(groups.groups)} groups)",
            flush=True,
        )


if __name__ == "__main__":
    main()
