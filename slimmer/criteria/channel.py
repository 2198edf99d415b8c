"""Channel scores from per-weight scores: any unstructured criterion can rank channel groups.

A channel of a :class:`~slimmer.graph.groups.ChannelGroup` is as important as the sum of its
weights' scores over every member slice of the group (producer rows, consumer columns, every
coupled branch), in the spirit of DepGraph (Fang et al., CVPR 2023). Not from the SNIP, GraSP or
SynFlow papers, which score single weights (see ALGORITHMS.md §15).
"""

from __future__ import annotations

import torch

from slimmer.errors import ConfigError
from slimmer.graph.groups import ChannelGroup


def channel_scores_from(weight_scores: dict[str, torch.Tensor], group: ChannelGroup) -> torch.Tensor:
    """Per-channel scores of ``group`` (float64, length ``group.channels``).

    Members whose tensor has no scores (BatchNorm parameters, biases, unscored layers) are skipped;
    a group with no scored member at all raises :class:`ConfigError` naming it.
    """
    total = torch.zeros(group.channels, dtype=torch.float64)
    found = False
    for member in group.members:
        scores = weight_scores.get(member.name)
        if scores is None:
            continue
        found = True
        values = scores.detach().double().cpu().movedim(member.dim, 0)
        per_index = values.reshape(scores.shape[member.dim], -1).sum(1)
        positions = [i for idx in member.indices for i in idx]
        channels = [j for j, idx in enumerate(member.indices) for _ in idx]
        picked = per_index[torch.tensor(positions, dtype=torch.long)]
        total.index_add_(0, torch.tensor(channels, dtype=torch.long), picked)
    if not found:
        raise ConfigError(f"group {group.id!r} has no scored tensor, so it cannot be ranked")
    return total
