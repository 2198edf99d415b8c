"""LAMP: Layer-Adaptive Magnitude-based Pruning (Lee, Park, Mo, Ahn, Shin, ICLR 2021).

Within a tensor sorted ascending by |w| (index u), ``LAMP(u) = w[u]² / Σ_{v≥u} w[v]²``. One global
threshold on these scores then sets every layer's sparsity; since the largest weight of each tensor
scores exactly 1, no layer is ever emptied.
"""

from __future__ import annotations

import torch

from slimmer.criteria.base import ScoreContext, register_criterion


def lamp_scores(w: torch.Tensor) -> torch.Tensor:
    """LAMP scores of one tensor, same shape as ``w`` (float64 sums, so long tails do not round off)."""
    sq = w.detach().double().flatten() ** 2
    order = torch.argsort(sq, stable=True)
    sorted_sq = sq[order]
    # suffix sums: Σ_{v≥u} w[v]²
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])
    scores_sorted = torch.where(suffix > 0, sorted_sq / suffix.clamp_min(1e-300), torch.zeros_like(suffix))
    scores = torch.empty_like(scores_sorted)
    scores[order] = scores_sorted
    return scores.view(w.shape).float()


@register_criterion("lamp", "none", "LAMP: w² over the sum of larger w², layer-adaptive (never empties a layer)")
def score_lamp(weights: dict[str, torch.Tensor], ctx: ScoreContext) -> dict[str, torch.Tensor]:
    return {name: lamp_scores(w) for name, w in weights.items()}
