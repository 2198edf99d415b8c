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

The peers get slimmer's loop (SGD Nesterov, cosine from slimmer's default peak rate ``LR``, weight decay 5e-4)
on the same un-augmented training images in the same order (same seed). Since 77c7733 slimmer's default is
lr 0.1 with cross-entropy alone after unstructured or channel pruning; rows recorded before it ran at lr 0.01
(their labels say so, and their options pin it). Drop = accuracy before − accuracy after fine-tuning, in points.

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
LR = 0.1  # slimmer's default --lr for SGD after pruning (since 77c7733), given to the peers too


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


def peer_finetune(model, data, steps: int, seed: int, hooks, lr: float = LR) -> None:
    cfg = FinetuneConfig(steps=steps, batch_size=128, lr=lr, seed=seed, device="cpu", progress_every_s=1e9)
    finetune(model, None, data.train, cfg, hooks)


def tp_run(model, data, test, steps: int, seed: int, macs_goal: float, lr: float = LR) -> dict:
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
    peer_finetune(pruned, data, steps, seed, [], lr)
    return {
        "before": before,
        "after_prune": after_prune,
        "after_finetune": accuracy(pruned, *test),
        "macs_kept": kept,
        "tp_ratio": ratio,
    }


def torch_prune_run(model, data, test, steps: int, seed: int, sparsity: float = 0.9, lr: float = LR) -> dict:
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
    peer_finetune(model, data, steps, seed, [MaskHook(masks)], lr)
    return {
        "before": before,
        "after_prune": after_prune,
        "after_finetune": accuracy(model, *test),
        "sparsity": masks.sparsity,
    }


ROWS = {
    "channel": (
        "slimmer --method channel --macs-target 0.5 (defaults: lr 0.1, cross-entropy, relative rounding, rounding "
        "steps given back up to the target)",
        {"methods": ("channel",), "macs_target": 0.5},
    ),
    "u90": ("slimmer --sparsity 0.9 (defaults: lr 0.1, cross-entropy, LAMP)", {"sparsity": 0.9}),
    "u90-kd": ("slimmer --sparsity 0.9 --kd (lr 0.1, LAMP, distillation)", {"sparsity": 0.9, "kd": True}),
    "channel-l2": (
        "slimmer --method channel --macs-target 0.5 --criterion l2 (otherwise the defaults)",
        {"methods": ("channel",), "macs_target": 0.5, "criterion": "l2"},
    ),
    "channel-scope-layer": (
        "slimmer --method channel --macs-target 0.5 --scope layer (a uniform ratio, as Torch-Pruning; otherwise the "
        "defaults)",
        {"methods": ("channel",), "macs_target": 0.5, "scope": "layer"},
    ),
    "channel-scope-layer-l2": (
        "slimmer --method channel --macs-target 0.5 --scope layer --criterion l2 (Torch-Pruning's plan shape and "
        "criterion; otherwise the defaults)",
        {"methods": ("channel",), "macs_target": 0.5, "scope": "layer", "criterion": "l2"},
    ),
    "channel-latency-aware": (
        "slimmer --method channel --macs-target 0.5 --latency-aware (cost exponent 0.5; otherwise the defaults)",
        {"methods": ("channel",), "macs_target": 0.5, "latency_aware": True},
    ),
    "channel-at-tp": (
        "slimmer --method channel --macs-target T, T = the MACs the Torch-Pruning row kept on that member (the same "
        "budget; otherwise the defaults)",
        {"methods": ("channel",), "macs_target": "tp"},
    ),
    "channel-lr05": (
        "slimmer --method channel --macs-target 0.5 --lr 0.05",
        {"methods": ("channel",), "macs_target": 0.5, "lr": 0.05},
    ),
    "channel-lr01": (
        "slimmer --method channel --macs-target 0.5 --lr 0.01 (the default until 77c7733)",
        {"methods": ("channel",), "macs_target": 0.5, "lr": 0.01},
    ),
    "u90-lr2": ("slimmer --sparsity 0.9 --lr 0.2 --kd (LAMP, distillation)", {"sparsity": 0.9, "lr": 0.2, "kd": True}),
    "u90-lr05": (
        "slimmer --sparsity 0.9 --lr 0.05 --kd (LAMP, distillation)",
        {"sparsity": 0.9, "lr": 0.05, "kd": True},
    ),
    "u90-lr03": (
        "slimmer --sparsity 0.9 --lr 0.03 --kd (LAMP, distillation)",
        {"sparsity": 0.9, "lr": 0.03, "kd": True},
    ),
    "u90-lr01": (
        "slimmer --sparsity 0.9 --lr 0.01 --kd (LAMP, distillation: the default from 1a80136 to 77c7733)",
        {"sparsity": 0.9, "lr": 0.01, "kd": True},
    ),
    "u90-ce-lr01": (
        "slimmer --sparsity 0.9 --lr 0.01 --no-kd (LAMP, cross-entropy)",
        {"sparsity": 0.9, "lr": 0.01, "kd": False},
    ),
    "channel-la": (
        "slimmer --method channel --macs-target 0.5 --latency-aware (cost exponent 0.5; otherwise the defaults) at lr "
        "0.01",
        {"methods": ("channel",), "macs_target": 0.5, "latency_aware": True, "lr": 0.01},
    ),
    "channel-la25": (
        "slimmer --method channel --macs-target 0.5 --latency-aware, cost exponent 0.25 (otherwise the defaults) at "
        "lr 0.01",
        {"methods": ("channel",), "macs_target": 0.5, "latency_aware": True, "latency_exponent": 0.25, "lr": 0.01},
    ),
    "channel-rt16": (
        "slimmer --method channel --macs-target 0.5 --round-to 16 --kd (the default before 511c3d1) at lr 0.01",
        {"methods": ("channel",), "macs_target": 0.5, "round_to": 16, "kd": True, "lr": 0.01},
    ),
    "channel-relative": (
        "slimmer --method channel --macs-target 0.5 --round-to relative --kd (distillation: the default until it "
        "became cross-entropy for channel pruning) at lr 0.01",
        {"methods": ("channel",), "macs_target": 0.5, "round_to": "relative", "kd": True, "lr": 0.01},
    ),
    "channel-macs": (
        "slimmer --method channel --macs-target 0.5 --round-to 16 --no-latency-aware --kd (ranked by MACs) at lr 0.01",
        {"methods": ("channel",), "macs_target": 0.5, "round_to": 16, "latency_aware": False, "kd": True, "lr": 0.01},
    ),
    "channel-latency": (
        "slimmer --method channel --macs-target 0.5 --round-to 16 --latency-aware --kd at lr 0.01",
        {"methods": ("channel",), "macs_target": 0.5, "round_to": 16, "latency_aware": True, "kd": True, "lr": 0.01},
    ),
    "channel-rt1": (
        "slimmer --method channel --macs-target 0.5 --round-to 1 --kd at lr 0.01",
        {"methods": ("channel",), "macs_target": 0.5, "round_to": 1, "kd": True, "lr": 0.01},
    ),
    "channel-rt8": (
        "slimmer --method channel --macs-target 0.5 --round-to 8 --kd at lr 0.01",
        {"methods": ("channel",), "macs_target": 0.5, "round_to": 8, "kd": True, "lr": 0.01},
    ),
    "channel-layer": (
        "slimmer --method channel --macs-target 0.5 --scope layer --round-to 1 --kd (uniform ratio, as Torch-Pruning) "
        "at lr 0.01",
        {"methods": ("channel",), "macs_target": 0.5, "scope": "layer", "round_to": 1, "kd": True, "lr": 0.01},
    ),
    "channel-ce": (
        "slimmer --method channel --macs-target 0.5 --round-to 16 --no-kd (cross-entropy only, as the peers) at lr "
        "0.01",
        {"methods": ("channel",), "macs_target": 0.5, "round_to": 16, "kd": False, "lr": 0.01},
    ),
    "channel-rt1-ce": (
        "slimmer --method channel --macs-target 0.5 --round-to 1 --no-kd at lr 0.01",
        {"methods": ("channel",), "macs_target": 0.5, "round_to": 1, "kd": False, "lr": 0.01},
    ),
    "channel-layer-ce": (
        "slimmer --method channel --macs-target 0.5 --scope layer --round-to 1 --no-kd (Torch-Pruning's recipe) at lr "
        "0.01",
        {"methods": ("channel",), "macs_target": 0.5, "scope": "layer", "round_to": 1, "kd": False, "lr": 0.01},
    ),
    "channel-relative-ce": (
        "slimmer --method channel --macs-target 0.5 --round-to relative --no-kd (the default's settings) at lr 0.01",
        {"methods": ("channel",), "macs_target": 0.5, "round_to": "relative", "kd": False, "lr": 0.01},
    ),
    "channel-layer-relative-ce": (
        "slimmer --method channel --macs-target 0.5 --scope layer --round-to relative --no-kd at lr 0.01",
        {
            "methods": ("channel",),
            "macs_target": 0.5,
            "scope": "layer",
            "round_to": "relative",
            "kd": False,
            "lr": 0.01,
        },
    ),
    "channel-layer-default": (
        "slimmer --method channel --macs-target 0.5 --scope layer (a uniform ratio; otherwise the defaults, rounding "
        "steps given back up to the target) at lr 0.01",
        {"methods": ("channel",), "macs_target": 0.5, "scope": "layer", "lr": 0.01},
    ),
    "channel-l2-lr01": (
        "slimmer --method channel --macs-target 0.5 --criterion l2 --lr 0.01 (otherwise the defaults of that time)",
        {"methods": ("channel",), "macs_target": 0.5, "criterion": "l2", "lr": 0.01},
    ),
    "channel-la-elements": (
        "slimmer --method channel --macs-target 0.5 --latency-aware (cost exponent 0.5, before the weight-read term "
        "of the cost model at lr 0.01; records only, no longer runnable)",
        "historical",
    ),
    "u90-gradual": (
        "slimmer --sparsity 0.9 --schedule gradual (LAMP, distillation) at lr 0.01",
        {"sparsity": 0.9, "schedule": "gradual", "lr": 0.01, "kd": True},
    ),
    "u90-reconstruct": (
        "slimmer --sparsity 0.9 --reconstruct (least-squares reconstruction, then fine-tuning; otherwise defaults) at "
        "lr 0.01",
        {"sparsity": 0.9, "reconstruct": True, "lr": 0.01, "kd": True},
    ),
    "u90-magnitude": (
        "slimmer --sparsity 0.9 --criterion magnitude (global magnitude: the default before 1a80136) at lr 0.01",
        {"sparsity": 0.9, "criterion": "magnitude", "lr": 0.01, "kd": True},
    ),
    "u90-magnitude-ce": (
        "slimmer --sparsity 0.9 --criterion magnitude --no-kd at lr 0.01",
        {"sparsity": 0.9, "criterion": "magnitude", "kd": False, "lr": 0.01},
    ),
    "u90-magnitude-gradual": (
        "slimmer --sparsity 0.9 --criterion magnitude --schedule gradual at lr 0.01",
        {"sparsity": 0.9, "criterion": "magnitude", "schedule": "gradual", "lr": 0.01, "kd": True},
    ),
    "tp": ("Torch-Pruning L2, MACs matched to slimmer's channel row (CE)", {"peer": "tp"}),
    "prune": ("torch.nn.utils.prune global L1 90% (CE)", {"peer": "prune"}),
    "tp-lr01": ("Torch-Pruning L2, MACs matched to slimmer's channel row (CE), lr 0.01", {"peer": "tp", "lr": 0.01}),
    "prune-lr01": ("torch.nn.utils.prune global L1 90% (CE), lr 0.01", {"peer": "prune", "lr": 0.01}),
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
    ap.add_argument(
        "--compare",
        metavar="A,B",
        help="print the paired table of row B against row A from the records (no runs) and exit",
    )
    args = ap.parse_args()
    if args.compare:
        a, b = args.compare.split(",")
        records = _records(args.out)
        print("\n".join(compare(records, a, b, args.steps, [m for m in args.members.split(",") if m])))
        return
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
                peer = opts.get("peer")
                lr = opts.get("lr", LR)
                if peer is None and opts.get("macs_target") == "tp":  # the budget the peer landed on
                    records = _records(args.out)
                    ref = [r for r in records if r["member"] == member and r["row"] == "tp"]
                    if not ref:
                        raise SystemExit(f"row {row!r} needs the tp row of {member} first")
                    result = slimmer_run(model, args.steps, seed, **{**opts, "macs_target": ref[-1]["macs_kept"]})
                elif peer is None:
                    result = slimmer_run(model, args.steps, seed, **opts)
                elif peer == "tp":
                    records = _records(args.out)
                    ref = [r for r in records if r["member"] == member and r["row"] == "channel"]
                    goal = ref[-1]["macs_kept"] if ref else 0.5
                    result = tp_run(model, data, test, args.steps, seed, goal, lr)
                else:
                    result = torch_prune_run(model, data, test, args.steps, seed, lr=lr)
                record = {
                    "member": member,
                    "row": row,
                    "label": label,
                    "seed": seed,
                    "steps": args.steps,
                    "seconds": round(time.time() - t0),
                    "cpu": _common.cpu(),
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


def _records(out: Path) -> list[dict]:
    """The records of ``out``, then those of ``bench/model_set_accuracy.jsonl`` when ``out`` is another file."""
    return _common.read_jsonl(out) + (_common.read_jsonl(OUT) if out != OUT else [])


def compare(records: list[dict], a: str, b: str, steps: int, members: list[str]) -> list[str]:
    """Markdown lines: per member, the drops of rows ``a`` and ``b`` per seed, their means, the difference
    (b − a, points; > 0: b loses more), its Welch standard error, and whether b is worse beyond noise, the
    rule fixed before the runs: a difference larger than twice its standard error. Only the seeds both rows ran
    count. One record per (member, row, seed) at ``steps``: the last one, which is what the runs of one CPU kind
    should give."""
    lines = [
        f"| member | `{a}`: drop per seed | `{b}`: drop per seed | means | difference (b − a) | 2 × standard error "
        "| b worse beyond noise |",
        "|---|---|---|---|---:|---:|---|",
    ]

    def drops(member: str, row: str) -> dict[int, float]:
        out = {}
        for r in records:
            if r["member"] == member and r["row"] == row and r["steps"] == steps and r.get("status", "ok") == "ok":
                out[r["seed"]] = 100 * (r["before"] - r["after_finetune"])
        return dict(sorted(out.items()))

    for member in members:
        da, db = drops(member, a), drops(member, b)
        common = set(da) & set(db)  # the seeds both rows ran
        da, db = ({k: v for k, v in d.items() if k in common} for d in (da, db))
        if len(da) < 2 or len(db) < 2:
            lines.append(f"| {member} | {len(da)} seed(s) | {len(db)} seed(s) | | | | too few seeds |")
            continue
        ma, mb = statistics.mean(da.values()), statistics.mean(db.values())
        se = (statistics.variance(da.values()) / len(da) + statistics.variance(db.values()) / len(db)) ** 0.5
        diff = mb - ma
        seeds_a, seeds_b = (" / ".join(f"{v:.2f}" for v in d.values()) for d in (da, db))
        lines.append(
            f"| {member} | {seeds_a} | {seeds_b} "
            f"| {ma:.2f} → {mb:.2f} | {diff:+.2f} | {2 * se:.2f} | {'**yes**' if diff > 2 * se else 'no'} |"
        )
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
