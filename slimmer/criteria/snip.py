"""SNIP: connection sensitivity (Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on
Connection Sensitivity", ICLR 2019).

A connection's importance is the loss sensitivity to a multiplicative gate ``c`` on it, taken at
``c = 1``: ``|∂L(c⊙w)/∂c| = |g ⊙ w|``. As in the SynFlow re-implementation (Tanaka et al. 2020),
the gradients are summed over a few batches (``ctx.extra["max_batches"]``, default 10) before the
absolute value, and BatchNorm runs in eval mode. Weights already pruned (zero) score 0.

Batches without labels are labelled with the model's own argmax prediction, so the loss is the
cross-entropy against what the model currently predicts. The caller's model is not modified.
"""

from __future__ import annotations

import torch

from slimmer.criteria._scoring import weight_grads_per_batch
from slimmer.criteria.base import ScoreContext, register_criterion


@register_criterion("snip", "grads", "SNIP |g⊙w| summed over a few batches (Lee et al., ICLR 2019)")
def score_snip(weights: dict[str, torch.Tensor], ctx: ScoreContext) -> dict[str, torch.Tensor]:
    total = {n: torch.zeros_like(w, dtype=torch.float64) for n, w in weights.items()}
    for grads in weight_grads_per_batch(ctx, "snip", weights):
        for n, g in grads.items():
            total[n] += g.double()
    return {n: (total[n] * weights[n].detach().double()).abs().float() for n in weights}
