"""Random: uniform scores from the run's seed, the baseline every criterion must beat."""

from __future__ import annotations

import torch

from slimmer.criteria.base import ScoreContext, register_criterion


@register_criterion("random", "none", "seeded uniform random scores (a baseline)")
def score_random(weights: dict[str, torch.Tensor], ctx: ScoreContext) -> dict[str, torch.Tensor]:
    gen = ctx.generator()
    return {name: torch.rand(w.shape, generator=gen) for name, w in sorted(weights.items())}
