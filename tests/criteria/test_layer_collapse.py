"""Layer collapse at 99% and 99.9% global sparsity with no safety net (min_keep=0) on the bundled
resnet20-fmnist.

LAMP never empties a layer (each tensor's largest weight scores 1). SynFlow guarantees the network
stays connected, not that every tensor keeps a weight: at 99.9% it removes whole residual branches
(both convs of a block whose identity shortcut still carries the flow). So for SynFlow we assert
no empty layer at 99%, and at 99.9% that only bypassable branches empty and input still reaches
output.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimmer.criteria import ScoreContext, get_criterion
from slimmer.structures.unstructured import MaskSet, prunable_weights, unstructured_masks


def prune(model: nn.Module, criterion: str, sparsity: float) -> MaskSet:
    weights = dict(prunable_weights(model))
    ctx = ScoreContext(model, extra={"sparsity": sparsity, "input_shape": (1, 1, 28, 28)})
    masks = unstructured_masks(get_criterion(criterion).score(weights, ctx), sparsity, min_keep=0)
    assert masks.pruned == round(sparsity * masks.total)
    return masks


def path_flow(model: nn.Module, masks: MaskSet) -> float:
    """1ᵀ(∏|W⊙M|)1 with every bias and BN shift removed: > 0 iff some input-output path survives."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(p.abs() * masks.masks[name]) if name in masks.masks else p.abs_()
            if name.endswith(".bias"):
                p.zero_()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
        return float(net(torch.ones(1, 1, 28, 28, dtype=torch.float64)).sum())


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.99, 0.999])
def test_lamp_never_empties_a_layer(trained_resnet20, sparsity: float) -> None:
    masks = prune(trained_resnet20, "lamp", sparsity)
    assert [n for n, m in masks.masks.items() if not bool(m.any())] == []


@pytest.mark.slow
def test_synflow_empties_no_layer_at_99_percent(trained_resnet20) -> None:
    masks = prune(trained_resnet20, "synflow", 0.99)
    assert [n for n, m in masks.masks.items() if not bool(m.any())] == []
    assert path_flow(trained_resnet20, masks) > 0


@pytest.mark.slow
def test_synflow_at_999_permille_only_drops_bypassable_branches(trained_resnet20) -> None:
    masks = prune(trained_resnet20, "synflow", 0.999)
    empty = sorted(n for n, m in masks.masks.items() if not bool(m.any()))
    identity_blocks = {
        name for name, m in trained_resnet20.named_modules() if isinstance(getattr(m, "shortcut", None), nn.Identity)
    }
    branch = {f"{block}.conv{i}.weight" for block in identity_blocks for i in (1, 2)}
    assert set(empty) <= branch, empty
    for must in ("conv1.weight", "fc.weight"):
        assert bool(masks.masks[must].any())
    assert path_flow(trained_resnet20, masks) > 0
