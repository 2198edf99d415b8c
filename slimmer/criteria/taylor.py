"""First-order Taylor importance (Molchanov, Mallya, Tyree, Frosio, Kautz, "Importance Estimation
for Neural Network Pruning", CVPR 2019).

The loss change from removing a weight is approximated to first order by ``g·w``; the paper's
importance is its square, ``(g·w)²``, accumulated over mini-batches. Unlike SNIP, the square is
taken per batch (so batches whose gradients cancel still add importance). BatchNorm runs in eval
mode; unlabelled batches use the model's argmax as labels. The caller's model is not modified.

For channel groups the paper squares the *sum* over a filter; :func:`slimmer.criteria.channel.
channel_scores_from` sums these per-weight squares instead (a documented deviation).
"""

from __future__ import annotations

import torch

from slimmer.criteria._scoring import weight_grads_per_batch
from slimmer.criteria.base import ScoreContext, register_criterion


@register_criterion("taylor", "grads", "first-order Taylor (g⊙w)² over batches (Molchanov et al., 2019)")
def score_taylor(weights: dict[str, torch.Tensor], ctx: ScoreContext) -> dict[str, torch.Tensor]:
    total = {n: torch.zeros_like(w, dtype=torch.float64) for n, w in weights.items()}
    for grads in weight_grads_per_batch(ctx, "taylor", weights):
        for n, g in grads.items():
            total[n] += (g.double() * weights[n].detach().double()).square()
    return {n: t.float() for n, t in total.items()}
