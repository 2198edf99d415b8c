"""Accuracy drop on the model set (issue 21's "Must show"): slimmer's defaults against its peers.

For every member of ``bench/model_set.py`` and every seed, at an equal budget of ``--steps``
optimizer steps at batch 128 on the Fashion-MNIST training split (468 = one epoch), evaluated on
the whole 10,000-image test split:

- ``channel``: ``slimmer.compress`` with ``methods=("channel",), macs_target=0.5`` and every other
  option at its default (``--round-to`` too, unless the row names one), against Torch-Pruning 1.6.1
  (L2 magnitude, per-layer ratio bisected until the MACs kept match slimmer's within 0.01,
  classifier kept whole) fine-tuned with cross-entropy;
- ``u90``: ``slimmer.compress`` at ``sparsity=0.9`` (defaults: LAMP since 1a80136), against ``torch.nn.utils.prune``
  global L1 at 90% fine-tuned with cross-entropy, pruned weights held at zero.

The peers get slimmer's loop (SGD Nesterov, lr 0.01 cosine, weight decay 5e-4) on the same
un-augmented training images in the same order (same seed); slimmer distils from the original
(its default). Drop = accuracy before − accuracy after fine-tuning, in points.

    OMP_NUM_THREADS=1 python bench/model_set_accuracy.py --members resnet20,resnet20-aug,mbv2,vgg \\
        --rows channel,u90,tp,prune --seeds 0,1 --steps 468 --write-docs

``--rows channel-rt16,channel-relative`` compare the fixed rounding with the relative one
(slimmer/structures/rounding.py) at the same target.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from model_set import MEMBERS, load_member  # noqa: E402

import slimmer  # noqa: E402
from slimmer.config import CompressConfig  # noqa: E402
from slimmer.stats import accuracy, count_macs  # noqa: E402
from slimmer.structures.unstructured import MaskSet, prunable_weights  # noqa: E402
from slimmer.train.data import load_data  # noqa: E402
from slimmer.train.finetune import FinetuneConfig, finetune  # noqa: E402
from slimmer.train.hooks import MaskHook  # noqa: E402
from slimmer.zoo import FMNIST_MEAN, FMNIST_STD  # noqa: E402

OUT = Path(__file__).resolve().parent / "model_set_accuracy.jsonl"
SHAPE = (1, 1, 28, 28)
LR = 0.01  # slimmer's default --lr, given to the peers too


def slimmer_run(model: torch.nn.Module, steps: int, seed: int, **opts) -> dict:
    """``slimmer.compress`` with defaults except ``opts``; accuracy figures from its report. ``latency_exponent``
    in ``opts`` sets the latency-aware key's exponent on the cost term for this run
    (``slimmer.structures.channel.LATENCY_EXPONENT``)."""
    if "latency_exponent" in opts:
        return _common.with_latency_exponent(opts.pop("latency_exponent"), _slimmer_run, model, steps, seed, **opts)
    return _slimmer_run(model, steps, seed, **opts)


def _slimmer_run(model: torch.nn.Module, steps: int, seed: int, **opts) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CompressConfig(
            data="fashion-mnist",
            mean=FMNIST_MEAN,
            std=FMNIST_STD,
            finetune_steps=steps,
            seed=seed,
            device="cpu",
            progress_every_s=1e9,
            output=Path(tmp) / "m.onnx",
            **opts,
        )
        result = slimmer.compress(model, torch.zeros(SHAPE), cfg)
    rep = result.report
    acc = rep.accuracy
    return {
        "before": acc["before"],
        "after_prune": acc["after_prune"],
        "after_finetune": acc["after_finetune"],
        "eval_samples": acc["evaluation"]["samples"],
        "macs_kept": rep.macs["after"] / rep.macs["before"],
        "sparsity": rep.sparsity.get("achieved") if "unstructured" in cfg.methods else None,
        "round_to": rep.pruning.get("round_to"),
        "latency_aware": rep.pruning.get("latency_aware"),
        "params_kept": rep.params["after"] / rep.params["before"],
        "round_to_multiples": rep.pruning.get("round_to_multiples"),
        "status": rep.status,
    }


def peer_finetune(model, data, steps: int, seed: int, hooks) -> None:
    cfg = FinetuneConfig(steps=steps, batch_size=128, lr=LR, seed=seed, device="cpu", progress_every_s=1e9)
    finetune(model, None, data.train, cfg, hooks)


def tp_run(model, data, test, steps: int, seed: int, macs_goal: float) -> dict:
    """Torch-Pruning L2 with the per-layer ratio bisected to keep ``macs_goal`` of the MACs (±0.01)."""
    x = torch.zeros(SHAPE)
    macs0 = count_macs(model, x)
    _common.classifier_layers = lambda m: [m.fc]  # every member's 10-way head is .fc; keep it whole
    lo, hi, best = 0.0, 0.9, None
    for _ in range(10):
        ratio = (lo + hi) / 2
        pruned = _common.tp_prune(model, x, ratio=ratio, p=2, with_masked=False).model
        kept = count_macs(pruned, x) / macs0
        if best is None or abs(kept - macs_goal) < abs(best[1] - macs_goal):
            best = (pruned, kept, ratio)
        if abs(kept - macs_goal) <= 0.01:
            break
        lo, hi = (ratio, hi) if kept > macs_goal else (lo, ratio)
    pruned, kept, ratio = best
    before = accuracy(model, *test)
    after_prune = accuracy(pruned, *test)
    peer_finetune(pruned, data, steps, seed, [])
    return {
        "before": before,
        "after_prune": after_prune,
        "after_finetune": accuracy(pruned, *test),
        "macs_kept": kept,
        "tp_ratio": ratio,
    }


def torch_prune_run(model, data, test, steps: int, seed: int, sparsity: float = 0.9) -> dict:
    import torch.nn.utils.prune as tprune

    model = copy.deepcopy(model)
    before = accuracy(model, *test)
    modules = dict(model.named_modules())
    params = [(modules[n.rsplit(".", 1)[0]], "weight") for n in prunable_weights(model)]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=sparsity)
    for module, name in params:
        tprune.remove(module, name)
    masks = MaskSet({n: (w != 0) for n, w in prunable_weights(model).items()})
    after_prune = accuracy(model, *test)
    peer_finetune(model, data, steps, seed, [MaskHook(masks)])
    return {
        "before": before,
        "after_prune": after_prune,
        "after_finetune": accuracy(model, *test),
        "sparsity": masks.sparsity,
    }


ROWS = {
    "channel": (
        "slimmer --method channel --macs-target 0.5 (defaults: relative rounding, cross-entropy, rounding steps "
        "given back up to the target)",
        dict(methods=("channel",), macs_target=0.5),
    ),
    "channel-la": (
        "slimmer --method channel --macs-target 0.5 --latency-aware (cost exponent 0.5; otherwise the defaults)",
        dict(methods=("channel",), macs_target=0.5, latency_aware=True),
    ),
    "channel-la25": (
        "slimmer --method channel --macs-target 0.5 --latency-aware, cost exponent 0.25 (otherwise the defaults)",
        dict(methods=("channel",), macs_target=0.5, latency_aware=True, latency_exponent=0.25),
    ),
    "channel-rt16": (
        "slimmer --method channel --macs-target 0.5 --round-to 16 --kd (the default before 511c3d1)",
        dict(methods=("channel",), macs_target=0.5, round_to=16, kd=True),
    ),
    "channel-relative": (
        "slimmer --method channel --macs-target 0.5 --round-to relative --kd (distillation: the default until it "
        "became cross-entropy for channel pruning)",
        dict(methods=("channel",), macs_target=0.5, round_to="relative", kd=True),
    ),
    "channel-macs": (
        "slimmer --method channel --macs-target 0.5 --round-to 16 --no-latency-aware --kd (ranked by MACs)",
        dict(methods=("channel",), macs_target=0.5, round_to=16, latency_aware=False, kd=True),
    ),
    "channel-latency": (
        "slimmer --method channel --macs-target 0.5 --round-to 16 --latency-aware --kd",
        dict(methods=("channel",), macs_target=0.5, round_to=16, latency_aware=True, kd=True),
    ),
    "channel-rt1": (
        "slimmer --method channel --macs-target 0.5 --round-to 1 --kd",
        dict(methods=("channel",), macs_target=0.5, round_to=1, kd=True),
    ),
    "channel-rt8": (
        "slimmer --method channel --macs-target 0.5 --round-to 8 --kd",
        dict(methods=("channel",), macs_target=0.5, round_to=8, kd=True),
    ),
    "channel-layer": (
        "slimmer --method channel --macs-target 0.5 --scope layer --round-to 1 --kd (uniform ratio, as Torch-Pruning)",
        dict(methods=("channel",), macs_target=0.5, scope="layer", round_to=1, kd=True),
    ),
    "channel-ce": (
        "slimmer --method channel --macs-target 0.5 --round-to 16 --no-kd (cross-entropy only, as the peers)",
        dict(methods=("channel",), macs_target=0.5, round_to=16, kd=False),
    ),
    "channel-rt1-ce": (
        "slimmer --method channel --macs-target 0.5 --round-to 1 --no-kd",
        dict(methods=("channel",), macs_target=0.5, round_to=1, kd=False),
    ),
    "channel-layer-ce": (
        "slimmer --method channel --macs-target 0.5 --scope layer --round-to 1 --no-kd (Torch-Pruning's recipe)",
        dict(methods=("channel",), macs_target=0.5, scope="layer", round_to=1, kd=False),
    ),
    "channel-relative-ce": (
        "slimmer --method channel --macs-target 0.5 --round-to relative --no-kd (the default's settings)",
        dict(methods=("channel",), macs_target=0.5, round_to="relative", kd=False),
    ),
    "channel-layer-relative-ce": (
        "slimmer --method channel --macs-target 0.5 --scope layer --round-to relative --no-kd",
        dict(methods=("channel",), macs_target=0.5, scope="layer", round_to="relative", kd=False),
    ),
    "channel-layer-default": (
        "slimmer --method channel --macs-target 0.5 --scope layer (a uniform ratio; otherwise the defaults, "
        "rounding steps given back up to the target)",
        dict(methods=("channel",), macs_target=0.5, scope="layer"),
    ),
    "channel-l2": (
        "slimmer --method channel --macs-target 0.5 --criterion l2 (otherwise the defaults)",
        dict(methods=("channel",), macs_target=0.5, criterion="l2"),
    ),
    "channel-la-elements": (
        "slimmer --method channel --macs-target 0.5 --latency-aware (cost exponent 0.5, before the weight-read "
        "term of the cost model; records only, no longer runnable)",
        "historical",
    ),
    "u90": ("slimmer --sparsity 0.9 (defaults: LAMP, distillation)", dict(sparsity=0.9)),
    "u90-ce": ("slimmer --sparsity 0.9 --no-kd (LAMP, cross-entropy)", dict(sparsity=0.9, kd=False)),
    "u90-gradual": (
        "slimmer --sparsity 0.9 --schedule gradual (LAMP, distillation)",
        dict(sparsity=0.9, schedule="gradual"),
    ),
    "u90-magnitude": (
        "slimmer --sparsity 0.9 --criterion magnitude (global magnitude: the default before 1a80136)",
        dict(sparsity=0.9, criterion="magnitude"),
    ),
    "u90-magnitude-ce": (
        "slimmer --sparsity 0.9 --criterion magnitude --no-kd",
        dict(sparsity=0.9, criterion="magnitude", kd=False),
    ),
    "u90-magnitude-gradual": (
        "slimmer --sparsity 0.9 --criterion magnitude --schedule gradual",
        dict(sparsity=0.9, criterion="magnitude", schedule="gradual"),
    ),
    "tp": ("Torch-Pruning L2, MACs matched to slimmer's channel row (CE)", None),
    "prune": ("torch.nn.utils.prune global L1 90% (CE)", None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", default=",".join(MEMBERS))
    ap.add_argument("--rows", default="channel,u90,tp,prune")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=468)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data("fashion-mnist", SHAPE, FMNIST_MEAN, FMNIST_STD)
    test = (data.eval.x, data.eval.y)
    for member in filter(None, args.members.split(",")):
        for row in filter(None, args.rows.split(",")):
            label, opts = ROWS[row]
            if opts == "historical":
                raise SystemExit(f"row {row!r} records an earlier version of slimmer; it cannot be run again")
            for seed in map(int, args.seeds.split(",")):
                model = load_member(member)
                t0 = time.time()
                if opts is not None:
                    result = slimmer_run(model, args.steps, seed, **opts)
                elif row == "tp":
                    ref = [r for r in _common.read_jsonl(args.out) if r["member"] == member and r["row"] == "channel"]
                    goal = ref[-1]["macs_kept"] if ref else 0.5
                    result = tp_run(model, data, test, args.steps, seed, goal)
                else:
                    result = torch_prune_run(model, data, test, args.steps, seed)
                record = {
                    "member": member,
                    "row": row,
                    "label": label,
                    "seed": seed,
                    "steps": args.steps,
                    "seconds": round(time.time() - t0),
                    **result,
                }
                _common.append_jsonl(args.out, record)
                print(json.dumps(record), flush=True)
    if args.write_docs:
        write_docs(args.out, "`python " + shlex.join(sys.argv) + "`")


def table(rows: list[dict]) -> list[str]:
    """One line per (member, row, steps): accuracies per seed and the mean drop, then the mean over members."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["member"], r["row"], r["steps"]), []).append(r)
    lines = [
        "| model | method | steps | MACs kept / sparsity | before | right after pruning | after fine-tuning (seeds) "
        "| mean drop (points) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    per_row: dict[tuple[str, int], list[float]] = {}
    order = {k: i for i, k in enumerate(ROWS)}
    members = {k: i for i, k in enumerate(MEMBERS)}
    for (member, row, steps), rs in sorted(groups.items(), key=lambda kv: (members[kv[0][0]], order[kv[0][1]])):
        drop = 100 * statistics.mean(r["before"] - r["after_finetune"] for r in rs)
        per_row.setdefault((row, steps), []).append(drop)
        size = f"{rs[0]['sparsity']:.3f} sparsity" if rs[0].get("sparsity") else f"{rs[0]['macs_kept']:.3f} MACs"
        multiples = rs[0].get("round_to_multiples")
        label = ROWS[row][0] + (f"; multiples {multiples}" if multiples and not row.startswith("u90") else "")
        lines.append(
            f"| {member} | {label} | {steps} | {size} | {rs[0]['before']:.2%} "
            f"| {statistics.mean(r['after_prune'] for r in rs):.2%} "
            f"| {' / '.join(format(r['after_finetune'], '.2%') for r in rs)} | {drop:.2f} |"
        )
    lines += ["", "| method | steps | models | mean drop over the models (points) |", "|---|---|---|---|"]
    for (row, steps), drops in per_row.items():
        lines.append(f"| {ROWS[row][0]} | {steps} | {len(drops)} | {statistics.mean(drops):.2f} |")
    return lines


def write_docs(path: Path, command: str) -> None:
    rows = _common.read_jsonl(path)
    v = _common.versions()
    body = (
        f"Written by {command} ({_common.today()}; torch {v.get('torch')}, torch-pruning "
        f"{v.get('torch-pruning', 'n/a')}) from the runs in `bench/model_set_accuracy.jsonl`. "
        "Test split: all 10,000 Fashion-MNIST test images.\n\n" + "\n".join(table(rows))
    )
    _common.write_section("Accuracy on the model set", body)


if __name__ == "__main__":
    main()
