"""Toy models, one per channel-coupling pattern, and a prune-and-check helper."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from slimmer.graph import GroupSet, build_groups
from slimmer.structures.channel import plan_channels
from slimmer.surgery import SurgeryResult, mask_model, shrink


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random norm parameters and statistics, so that masking bugs show up in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                if getattr(module, "weight", None) is not None:
                    module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.5)
                if getattr(module, "running_mean", None) is not None:
                    module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                    module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_and_check(
    model: nn.Module, x: torch.Tensor, *, sparsity: float = 0.4, **kwargs: object
) -> tuple[GroupSet, SurgeryResult]:
    """Plan, shrink and assert the invariants: pruned == masked original, same shape, fewer params."""
    model = randomize(model)
    groups = build_groups(model, (x,))
    plan = plan_channels(groups, model, sparsity=sparsity, example_inputs=(x,), **kwargs)
    untouched = copy.deepcopy(model)
    with torch.no_grad():
        original = model(x)
    before = params(model)
    result = shrink(model, plan, (x,))
    with torch.no_grad():
        reference = mask_model(untouched, result.plan)(x)
        pruned = model(x)
    assert pruned.shape == original.shape
    scale = reference.abs().max().item()
    assert scale > 0 and not torch.allclose(reference, reference.flatten()[0])
    assert (pruned - reference).abs().max().item() <= 1e-5 * scale
    assert params(model) < before
    return groups, result


@pytest.fixture
def check() -> Callable[..., tuple[GroupSet, SurgeryResult]]:
    return prune_and_check
