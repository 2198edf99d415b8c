"""The ``channel`` method of the pruning stage: which channels to remove (a :class:`PruningPlan`), and
their masking in place until surgery (:func:`slimmer.prune.shrink_model`) removes them.

:func:`channel_plan` ranks channels by the configured criterion (a channel criterion, or any weight
criterion summed per channel group) and plans to a channel sparsity, a MACs target or, with
``--speedup``, a measured onnxruntime speedup; :func:`channel_method` is the registered handler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from slimmer.config import CompressConfig
from slimmer.criteria import CRITERIA, get_criterion
from slimmer.criteria.channel import channel_scores_from
from slimmer.errors import ConfigError
from slimmer.graph.attention import select_parts
from slimmer.graph.blockers import blockers, by_design, nothing_prunable_message
from slimmer.graph.groups import GroupSet, build_groups
from slimmer.inputs import as_args, batch_of
from slimmer.prune_result import PruneResult
from slimmer.prune_scores import score_context
from slimmer.registry import did_you_mean
from slimmer.structures.channel import plan_channels
from slimmer.structures.plan import PruningPlan, removed_per_layer
from slimmer.structures.rounding import describe as describe_rounding
from slimmer.structures.unstructured import prunable_weights
from slimmer.surgery import mask_model, slice_values
from slimmer.train.data import DataSplits

CHANNEL_CRITERIA = {"magnitude": "l1", "l1": "l1", "l2": "l2", "bn-scale": "bn-scale", "random": "random"}
DEFAULT_MAX_RATIO = 0.9
# Kept channel counts are rounded relative to each layer's width by default (structures/rounding.py:
# multiples of 16 from 64 channels up, 8 for 32-63, 4 for 16-31). Wide layers get the 16 that keeps
# onnxruntime on its fast kernels (docs/BENCHMARKS.md, Latency: round_to 1 made mobilenet_v2 and
# efficientnet_b0 slower than unpruned); on the torchvision models with narrower layers the relative
# rule measured within noise of the fixed 16, and on the model set's narrow nets it keeps more
# accuracy after fine-tuning (docs/BENCHMARKS.md, "Rounding relative to the layer width" and
# "Accuracy on the model set"). --round-to 16 gives the fixed rounding back.
DEFAULT_ROUND_TO = "relative"


def channel_plan(
    model: nn.Module,
    config: CompressConfig,
    example: tuple,
    data: DataSplits | None,
    *,
    sparsity: float | None,
    macs_target: float | None,
    groups: GroupSet | None = None,
) -> tuple[PruningPlan, GroupSet, str, Any]:
    """``(plan, groups, criterion, speedup search or None)``: which channels to remove, by the
    configured criterion, to ``sparsity`` (channel fraction) or ``macs_target`` (MACs kept).

    Used once for one-shot pruning and at every update of a pruning schedule; nothing is zeroed.
    """
    name = config.stages.prune.criterion
    kind = CHANNEL_CRITERIA.get(name)
    channel_scores = None
    groups = build_groups(model, as_args(example)) if groups is None else groups
    if kind is None:  # a weight criterion (lamp, snip, taylor, synflow, ...): its scores summed per group
        if name not in CRITERIA or name in ("bn-scale",):
            known = sorted(set(CHANNEL_CRITERIA) | set(CRITERIA.names()))
            raise ConfigError(
                f"--criterion {name} cannot rank channels.{did_you_mean(name, known)} Known: {', '.join(known)}"
            )
        crit = get_criterion(name)
        if crit.needs != "none" and (data is None or not len(data.train)):
            raise ConfigError(f"--criterion {crit.name} needs --data (it scores weights on training batches)")
        ctx = score_context(model, config, example, data)
        ctx.extra["groups"] = groups  # a group-aware criterion (head-importance) gates whole channels
        weight_scores = crit.score(dict(prunable_weights(model)), ctx)
        kind = crit.name

        def channel_scores(group):
            return channel_scores_from(weight_scores, group)

    example = as_args(example)
    groups = select_parts(groups, config.prune_parts)  # --prune heads,ffn
    if not groups.prunable:
        raise ConfigError(
            nothing_prunable_message(blockers(groups, model, batch_of(example, 1))),
            hint="run `slimmer inspect` to see what blocks each layer, or use --method unstructured",
        )
    round_to = config.round_to or DEFAULT_ROUND_TO
    if config.speedup is not None:
        speedup = _plan_for_speedup(model, groups, config, example, round_to, kind, channel_scores)
        return speedup.plan, groups, kind, speedup
    plan = plan_channels(
        groups,
        model,
        sparsity=sparsity,
        macs_target=macs_target,
        round_to=round_to,
        max_ratio=DEFAULT_MAX_RATIO,
        scope=config.scope,
        criterion=kind,
        example_inputs=batch_of(example, 1),  # MACs at batch 1, as in the report
        seed=config.seed,
        channel_scores=channel_scores,
        latency_aware=config.latency_aware,
        latency_costs=config.stages.prune.latency_constants,
    )
    return plan, groups, kind, None


def channel_method(
    model: nn.Module, config: CompressConfig, example: tuple, data: DataSplits | None, result: PruneResult
) -> PruneResult:
    plan, groups, kind, speedup = channel_plan(
        model,
        config,
        example,
        data,
        sparsity=None if config.macs_target is not None else config.target_sparsity,
        macs_target=config.macs_target,
    )
    round_to = config.round_to or DEFAULT_ROUND_TO
    latency_aware = config.latency_aware or config.speedup is not None
    masked_values = slice_values(model, plan)  # a group the surgery rolls back gets these back
    mask_model(model, plan)
    found = blockers(groups, model, batch_of(example, 1))  # largest first
    result = result.but(plan=plan, groups=groups, per_layer=removed_per_layer(plan, model), masked_values=masked_values)
    result = result.warn(*plan.notes, *(f"not pruned: {b.describe()}" for b in found if not by_design(b)))
    if config.macs_target is None and speedup is None:
        result = result.but(
            sparsity_requested=config.target_sparsity,
            sparsity_achieved=plan.channels_pruned / max(1, plan.channels_total),
        )
    details = {
        "criterion": kind,
        "groups": len(groups.groups),
        "prunable_groups": len(groups.prunable),
        "blocked_groups": len(groups.blocked),
        "round_to": round_to,
        "round_to_multiples": describe_rounding(groups.prunable, round_to),  # multiple → prunable groups
        "channels_total": plan.channels_total,
        "channels_pruned": plan.channels_pruned,
        "macs_target": config.macs_target,
        "latency_aware": latency_aware,
        "latency_costs": config.stages.prune.latency_constants.to_dict() if latency_aware else None,
        "blocked": [b.as_dict() for b in found],
    }
    if speedup is not None:
        details["speedup"] = {
            "requested": config.speedup,
            "measured": speedup.speedup,
            "reached": speedup.reached,
            "trials": [t.__dict__ for t in speedup.trials],
        }
    return result.but(details=details)


def _plan_for_speedup(model, groups, config, example, round_to, kind, channel_scores):
    """Plan channels until onnxruntime measures ``config.speedup`` (trial exports in a temp dir)."""
    import tempfile

    from slimmer.structures.speedup import onnx_speedup, plan_for_speedup

    if len(example) != 1 or not example[0].is_floating_point():
        raise ConfigError("--speedup times onnxruntime on one float input; this model takes other inputs")
    one = example[0][:1]
    with tempfile.TemporaryDirectory(prefix="slimmer-speedup-") as tmp:
        return plan_for_speedup(
            groups,
            model,
            config.speedup,
            batch_of(example, 1),  # MACs at batch 1, as in the report
            onnx_speedup(model, one, workdir=Path(tmp)),
            round_to=round_to,
            max_ratio=DEFAULT_MAX_RATIO,
            criterion=kind,
            seed=config.seed,
            channel_scores=channel_scores,
            latency_costs=config.stages.prune.latency_constants,
        )
