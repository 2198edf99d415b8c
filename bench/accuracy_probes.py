"""Probes of the fine-tuning recipe behind docs/BENCHMARKS.md "Accuracy: reading".

Each probe changes one thing that ``slimmer compress`` does not expose as an option and runs one
target through ``bench/accuracy.py``'s ``slimmer_row`` (same model, data, budget and evaluation).
They answer "would a different recipe close the gap?", so the results go into the reading, not
into the table of methods.

Probes (``--probe``):

- ``none``: the target as ``compress`` runs it;
- ``kd-alpha=A``: the weight of the distillation term (``FinetuneConfig.kd_alpha``, 0.9 by default);
- ``bn-before``: BatchNorm statistics re-estimated on 20 clean training batches before fine-tuning
  (``compress`` does this only after channel surgery);
- ``bn-after``: the same on 100 clean batches after fine-tuning (fine-tuning sees augmented images);
- ``srste-decay=L``: SR-STE's λ_w (2e-4 by default, Zhou et al. 2021);
- ``scratch``: the target from a random initialization (seeded by ``--seeds``) with labels only,
  the SR-STE paper's protocol; use a higher ``--lr``.

Targets (``--target``): ``channel`` (half the MACs, l2, round_to 4), ``u90`` (90% LAMP), ``nm`` (2:4
SR-STE), ``nm-fixed`` (2:4, mask held), ``floor`` (nothing pruned); ``--no-kd`` trains on labels only.

    python bench/accuracy_probes.py --probe srste-decay=0.5 --target nm --seeds 0,1

Appends one JSON line per run to ``bench/accuracy_probes.jsonl`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from unittest.mock import patch

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402

import slimmer.recover as recover_module  # noqa: E402
from slimmer.train.data import load_data  # noqa: E402
from slimmer.train.finetune import recalibrate_bn  # noqa: E402
from slimmer.zoo import ARCHITECTURES, FMNIST_MEAN, FMNIST_STD  # noqa: E402

OUT = Path(__file__).resolve().parent / "accuracy_probes.jsonl"
TARGETS = {
    "channel": dict(methods=("channel",), macs_target=0.5, round_to=4, criterion="l2"),
    "u90": dict(sparsity=0.9, criterion="lamp"),
    "nm": dict(methods=("nm",)),
    "nm-fixed": dict(methods=("nm",), fixed_nm_mask=True),
    "floor": dict(sparsity=0.0),
}


def probe_context(probe: str, seed: int, notes: dict) -> contextlib.AbstractContextManager:
    """The patch that makes ``slimmer_row`` run ``probe``; ``notes`` collects what the probe saw."""
    kind, _, value = probe.partition("=")
    if kind == "none":
        return contextlib.nullcontext()
    if kind == "kd-alpha":
        build = recover_module.FinetuneConfig

        def with_alpha(**kw):
            if kw.get("kd_alpha", 0) > 0:  # distilling at all (not --no-kd)
                kw["kd_alpha"] = float(value)
            return build(**kw)

        return patch.object(recover_module, "FinetuneConfig", with_alpha)
    if kind == "srste-decay":

        class Decayed(recover_module.SRSTEHook):
            def __init__(self, names, mask_fn, decay: float = 0.0) -> None:
                super().__init__(names, mask_fn, decay=float(value))

        return patch.object(recover_module, "SRSTEHook", Decayed)
    if kind in ("bn-before", "bn-after"):
        run = accuracy.recover

        def with_bn(model, teacher, config, example, data, pruned, say, evaluate):
            if kind == "bn-before":
                recalibrate_bn(model, data.train, batches=20, seed=config.seed)
                notes["after_bn_before"] = evaluate(model)
            done = run(model, teacher, config, example, data, pruned, say, evaluate)
            if kind == "bn-after":
                final = pruned.model if pruned.model is not None else model
                notes["before_bn_after"] = evaluate(final)
                recalibrate_bn(final, data.train, batches=100, seed=config.seed + 1)
            return done

        return patch.object(accuracy, "recover", with_bn)
    if kind == "scratch":

        def random_model() -> torch.nn.Module:
            torch.manual_seed(1000 + seed)
            return ARCHITECTURES.get("resnet20-fmnist").build().eval()

        return patch.object(accuracy, "base_model", random_model)
    raise SystemExit(f"unknown probe {probe!r}: see --help")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", default="none")
    ap.add_argument("--target", choices=sorted(TARGETS), required=True)
    ap.add_argument("--no-kd", action="store_true", help="labels only (no distillation from the original)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=468)
    ap.add_argument("--lr", type=float, default=accuracy.LR)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    accuracy.LR = args.lr
    data = load_data("fashion-mnist", accuracy.SHAPE, FMNIST_MEAN, FMNIST_STD)
    test = (data.eval.x, data.eval.y)
    opts = dict(TARGETS[args.target], **({"kd": False} if args.no_kd else {}))
    for seed in [int(s) for s in args.seeds.split(",")]:
        notes: dict = {}
        start = time.time()
        with probe_context(args.probe, seed, notes):
            result = accuracy.slimmer_row(data, test, args.steps, seed, **opts)
        row = {
            "probe": args.probe,
            "target": args.target + (" (labels only)" if args.no_kd else ""),
            "seed": seed,
            "steps": args.steps,
            "lr": args.lr,
            "seconds": round(time.time() - start),
            **notes,
            **result,
        }
        print(json.dumps(row), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
