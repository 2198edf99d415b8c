"""Layer folding: fold BatchNorm, linearize activations, merge consecutive linear layers.

The passes follow Layer Folding (Ben Dror et al., "Layer Folding: Neural Network Depth Reduction
using Activation Linearization", BMVC 2022, arXiv 2106.09309):

1. :func:`fold_batchnorm` — BN into the Conv/Linear before it (exact).
2. :func:`insert_linearizable` + :class:`FoldingPenaltyHook` — fine-tune σ_α = αx + (1−α)act(x)
   with λ·Σ|1−α²|; :func:`finalize_activations` turns α ≥ 0.9 into the identity.
3. :func:`merge_model` — merge the Conv→Conv / Linear→Linear pairs left adjacent
   (:func:`merge_convs`, :func:`merge_linears`, :func:`merge_residual` for a single pair).
4. :mod:`slimmer.folding.phase` — the whole procedure inside ``compress`` (``--method fold`` with
   fine-tuning): choose and wrap activations, learn α, fold, merge through a measured latency gate.
"""

from slimmer.folding.batchnorm import FoldResult, fold_batchnorm, fold_bn_into
from slimmer.folding.chain import MergeReport, layer_depth, merge_model
from slimmer.folding.linearize import (
    FoldingPenaltyHook,
    LinearizableActivation,
    finalize_activations,
    folding_penalty,
    functional_activations,
    insert_linearizable,
)
from slimmer.folding.merge import (
    MergeRefused,
    add_identity,
    merge_convs,
    merge_linears,
    merge_refusal,
    merge_residual,
)

__all__ = [
    "FoldResult",
    "FoldingPenaltyHook",
    "LinearizableActivation",
    "MergeRefused",
    "MergeReport",
    "add_identity",
    "finalize_activations",
    "fold_batchnorm",
    "fold_bn_into",
    "folding_penalty",
    "functional_activations",
    "insert_linearizable",
    "layer_depth",
    "merge_convs",
    "merge_linears",
    "merge_model",
    "merge_refusal",
    "merge_residual",
]
