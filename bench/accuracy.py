"""Accuracy at equal fine-tuning budget (BENCHMARKS.md §3): slimmer against its peers.

From the bundled resnet20-fmnist checkpoint, every row gets the same budget: ``--steps`` optimizer
steps (468 = one epoch at batch 128), SGD Nesterov lr 0.01 (``--lr``, the same for every row)
cosine, weight decay 5e-4, evaluated on the 10k Fashion-MNIST test split. Rows augment with
pad-crop + flip (``compress``'s default until 2026-11-30) unless their label says "no augmentation"
(the default since), and then the peer of the same row does not augment either.
The peers get the same loop with cross-entropy only (no distillation), exactly as in the
BENCHMARKS.md reference runs; slimmer distils from the original: "KD" in a label is the loss
0.9·KD + 0.1·CE (the default until 2026-11-30), "KD 0.5" today's ``--kd-weight`` 0.5.

Rows: ``channel`` (slimmer --macs-target 0.5 vs Torch-Pruning L2 at ratio 0.29, ≈ the same MACs),
``u90`` (slimmer 90% unstructured vs torch.nn.utils.prune global L1; also ``--regrow``,
layer-wise distillation, AdamW, magnitude and Taylor), ``u97`` (slimmer 97% with the
oneshot, iterative, gradual and cyclical schedules), ``pai`` (SNIP, GraSP, SynFlow at 90% and 99%),
``reg`` (slimming and greg at half the MACs, halo at 90%: half the steps regularizing, half
fine-tuning), ``nm`` (2:4 fine-tuned with SR-STE against the same mask held fixed).

    python bench/accuracy.py --rows channel,u90 --seeds 0,1 --write-docs

Needs ``apt-get install dataset-fashion-mnist`` and, for the Torch-Pruning row, ``pip install ".[bench]"``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from slimmer.bundled import DEMO_WEIGHTS, bundled_file  # noqa: E402
from slimmer.config import CompressConfig  # noqa: E402
from slimmer.stats import accuracy, count_macs  # noqa: E402
from slimmer.structures.unstructured import MaskSet, prunable_weights  # noqa: E402
from slimmer.train.data import load_data, pad_crop_flip  # noqa: E402
from slimmer.train.finetune import FinetuneConfig, finetune  # noqa: E402
from slimmer.train.hooks import MaskHook  # noqa: E402
from slimmer.zoo import ARCHITECTURES, FMNIST_MEAN, FMNIST_STD  # noqa: E402

OUT = Path(__file__).resolve().parent / "accuracy.jsonl"
THROUGH_API = (
    "Rows recorded before 2026-11-30 16:00 UTC ran an in-script copy of the compress flow; rows recorded after run "
    "through `slimmer.compress` (export and verification included), so the two can differ by the seeding of the "
    "stages around pruning."
)
LR = 0.01  # every row's learning rate (--lr); BENCHMARKS.md §3 uses 0.01
SHAPE = (1, 1, 28, 28)


def base_model() -> torch.nn.Module:
    model = ARCHITECTURES.get("resnet20-fmnist").build()
    model.load_state_dict(load_file(str(bundled_file(DEMO_WEIGHTS))))
    return model.eval()


def peer_finetune(model, data, steps: int, seed: int, hooks, augment: bool = True) -> None:
    cfg = FinetuneConfig(
        steps=steps,
        batch_size=128,
        lr=LR,
        seed=seed,
        device="cpu",
        augment=pad_crop_flip(4) if augment else None,
        progress_every_s=1e9,
    )
    finetune(model, None, data.train, cfg, hooks)


def slimmer_row(data, test, steps, seed, fixed_nm_mask: bool = False, **opts) -> dict:
    """The compress flow on the bundled model, through the public API (:func:`slimmer.compress`):
    prune, regularize when asked, shrink, fine-tune, export and verify; accuracy on the whole test split.

    ``data`` and ``test`` are unused (the API reads ``fashion-mnist`` itself; its evaluation split is
    the same 10k test images); ``fixed_nm_mask`` is ``--nm-fixed-mask``."""
    import tempfile

    import slimmer

    opts.setdefault("reconstruct", False)  # rows before least-squares reconstruction existed keep their meaning
    opts.setdefault("augment", True)  # so do the rows from when compress augmented by default ("no augmentation" rows)
    if opts.get("kd") is not False:  # and distilled with weight 0.9 ("KD"; "KD 0.5" rows use today's default)
        opts.setdefault("kd_weight", 0.9)
    opts.setdefault("kd", True)  # every row distils unless it says CE: the default stopped after pruning (6acb244)
    with tempfile.TemporaryDirectory(prefix="slimmer-bench-") as tmp:
        cfg = CompressConfig(
            data="fashion-mnist",
            mean=FMNIST_MEAN,
            std=FMNIST_STD,
            eval_samples=len(test[1]),
            finetune_steps=steps,
            batch_size=128,
            lr=LR,
            seed=seed,
            device="cpu",
            progress_every_s=1e9,
            nm_fixed_mask=fixed_nm_mask,
            output=Path(tmp) / "model.onnx",
            **opts,
        )
        result = slimmer.compress(base_model(), torch.randn(1, *SHAPE[1:]), cfg)
    rep = result.report
    if rep.status != "ok":
        raise SystemExit(f"compress failed: {rep.error}")
    acc, finetune = rep.accuracy, rep.finetune or {}
    extra = {
        key: value
        for key, value in (
            ("after_regularize", acc.get("after_regularize")),
            ("regularizer", rep.pruning.get("regularizer")),
            ("after_reconstruct", acc.get("after_reconstruct")),
            ("mask_changed", finetune.get("regrow", {}).get("mask_changed")),
            ("nm_mask_changed", finetune.get("nm", {}).get("mask_changed")),
        )
        if value is not None
    }
    return {
        "after_prune": acc["after_prune"],
        "after_finetune": acc["after_finetune"] if steps else acc["after_prune"],
        "macs_kept": rep.macs["after"] / rep.macs["before"],
        "sparsity": rep.sparsity["achieved"],
        **extra,
    }


def tp_row(data, test, steps, seed, augment: bool = True) -> dict:
    model = base_model()
    x = torch.randn(1, *SHAPE[1:])
    macs0 = count_macs(model, x)
    _common.classifier_layers = lambda m: [m.fc]  # keep the 10-way head whole, as in BENCHMARKS.md §3
    pruned = _common.tp_prune(model, x, ratio=0.29, p=2, with_masked=False).model
    after_prune = accuracy(pruned, *test)
    peer_finetune(pruned, data, steps, seed, [], augment)
    return {
        "after_prune": after_prune,
        "after_finetune": accuracy(pruned, *test),
        "macs_kept": count_macs(pruned, x) / macs0,
    }


def torch_prune_row(data, test, steps, seed, sparsity: float, augment: bool = True) -> dict:
    import torch.nn.utils.prune as tprune

    model = base_model()
    weights = prunable_weights(model)
    modules = dict(model.named_modules())
    params = [(modules[n.rsplit(".", 1)[0]], "weight") for n in weights]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=sparsity)
    for module, name in params:
        tprune.remove(module, name)
    masks = MaskSet({n: (w != 0) for n, w in prunable_weights(model).items()})
    after_prune = accuracy(model, *test)
    peer_finetune(model, data, steps, seed, [MaskHook(masks)], augment)
    return {"after_prune": after_prune, "after_finetune": accuracy(model, *test), "sparsity": masks.sparsity}


HALF_MACS_L2_RT4 = dict(methods=("channel",), macs_target=0.5, round_to=4, criterion="l2")  # the no-augmentation rows

ROWS = {
    "channel": [
        (
            "slimmer channel --macs-target 0.5, round_to 16 = default (l1, KD)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, methods=("channel",), macs_target=0.5),
        ),
        (
            "slimmer channel --macs-target 0.5, --round-to 4 (l1, KD)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, methods=("channel",), macs_target=0.5, round_to=4),
        ),
        (
            "slimmer channel --macs-target 0.5, --round-to 4, gradual (l1, KD)",
            lambda d, t, s, seed: slimmer_row(
                d, t, s, seed, methods=("channel",), macs_target=0.5, round_to=4, schedule="gradual"
            ),
        ),
        (
            "slimmer channel --macs-target 0.5, --round-to 4 (l2, KD)",
            lambda d, t, s, seed: slimmer_row(
                d, t, s, seed, methods=("channel",), macs_target=0.5, round_to=4, criterion="l2"
            ),
        ),
        (
            "slimmer channel --macs-target 0.5, --round-to 4 (l1, reconstruct, KD)",
            lambda d, t, s, seed: slimmer_row(
                d, t, s, seed, methods=("channel",), macs_target=0.5, round_to=4, reconstruct=True
            ),
        ),
        (
            "slimmer channel --macs-target 0.5, round_to 16 = default (l1, reconstruct, KD)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, methods=("channel",), macs_target=0.5, reconstruct=True),
        ),
        (
            "slimmer channel --macs-target 0.5, --round-to 4 (l2, KD + layers)",
            lambda d, t, s, seed: slimmer_row(
                d, t, s, seed, methods=("channel",), macs_target=0.5, round_to=4, criterion="l2", kd_layers=1.0
            ),
        ),
        (
            "slimmer channel --macs-target 0.5, --round-to 4, --scope layer (l2, KD)",
            lambda d, t, s, seed: slimmer_row(
                d, t, s, seed, methods=("channel",), macs_target=0.5, round_to=4, criterion="l2", scope="layer"
            ),
        ),
        ("Torch-Pruning L2 ratio 0.29 (CE)", tp_row),
        (
            "slimmer channel --macs-target 0.5, --round-to 4 (l2, KD, no augmentation)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, **HALF_MACS_L2_RT4, augment=False),
        ),
        ("Torch-Pruning L2 ratio 0.29 (CE, no augmentation)", lambda d, t, s, seed: tp_row(d, t, s, seed, False)),
        (
            "slimmer channel --macs-target 0.5, --round-to 4 (l2, labels only, no augmentation)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, **HALF_MACS_L2_RT4, augment=False, kd=False),
        ),
        (
            "slimmer channel --macs-target 0.5, --round-to 4 (l2, KD 0.5, no augmentation)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, **HALF_MACS_L2_RT4, augment=False, kd_weight=0.5),
        ),
    ],
    "u90": [
        (
            "slimmer 90% unstructured (lamp, KD)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, sparsity=0.9, criterion="lamp"),
        ),
        (
            "slimmer 90% unstructured (lamp, reconstruct, KD)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, sparsity=0.9, criterion="lamp", reconstruct=True),
        ),
        (
            "slimmer 90% unstructured, gradual (lamp, KD)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, sparsity=0.9, criterion="lamp", schedule="gradual"),
        ),
        (
            "slimmer 90% unstructured (lamp, KD, regrow)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, sparsity=0.9, criterion="lamp", regrow=True),
        ),
        (
            "slimmer 90% unstructured (lamp, KD + layers)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, sparsity=0.9, criterion="lamp", kd_layers=1.0),
        ),
        (
            "slimmer 90% unstructured (lamp, KD + layers x5)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, sparsity=0.9, criterion="lamp", kd_layers=5.0),
        ),
        (
            "slimmer 90% unstructured (taylor, KD)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, sparsity=0.9, criterion="taylor"),
        ),
        (
            "slimmer 90% unstructured (magnitude, KD)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, sparsity=0.9, criterion="magnitude"),
        ),
        (
            "slimmer 90% unstructured (lamp, KD, adamw)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, sparsity=0.9, criterion="lamp", optimizer="adamw"),
        ),
        ("torch.nn.utils.prune global L1 90% (CE)", lambda d, t, s, seed: torch_prune_row(d, t, s, seed, 0.9)),
        (
            "slimmer 90% unstructured (lamp, KD, no augmentation)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, sparsity=0.9, criterion="lamp", augment=False),
        ),
        (
            "slimmer 90% unstructured (lamp, KD 0.5, no augmentation)",
            lambda d, t, s, seed: slimmer_row(
                d, t, s, seed, sparsity=0.9, criterion="lamp", augment=False, kd_weight=0.5
            ),
        ),
        (
            "slimmer 90% unstructured (lamp, KD 0.5, regrow, no augmentation)",
            lambda d, t, s, seed: slimmer_row(
                d, t, s, seed, sparsity=0.9, criterion="lamp", regrow=True, augment=False, kd_weight=0.5
            ),
        ),
        (
            "torch.nn.utils.prune global L1 90% (CE, no augmentation)",
            lambda d, t, s, seed: torch_prune_row(d, t, s, seed, 0.9, augment=False),
        ),
    ],
    # the noise floor: the same fine-tune with nothing pruned (how much one epoch alone moves accuracy)
    "floor": [
        (
            "slimmer 0% (nothing pruned), fine-tune only (KD)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, sparsity=0.0),
        ),
        (
            "slimmer 0% (nothing pruned), fine-tune only (KD 0.5, no augmentation)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, sparsity=0.0, augment=False, kd_weight=0.5),
        ),
        (
            "slimmer 0% (nothing pruned), fine-tune only (labels only, no augmentation)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, sparsity=0.0, augment=False, kd=False),
        ),
    ],
    "u97": [
        (
            f"slimmer 97% unstructured, {sch} (lamp, KD)",
            lambda d, t, s, seed, sch=sch: slimmer_row(d, t, s, seed, sparsity=0.97, criterion="lamp", schedule=sch),
        )
        for sch in ("oneshot", "iterative", "gradual", "cyclical")
    ]
    + [("torch.nn.utils.prune global L1 97% (CE)", lambda d, t, s, seed: torch_prune_row(d, t, s, seed, 0.97))],
    # issue 5: the pruning-at-initialization criteria applied to the trained model, then fine-tuned
    "pai": [
        (
            f"slimmer {int(sp * 100)}% unstructured ({crit}, KD)",
            lambda d, t, s, seed, crit=crit, sp=sp: slimmer_row(d, t, s, seed, sparsity=sp, criterion=crit),
        )
        for sp in (0.9, 0.99)
        for crit in ("snip", "grasp", "synflow")
    ],
    # issue 5: regularized phase, then prune, then fine-tune: half the budget each (468 steps in all)
    "reg": [
        (
            "slimmer channel --macs-target 0.5, slimming (bn-scale), reg 234 + ft 234 (KD)",
            lambda d, t, s, seed: slimmer_row(
                d, t, s // 2, seed, methods=("channel",), macs_target=0.5, regularizer="slimming", reg_steps=s - s // 2
            ),
        ),
        (
            "slimmer channel --macs-target 0.5, greg (l1), reg 234 + ft 234 (KD)",
            lambda d, t, s, seed: slimmer_row(
                d, t, s // 2, seed, methods=("channel",), macs_target=0.5, regularizer="greg", reg_steps=s - s // 2
            ),
        ),
        (
            "slimmer channel --macs-target 0.5, --round-to 4, greg (l1), reg 234 + ft 234 (KD)",
            lambda d, t, s, seed: slimmer_row(
                d,
                t,
                s // 2,
                seed,
                methods=("channel",),
                macs_target=0.5,
                round_to=4,
                regularizer="greg",
                reg_steps=s - s // 2,
            ),
        ),
        (
            "slimmer 90% unstructured, halo then magnitude, reg 234 + ft 234 (KD)",
            lambda d, t, s, seed: slimmer_row(
                d, t, s // 2, seed, sparsity=0.9, regularizer="halo", reg_steps=s - s // 2
            ),
        ),
    ],
    # issue 6: SR-STE against the same one-shot 2:4 mask held fixed, equal steps
    "nm": [
        (
            "slimmer 2:4, SR-STE fine-tune from the dense weights (KD)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, methods=("nm",)),
        ),
        (
            "slimmer 2:4, fixed one-shot mask fine-tune (KD)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, methods=("nm",), fixed_nm_mask=True),
        ),
        (
            "slimmer 1:4, SR-STE fine-tune from the dense weights (KD)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, methods=("nm",), nm="1:4"),
        ),
        (
            "slimmer 1:4, fixed one-shot mask fine-tune (KD)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, methods=("nm",), nm="1:4", fixed_nm_mask=True),
        ),
        (
            "slimmer 2:4, SR-STE fine-tune from the dense weights (KD 0.5, no augmentation)",
            lambda d, t, s, seed: slimmer_row(d, t, s, seed, methods=("nm",), augment=False, kd_weight=0.5),
        ),
        (
            "slimmer 2:4, fixed one-shot mask fine-tune (KD 0.5, no augmentation)",
            lambda d, t, s, seed: slimmer_row(
                d, t, s, seed, methods=("nm",), fixed_nm_mask=True, augment=False, kd_weight=0.5
            ),
        ),
    ],
}


def main() -> None:
    global LR
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="channel,u90,u97")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=468)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=LR, help="the learning rate of every row (slimmer and peers alike)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--match", default="", help="run only the methods whose label contains this text")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    LR = args.lr
    torch.set_num_threads(args.threads)
    data = load_data("fashion-mnist", SHAPE, FMNIST_MEAN, FMNIST_STD)
    test = (data.eval.x, data.eval.y)
    before = accuracy(base_model(), *test)
    for row in filter(None, args.rows.split(",")):  # --rows "" --write-docs: the table from the runs so far
        for label, fn in ROWS[row]:
            if args.match not in label:
                continue
            for seed in map(int, args.seeds.split(",")):
                t0 = time.time()
                result = fn(data, test, args.steps, seed)
                record = {
                    "row": row,
                    "label": label,
                    "seed": seed,
                    "steps": args.steps,
                    "lr": args.lr,
                    "before": before,
                    "seconds": round(time.time() - t0),
                    **result,
                }
                _common.append_jsonl(args.out, record)
                print(json.dumps(record), flush=True)
    if args.write_docs:
        write_docs(args.out, "`python " + shlex.join(sys.argv) + "`")


def write_docs(path: Path, command: str) -> None:
    rows = _common.read_jsonl(path)
    groups: dict[tuple[str, str, int], list[dict]] = {}
    order = {row: i for i, row in enumerate(ROWS)}
    for r in sorted(rows, key=lambda r: order.get(r["row"], len(order))):
        groups.setdefault((r["row"], r["label"], r["steps"], r.get("lr", 0.01)), []).append(r)
    lines = [
        "| row | method | MACs kept / sparsity | before | right after pruning | after fine-tuning (seeds) | "
        "mean drop |",
        "|---|---|---|---|---|---|---|",
    ]
    for (row, label, steps, lr), rs in groups.items():
        after = [r["after_finetune"] for r in rs]
        size = (
            f"{rs[0]['sparsity']:.3f} sparsity"
            if rs[0].get("sparsity") is not None
            else f"{rs[0]['macs_kept']:.3f} MACs"
        )
        budget = f"{steps} steps" if lr == 0.01 else f"{steps} steps, lr {lr:g}"
        start = f"{statistics.mean(r['after_prune'] for r in rs):.2%}"
        if all(r.get("after_reconstruct") is not None for r in rs):
            start += f" → {statistics.mean(r['after_reconstruct'] for r in rs):.2%} reconstructed"
        changed = [r.get("nm_mask_changed", r.get("mask_changed")) for r in rs]
        if all(c is not None for c in changed):
            label += f"; {statistics.mean(changed):.1%} of the mask changed"
        lines.append(
            f"| {row} ({budget}) | {label} | {size} | {rs[0]['before']:.2%} | {start} | "
            f"{' / '.join(f'{a:.2%}' for a in after)} | {100 * (rs[0]['before'] - statistics.mean(after)):.2f} |"
        )
    v = _common.versions()
    body = (
        f'Each row is the mean over its seeds of `python bench/accuracy.py --rows ROW --match "LABEL" '
        f"--seeds S [--lr LR] [--steps N]` (one run per seed, appended to bench/accuracy.jsonl); "
        f"the table was written by {command} ({_common.today()}; torch {v.get('torch')}, "
        f"torch-pruning {v.get('torch-pruning', 'n/a')}).\n\nTest split: 10,000 Fashion-MNIST images. "
        f"{THROUGH_API}\n\n" + "\n".join(lines)
    )
    _common.write_section("Accuracy", body)


if __name__ == "__main__":
    main()
