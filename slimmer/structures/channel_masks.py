"""Channel pruning held as masks, for pruning schedules: physical removal happens once, at the end.

A schedule (gradual, iterative, cyclical) changes what is pruned many times during fine-tuning.
Removing channels at each update would rebuild the model and the optimizer every time and forbid
a cyclical schedule from bringing channels back; instead every update zeroes every parameter slice
of the plan's pruned channels (producer rows, BatchNorm γ and β, consumer columns) and the
fine-tuning loop keeps them at zero (:class:`~slimmer.train.hooks.MaskHook`). A zeroed channel
outputs exactly zero, so removing it after the last update (:func:`~slimmer.prune.shrink_model`)
leaves the outputs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from slimmer.structures.plan import PruningPlan


@dataclass
class ChannelMasks:
    """The masks of one channel plan over the model's parameters (``plan`` None: nothing pruned)."""

    plan: PruningPlan | None
    masks: dict[str, torch.Tensor]
    channel_fraction: float
    per_layer: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_plan(cls, plan: PruningPlan, model: nn.Module, per_layer: dict[str, float]) -> ChannelMasks:
        params = dict(model.named_parameters(remove_duplicate=False))
        masks: dict[str, torch.Tensor] = {}
        for name, dims in plan.removals().items():
            if name not in params:  # buffers (BN running stats): a zeroed channel's γ and β silence them
                continue
            mask = masks.setdefault(name, torch.ones_like(params[name], dtype=torch.bool))
            for dim, indices in dims.items():
                index = torch.tensor(sorted(indices), dtype=torch.long, device=mask.device)
                mask.index_fill_(dim, index, False)
        fraction = plan.channels_pruned / max(1, plan.channels_total)
        return cls(plan, masks, fraction, per_layer, list(plan.notes))

    @property
    def sparsity(self) -> float:
        """The fraction of prunable channels pruned (what a schedule's step reports)."""
        return self.channel_fraction

    def per_layer_sparsity(self) -> dict[str, float]:
        return dict(self.per_layer)
