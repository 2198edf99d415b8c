"""How close a channel plan lands under ``--macs-target 0.5`` on the model set (BENCHMARKS.md, "Landing on the
MACs target"): MACs kept per member for a few roundings and scopes, no fine-tuning (deterministic).

    python bench/plan_targets.py
    PYTHONPATH=/path/to/an/older/checkout python bench/plan_targets.py   # the same table for older code
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_set import MEMBERS, load_member  # noqa: E402

from slimmer.graph.groups import build_groups  # noqa: E402
from slimmer.structures.channel import plan_channels  # noqa: E402

SETTINGS = (("relative", "global"), ("relative", "layer"), (16, "global"), (8, "global"), (1, "layer"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", default=",".join(MEMBERS), help="comma-separated members of bench/model_set.py")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("member", *(f"{rt}/{scope}" for rt, scope in SETTINGS))
    for name in filter(None, args.members.split(",")):
        model = load_member(name).eval()
        x = torch.zeros(1, 1, 28, 28)
        groups = build_groups(model, (x,))
        kept = []
        for round_to, scope in SETTINGS:
            plan = plan_channels(
                groups, model, macs_target=0.5, round_to=round_to, scope=scope, example_inputs=(x,), max_ratio=0.9
            )
            kept.append(f"{plan.macs_after / plan.macs_before:.3f}")
        print(name, *kept, flush=True)


if __name__ == "__main__":
    main()
