"""A pruning schedule as a strategy for the training loop (iterative, gradual, cyclical): the hook that
re-prunes to the schedule's sparsity while fine-tuning, and what its last masks make of the pruning result.

Recovery runs the hooks (:func:`schedule_hooks`) and never calls back into pruning; afterwards
:func:`schedule_outcome` turns the schedule's last masks into the :class:`~slimmer.prune.PruneResult`.
"""

from __future__ import annotations

from torch import nn

from slimmer.config import CompressConfig
from slimmer.graph.groups import GroupSet
from slimmer.prune import PruneResult, unstructured_masks_for
from slimmer.prune_channel import channel_plan
from slimmer.schedules import ScheduledMaskHook, build_schedule
from slimmer.structures.channel_masks import ChannelMasks
from slimmer.structures.plan import removed_per_layer
from slimmer.train.data import DataSplits


def schedule_hooks(
    config: CompressConfig, example: tuple, data: DataSplits | None, pruned: PruneResult
) -> tuple[ScheduledMaskHook, ...]:
    """The pruning strategy handed to the training loop: with a schedule (iterative, gradual,
    cyclical), a hook that re-prunes to the schedule's sparsity every ``steps // 50`` steps (channel
    masks for channel pruning: the channels go once, after fine-tuning). Empty without a schedule."""
    from slimmer.runplan import RunPlan

    if not RunPlan.resolve(config).scheduled:
        return ()
    if "channel" in config.methods:

        def recompute(m: nn.Module, fraction: float):
            return channel_masks_for(m, config, example, data, fraction, groups=pruned.groups)

    else:

        def recompute(m: nn.Module, fraction: float):
            return unstructured_masks_for(m, config, example, data, fraction)

    interval = max(1, config.finetune_steps // 50)
    return (ScheduledMaskHook(build_schedule(config.schedule, schedule_final(config), interval=interval), recompute),)


def schedule_outcome(
    hooks: tuple[ScheduledMaskHook, ...], pruned: PruneResult, config: CompressConfig
) -> tuple[PruneResult, dict]:
    """After fine-tuning: the schedule's last masks become the pruning result (a channel plan is then
    removed once by :func:`shrink_model`). Returns that result and the figures for the report's
    ``finetune``."""
    done: dict = {}
    for hook in hooks:
        if isinstance(hook.masks, ChannelMasks):
            plan = hook.masks.plan
            pruned = pruned.but(plan=plan, per_layer=hook.masks.per_layer_sparsity())
            if plan is not None:
                pruned = pruned.detail(channels_pruned=plan.channels_pruned)
            if config.macs_target is None:
                pruned = pruned.but(sparsity_achieved=hook.masks.sparsity)
            pruned = pruned.warn(*hook.warnings)
        elif hook.masks is not None:
            pruned = pruned.but(
                masks=hook.masks, sparsity_achieved=hook.masks.sparsity, per_layer=hook.masks.per_layer_sparsity()
            ).warn(*hook.warnings)
        done["schedule_updates"] = len(hook.updates)
    return pruned, done


def schedule_final(config: CompressConfig) -> float:
    """What a pruning schedule ramps to: the sparsity, or for channel pruning to a MACs target the
    fraction of MACs removed (``1 - --macs-target``)."""
    if "channel" in config.methods and config.macs_target is not None:
        return 1.0 - config.macs_target
    return config.target_sparsity


def channel_masks_for(
    model: nn.Module,
    config: CompressConfig,
    example: tuple,
    data: DataSplits | None,
    fraction: float,
    groups: GroupSet | None = None,
) -> ChannelMasks:
    """Channel pruning as masks for one update of a schedule at ``fraction`` of
    :func:`schedule_final` (nothing is removed; :func:`shrink_model` does that once at the end)."""
    if fraction <= 0:
        return ChannelMasks(None, {}, 0.0, {})
    by_macs = config.macs_target is not None
    plan, _, _, _ = channel_plan(
        model,
        config,
        example,
        data,
        sparsity=None if by_macs else fraction,
        macs_target=1.0 - fraction if by_macs else None,
        groups=groups,
    )
    return ChannelMasks.from_plan(plan, model, removed_per_layer(plan, model))
