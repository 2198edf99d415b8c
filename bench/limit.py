"""The predicted pruning limit (``slimmer inspect --limit``, Zhang et al. NeurIPS 2024) against the measured one.

On the bundled resnet20-fmnist checkpoint and Fashion-MNIST (needs ``apt-get install dataset-fashion-mnist``):

1. the prediction :func:`slimmer.limit.estimate_limit` on the 60k training split;
2. the measured limit without fine-tuning: global magnitude pruning (|w| over every Conv/Linear weight,
   one ranking, as the prediction assumes) at a coarse grid of ratios, then a fine grid between the
   last ratio that passes and the first that fails; "passes" = top-1 on the 10k test split ≥ dense − 0.5
   points; the measured limit is the largest ratio below which every grid ratio passes;
3. the measured limit after a brief fine-tune at the ratios ``--ft-ratios``: the same masks held fixed
   (MaskHook) through ``--steps`` optimizer steps of the fine-tuning loop with ``compress``'s defaults
   (SGD Nesterov lr 0.01 cosine, batch 128, weight decay 5e-4, distillation from the dense model with
   weight 0.5, T 4, no augmentation).

    python bench/limit.py --threads 1 --out bench/limit.jsonl

Prints a markdown table; each run appends one JSON line to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from slimmer.bundled import DEMO_WEIGHTS, bundled_file
from slimmer.limit import LimitConfig, estimate_limit
from slimmer.stats import accuracy
from slimmer.structures.unstructured import MaskSet, prunable_weights, unstructured_masks
from slimmer.train.data import load_data
from slimmer.train.finetune import FinetuneConfig, finetune
from slimmer.train.hooks import MaskHook
from slimmer.zoo import ARCHITECTURES, FMNIST_MEAN, FMNIST_STD

TOLERANCE = 0.005  # 0.5 accuracy points


def base_model() -> torch.nn.Module:
    model = ARCHITECTURES.get("resnet20-fmnist").build()
    model.load_state_dict(load_file(str(bundled_file(DEMO_WEIGHTS))))
    return model.eval()


def pruned(ratio: float) -> tuple[torch.nn.Module, MaskSet]:
    model = base_model()
    scores = {n: w.detach().abs() for n, w in prunable_weights(model).items()}
    masks = unstructured_masks(scores, ratio, scope="global")
    masks.apply(model)
    return model, masks


def measured_limit(results: dict[float, float], dense: float) -> float:
    """The largest ratio r such that every measured ratio ≤ r stays within the tolerance."""
    best = 0.0
    for ratio in sorted(results):
        if results[ratio] < dense - TOLERANCE:
            break
        best = ratio
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lanczos-steps", type=int, default=100)
    ap.add_argument("--probes", type=int, default=1)
    ap.add_argument("--hessian-samples", type=int, default=128)
    ap.add_argument("--loss-batches", type=int, default=200)
    ap.add_argument("--coarse", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.85,0.9,0.95,0.97,0.99")
    ap.add_argument("--fine-step", type=float, default=0.01)
    ap.add_argument("--ft-ratios", default="", help="ratios to fine-tune at (empty: none)")
    ap.add_argument("--steps", type=int, default=468)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-predict", action="store_true")
    ap.add_argument("--skip-oneshot", action="store_true", help="skip the one-shot sweep (fine-tune rows only)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "limit.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    command = "python bench/limit.py " + shlex.join(sys.argv[1:])
    data = load_data("fashion-mnist", (1, 1, 28, 28), FMNIST_MEAN, FMNIST_STD)
    test = (data.eval.x, data.eval.y)
    dense = accuracy(base_model(), *test)
    record: dict = {"command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes")}
    record["dense"] = dense
    print(f"dense accuracy {dense:.4f}", flush=True)

    if not args.skip_predict:
        cfg = LimitConfig(
            lanczos_steps=args.lanczos_steps,
            probes=args.probes,
            hessian_samples=args.hessian_samples,
            loss_batches=args.loss_batches,
            seed=args.seed,
        )
        t = time.perf_counter()
        res = estimate_limit(base_model(), data.train, cfg, progress=lambda m: print(m, flush=True))
        record["predict"] = {**res.to_dict(), "seconds": round(time.perf_counter() - t, 1)}
        record["predict"].pop("spectrum")
        print(f"predicted limit {res.limit:.4f}  ε {res.epsilon:.4g}  ({record['predict']['seconds']} s)", flush=True)
        for p in res.curve:  # printed now: a long run interrupted later keeps the curve in its log
            print(f"  ρ {p.ratio:.2f}  R {p.R:.4g}  gw {p.gw:.4f}", flush=True)
        print(
            f"  Tr(H)/D ≈ {res.spectrum.moment(1):.4g}, Ritz values {min(res.spectrum.nodes):.4g} … "
            f"{max(res.spectrum.nodes):.4g}",
            flush=True,
        )

    oneshot: dict[float, float] = {}

    def measure(ratio: float) -> None:
        ratio = round(ratio, 4)
        if ratio not in oneshot:
            oneshot[ratio] = accuracy(pruned(ratio)[0], *test)
            print(f"  one-shot {ratio:.2f}: {oneshot[ratio]:.4f}", flush=True)

    if not args.skip_oneshot:
        for r in map(float, args.coarse.split(",")):
            measure(r)
        coarse_limit = measured_limit(oneshot, dense)
        above = [r for r in sorted(oneshot) if r > coarse_limit]
        if above:
            r = coarse_limit + args.fine_step
            while r < above[0] - 1e-9:
                measure(r)
                r += args.fine_step
        record["oneshot"] = {str(k): v for k, v in sorted(oneshot.items())}
        record["oneshot_limit"] = measured_limit(oneshot, dense)
        print(f"measured one-shot limit {record['oneshot_limit']:.2f}", flush=True)

    tuned: dict[float, float] = {}
    for ratio in (float(r) for r in args.ft_ratios.split(",") if r):
        model, masks = pruned(ratio)
        cfg = FinetuneConfig(steps=args.steps, batch_size=128, lr=0.01, seed=args.seed, device="cpu")
        t = time.perf_counter()
        finetune(model, base_model(), data.train, cfg, [MaskHook(masks)])
        tuned[ratio] = accuracy(model, *test)
        print(f"  fine-tuned {ratio:.2f}: {tuned[ratio]:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
        record["finetuned"] = {str(k): v for k, v in sorted(tuned.items())}
        record["finetuned_limit"] = measured_limit(tuned, dense)
        with args.out.with_suffix(".partial.jsonl").open("a") as fh:  # survive an interrupted long run
            fh.write(json.dumps({"ratio": ratio, "accuracy": tuned[ratio], "command": command}) + "\n")
    with args.out.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "predict"}, indent=1))


if __name__ == "__main__":
    main()
