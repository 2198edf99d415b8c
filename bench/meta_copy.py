"""Cost of the meta-device copies that MACs counting and channel planning make (issue 20, memory).

Paired, interleaved: a deep copy followed by ``.to("meta")`` (before 2026-11-30) against
:func:`slimmer.graph.macs.meta_copy` (parameters mapped to meta twins before the deep copy, so no
weight bytes are copied), on torchvision models with random weights. Prints the median per-pair
time ratio (old / new). The memory saving is by construction (the old copy held a second full
set of weights until ``.to("meta")``; the new one never allocates them).

    python bench/meta_copy.py --models resnet50,vit_b_16 --pairs 7
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50")
    ap.add_argument("--pairs", type=int, default=7)
    args = ap.parse_args()
    import torchvision

    from slimmer.graph.macs import meta_copy

    for name in args.models.split(","):
        model = getattr(torchvision.models, name)().eval()
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())

        def old(model=model):
            return copy.deepcopy(model).to("meta").eval()

        def new(model=model):
            return meta_copy(model)

        ratios = []
        for _ in range(args.pairs):
            t0 = time.perf_counter()
            old()
            t1 = time.perf_counter()
            new()
            t2 = time.perf_counter()
            ratios.append((t1 - t0) / (t2 - t1))
        print(
            f"{name}: {nbytes / 2**20:.0f} MiB of weights; old/new time {statistics.median(ratios):.2f}x "
            f"(median of {args.pairs} pairs)"
        )


if __name__ == "__main__":
    main()
