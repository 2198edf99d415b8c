"""``--method search``: TAS width-and-depth search inside ``compress``.

Dong and Yang, "Network Pruning via Transformable Architecture Search", NeurIPS 2019. The search
(:func:`slimmer.structures.search.search_plan`) runs bi-level on two halves of the training split of
``--data`` (weights on one, architecture on the other), ``--search-steps`` steps, under
``--macs-target``. Its argmax widths become a :class:`~slimmer.structures.plan.PruningPlan` that
the existing channel surgery removes; its dropped residual blocks are removed afterwards on the
physically pruned model (:func:`drop_searched_blocks`), checked equal to the model with those
branches' outputs zeroed. The paper's transfer, distillation from the unpruned network with
α = 0.9 and T = 4, is the existing fine-tuning: T is the loop's default and ``--kd-weight``
defaults to 0.9 for this method (:attr:`~slimmer.stage_config.RecoverConfig.distillation_weight`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimmer.config import CompressConfig
from slimmer.errors import ConfigError
from slimmer.graph.groups import build_groups
from slimmer.inputs import as_args, batch_of, fresh
from slimmer.outputs import named_leaves
from slimmer.structures.depth import drop_blocks, find_stages, masked_original
from slimmer.structures.plan import removed_per_layer
from slimmer.structures.search import SearchConfig, search_plan
from slimmer.surgery import mask_model
from slimmer.train.data import DataSplits

SEARCH_CRITERIA = {"magnitude": "l1", "l1": "l1", "l2": "l2", "bn-scale": "bn-scale", "random": "random"}
HISTORY_KEPT = 20  # search steps recorded in the report (evenly spaced, the last included)


def halves(data: DataSplits, batch_size: int, seed: int) -> tuple[list, list]:
    """The training split shuffled with ``seed`` and cut in two halves of (x, y) batches: the weights'
    and the architecture's. Raises :class:`ConfigError` without labels or with fewer than 2 samples."""
    train = data.train
    if train.y is None:
        raise ConfigError(
            "--method search needs labelled --data: the architecture is trained on the cross-entropy of a "
            "held-out half",
            hint="give --data with labels (an .npz with x and y, an IDX folder, or fashion-mnist)",
        )
    if len(train) < 2:
        raise ConfigError("--method search needs at least 2 labelled training samples in --data")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    size = max(1, min(batch_size, len(train) // 2))
    half = len(train) // 2
    out = []
    for part in (order[:half], order[half:]):
        out.append([(train.x[idx], train.y[idx]) for idx in part.split(size)])
    return out[0], out[1]


def search(model: nn.Module, config: CompressConfig, example: tuple, data: DataSplits | None, result) -> Any:
    """The ``search`` MethodHandler: search, then mask the searched channels in place. Returns ``result``
    (a :class:`~slimmer.prune.PruneResult`) with the plan; the dropped blocks are named in
    ``details["search"]["dropped"]``."""
    if data is None:
        raise ConfigError("--method search trains on --data: pass labelled data")
    given = config.stages.prune.criterion
    criterion = SEARCH_CRITERIA.get(given)
    if criterion is None:
        raise ConfigError(
            f"--method search orders channels by {', '.join(SEARCH_CRITERIA)}, not --criterion {given}",
            hint="drop --criterion (magnitude: the L1 norm of each channel)",
        )
    train, val = halves(data, config.batch_size, config.seed)
    args = as_args(example)
    one = batch_of(args, 1)  # MACs at batch 1, as in the report
    groups = build_groups(model, args)
    scfg = SearchConfig(
        macs_target=config.macs_target,
        steps=config.search_steps,
        round_to=config.round_to or 1,
        criterion=criterion,
        weight_lr=config.stages.recover.phase_lr,
        seed=config.seed,
        output_name=config.output_name,
    )
    plan, found = search_plan(model, one, groups, train, val, scfg)
    mask_model(model, plan)
    result = result.but(plan=plan, groups=groups, per_layer=removed_per_layer(plan, model))
    result = result.warn(*(n for n in plan.notes if n.startswith("MACs target")))  # the others: details["search"]
    record = found.to_dict()
    history = record.pop("history")
    every = max(1, len(history) // HISTORY_KEPT)
    record["history"] = history[every - 1 :: every][-HISTORY_KEPT:]
    return result.but(
        details={
            "criterion": criterion,
            "round_to": scfg.round_to,
            "macs_target": scfg.macs_target,
            "channels_total": plan.channels_total,
            "channels_pruned": plan.channels_pruned,
            "search": {
                "steps": scfg.steps,
                "train_batches": len(train),
                "val_batches": len(val),
                "notes": list(plan.notes),
                **record,
            },
        }
    )


def drop_searched_blocks(model: nn.Module, config: CompressConfig, example: tuple, result) -> Any:
    """After channel surgery: remove the searched-away residual branches and check the result equals
    the model with their outputs zeroed. Returns ``result`` with ``model`` set to the torch.fx
    GraphModule without them (``result`` unchanged when no block was dropped).

    Raises RuntimeError (a bug) when a recorded block is not found again or the check fails."""
    names = [b["add"] for b in result.details.get("search", {}).get("dropped", [])]
    if not names:
        return result
    args = as_args(example)
    stages, why = find_stages(model, args)
    by_name = {b.add: b for s in stages for b in s.blocks}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise RuntimeError(f"searched blocks {missing} not found after channel surgery ({why or 'graph changed'})")
    blocks = [by_name[n] for n in names]
    was = model.training
    pruned, reference = drop_blocks(model, blocks), masked_original(model, blocks)
    pruned.eval(), reference.eval()
    try:
        with torch.no_grad():
            got, want = pruned(*fresh(args)), reference(*fresh(args))
    finally:
        pruned.train(was), reference.train(was)
    diff, scale = 0.0, 0.0
    for (_, a), (_, b) in zip(named_leaves(got), named_leaves(want), strict=True):
        diff = max(diff, float((a - b).abs().max()))
        scale = max(scale, float(b.abs().max()))
    if diff > 1e-5 * max(1.0, scale):
        raise RuntimeError(f"dropping residual blocks changed the output by {diff:g} against the masked model")
    surgery = {"blocks_dropped": len(blocks), "max_abs_diff": diff}
    return result.but(model=pruned).detail(search={**result.details["search"], "depth_surgery": surgery})
