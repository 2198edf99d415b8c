"""Probes of the fine-tuning recipe behind docs/BENCHMARKS.md "Accuracy: reading".

Each probe changes one thing that ``slimmer compress`` does not expose as an option and runs one
target through ``bench/accuracy.py``'s ``slimmer_row`` (same model, data, budget and evaluation).
They answer "would a different recipe close the gap?", so the results go into the reading, not
into the table of methods.

Probes (``--probe``):

- ``none``: the target as ``slimmer_row`` runs it: ``compress``'s recipe, with pad-crop-flip
  augmentation (the default until 2026-11-30, which the earlier probes compare against);
- ``kd-alpha=A``: the weight of the distillation term (``FinetuneConfig.kd_alpha``; 0.9 in these rows);
- ``weight-decay=D``: the loop's weight decay (5e-4 by default);
- ``ema=D``: the weights (and BatchNorm statistics) at the end are an exponential moving average
  of the fine-tuning trajectory with decay ``D`` instead of the last step's;
- ``kd-temp=T``: the distillation temperature (``FinetuneConfig.kd_temperature``, 4 by default);
- ``no-augment``: fine-tuning on the training images as they are (``compress``'s default since);
- ``augment-pad=P``: pad-crop by ``P`` pixels and flip (``compress`` pads by a side // 8, 3 here;
  ``P`` = 0 flips only);
- ``bn-before``: BatchNorm statistics re-estimated on 20 clean training batches before fine-tuning
  (``compress`` does this only after channel surgery);
- ``bn-after``: the same on 100 clean batches after fine-tuning (fine-tuning sees augmented images);
- ``srste-decay=L``: SR-STE's λ_w (2e-4 by default, Zhou et al. 2021);
- ``scratch``: the target from a random initialization (seeded by ``--seeds``) with labels only,
  the SR-STE paper's protocol; use a higher ``--lr``.

Probes combine with ``+`` (``--probe no-augment+kd-alpha=1``).

Targets (``--target``): ``channel`` (half the MACs, l2, round_to 4), ``u90`` (90% LAMP),
``u90-regrow`` / ``u90-reconstruct`` (the same with ``--regrow`` / ``--reconstruct``), ``nm`` (2:4
SR-STE), ``nm-fixed`` (2:4, mask held), ``channel-nm`` / ``channel-nm-fixed`` (2:4 on top of half
the MACs, as ``--method channel,nm``), ``floor`` (nothing pruned); ``--no-kd`` trains on labels only.

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
from slimmer.train.data import load_data, pad_crop_flip  # noqa: E402
from slimmer.train.finetune import recalibrate_bn  # noqa: E402
from slimmer.train.hooks import TrainHook  # noqa: E402
from slimmer.zoo import ARCHITECTURES, FMNIST_MEAN, FMNIST_STD  # noqa: E402

OUT = Path(__file__).resolve().parent / "accuracy_probes.jsonl"
TARGETS = {
    "channel": dict(methods=("channel",), macs_target=0.5, round_to=4, criterion="l2"),
    "u90": dict(sparsity=0.9, criterion="lamp"),
    "u90-regrow": dict(sparsity=0.9, criterion="lamp", regrow=True),
    "u90-reconstruct": dict(sparsity=0.9, criterion="lamp", reconstruct=True),
    "nm": dict(methods=("nm",)),
    "nm-fixed": dict(methods=("nm",), fixed_nm_mask=True),
    "floor": dict(sparsity=0.0),
    "channel-nm": dict(methods=("channel", "nm"), macs_target=0.5, round_to=4, criterion="l2"),
    "channel-nm-fixed": dict(
        methods=("channel", "nm"), macs_target=0.5, round_to=4, criterion="l2", fixed_nm_mask=True
    ),
}


def probe_context(probe: str, seed: int, notes: dict) -> contextlib.AbstractContextManager:
    """The patch that makes ``slimmer_row`` run ``probe``; ``notes`` collects what the probe saw."""
    kind, _, value = probe.partition("=")
    if kind == "none":
        return contextlib.nullcontext()
    if kind in ("kd-alpha", "kd-temp", "no-augment", "augment-pad", "weight-decay"):
        build = recover_module.FinetuneConfig

        def changed(**kw):
            if kind == "no-augment":
                kw["augment"] = None
            elif kind == "augment-pad":
                kw["augment"] = pad_crop_flip(pad=int(value))
            elif kind == "weight-decay":
                kw["weight_decay"] = float(value)
            elif kw.get("kd_alpha", 0) > 0:  # distilling at all (not --no-kd)
                kw["kd_alpha" if kind == "kd-alpha" else "kd_temperature"] = float(value)
            return build(**kw)

        return patch.object(recover_module, "FinetuneConfig", changed)
    if kind == "ema":
        hooks_for = recover_module._hooks

        class Averaged(TrainHook):
            def on_start(self, model, total_steps):
                self.avg = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

            def after_step(self, model, step):
                with torch.no_grad():
                    for k, v in model.state_dict().items():
                        if k in self.avg:
                            self.avg[k].lerp_(v, 1.0 - float(value))

            def on_end(self, model):
                model.load_state_dict({**model.state_dict(), **self.avg})

        def with_ema(*args, **kw):
            return [*hooks_for(*args, **kw), Averaged()]  # last: it averages what the masks left

        return patch.object(recover_module, "_hooks", with_ema)
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
        with contextlib.ExitStack() as stack:
            for part in args.probe.split("+"):  # entered in turn, so each patch wraps the ones before
                stack.enter_context(probe_context(part, seed, notes))
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
