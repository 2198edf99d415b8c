"""Magnitude: a weight's importance is its absolute value (Han et al., "Learning both Weights and
Connections for Efficient Neural Networks", NeurIPS 2015)."""

from __future__ import annotations

import torch

from slimmer.criteria.base import ScoreContext, register_criterion


@register_criterion("magnitude", "none", "|w|: smallest weights pruned first")
def score_magnitude(weights: dict[str, torch.Tensor], ctx: ScoreContext) -> dict[str, torch.Tensor]:
    return {name: w.detach().abs().float() for name, w in weights.items()}
