"""σ_α = αx + (1−α)act(x): α=1 is the identity, α=0 the activation; the penalty λΣ|1−α²| by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimmer.folding import (
    FoldingPenaltyHook,
    LinearizableActivation,
    finalize_activations,
    folding_penalty,
    functional_activations,
    insert_linearizable,
)
from slimmer.zoo import ARCHITECTURES

ACTS = [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.2), nn.GELU()]


@pytest.mark.parametrize("act", ACTS, ids=lambda a: type(a).__name__)
def test_alpha_endpoints_and_middle(act: nn.Module) -> None:
    x = torch.randn(64) * 8
    lin = LinearizableActivation(act)
    assert lin.alpha.item() == 0.0 and lin.alpha.requires_grad
    assert torch.equal(lin(x), act(x))
    with torch.no_grad():
        lin.alpha.fill_(1.0)
    assert torch.equal(lin(x), x)
    with torch.no_grad():
        lin.alpha.fill_(0.25)
    torch.testing.assert_close(lin(x), 0.25 * x + 0.75 * act(x))
    with torch.no_grad():
        lin.alpha.fill_(1.7)  # used clamped to [0, 1]
    assert torch.equal(lin(x), x)


def model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, 4),
        nn.ReLU(inplace=True),
        nn.Linear(4, 4),
        nn.GELU(),
        nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU()),
        nn.Sigmoid(),
    )


def test_insert_wraps_module_activations_only() -> None:
    net = model()
    wrapped = insert_linearizable(net)
    assert wrapped == ["1", "3", "4.1"]
    assert isinstance(net[1], LinearizableActivation) and net[1].act.inplace is False
    assert isinstance(net[5], nn.Sigmoid)
    assert insert_linearizable(net) == []  # idempotent
    assert insert_linearizable(model(), kinds=(nn.GELU,)) == ["3"]
    other = model()
    insert_linearizable(other, alpha=0.05)
    assert other[3].alpha.item() == pytest.approx(0.05)


def test_penalty_by_hand_and_hook() -> None:
    net = model()
    insert_linearizable(net)
    with torch.no_grad():
        net[1].alpha.fill_(0.0)
        net[3].alpha.fill_(0.5)
        net[4][1].alpha.fill_(1.0)
    expected = abs(1 - 0.0**2) + abs(1 - 0.5**2) + abs(1 - 1.0**2)
    assert folding_penalty(net).item() == pytest.approx(expected)
    hook = FoldingPenaltyHook()
    hook.on_start(net, 1)
    assert {id(p) for p in hook.extra_parameters()} == {id(net[1].alpha), id(net[3].alpha), id(net[4][1].alpha)}
    loss = hook.loss(net, 0)
    assert loss is not None and loss.item() == pytest.approx(0.25 * expected)
    loss.backward()
    assert net[3].alpha.grad.item() == pytest.approx(0.25 * -2 * 0.5)  # d/dα of λ(1−α²)
    with torch.no_grad():
        net[3].alpha.fill_(1.4)
        net[1].alpha.fill_(-0.3)
    hook.after_step(net, 0)
    assert net[3].alpha.item() == 1.0 and net[1].alpha.item() == 0.0
    assert FoldingPenaltyHook(0.5).loss(nn.Linear(2, 2), 0) is None


def test_finalize() -> None:
    net = model()
    insert_linearizable(net)
    with torch.no_grad():
        net[1].alpha.fill_(0.95)
        net[3].alpha.fill_(0.0)
        net[4][1].alpha.fill_(0.5)
    assert finalize_activations(net, 0.9) == {"1": "identity", "3": "activation", "4.1": "kept"}
    assert isinstance(net[1], nn.Identity) and isinstance(net[3], nn.GELU)
    assert isinstance(net[4][1], LinearizableActivation)
    with pytest.raises(ValueError):
        finalize_activations(net, 0.0)


class FunctionalBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)) + torch.nn.functional.gelu(x)


def test_functional_activations_are_reported() -> None:
    found = functional_activations(nn.Sequential(FunctionalBlock()), torch.randn(1, 3, 8, 8))
    assert len(found) == 2  # torch.relu and F.gelu inside forward
    assert all("cannot be linearized" in reason for reason in found.values())
    assert any(key.startswith("0 (FunctionalBlock).forward") for key in found)
    # resnet20-fmnist's activations are modules: nothing is hidden from linearization
    assert functional_activations(ARCHITECTURES.get("resnet20-fmnist").build(), torch.randn(1, 1, 28, 28)) == {}
    net = model()
    insert_linearizable(net)
    assert functional_activations(net, torch.randn(2, 4)) == {}
