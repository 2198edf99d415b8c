"""Loading weights into an architecture: built on the meta device when the checkpoint supplies every
tensor, built normally otherwise, the same module either way (slimmer/weights.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimmer.errors import InputError
from slimmer.weights import build_with_weights
from slimmer.zoo import Architecture


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


class WithNonPersistent(Net):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("offset", torch.full((4,), 0.5), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.offset


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


class ComputesWhileBuilding(Net):
    def __init__(self) -> None:
        super().__init__()
        self.depth = float(torch.linspace(0, 1, 3)[1].item())  # .item() has no value on the meta device


def _trained_state(cls: type[nn.Module]) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = cls()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("cls", [Net, WithNonPersistent, Tied, ComputesWhileBuilding])
def test_every_builder_gets_exactly_the_checkpoint(cls: type[nn.Module]) -> None:
    state = _trained_state(cls)
    model, _ = build_with_weights(Architecture(cls.__name__, cls, (1, 3, 8, 8)), state)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    reference = cls()
    reference.load_state_dict(state)
    x = torch.randn(2, 3, 8, 8) if cls is not Tied else torch.randn(2, 4)
    torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("cls", [Net, WithNonPersistent, ComputesWhileBuilding])
def test_meta_build_takes_the_checkpoint_tensors_without_a_copy(cls: type[nn.Module]) -> None:
    """Builders that compute with tensors (torchvision's RegNet derives its widths with torch ops) or
    keep non-persistent buffers still get the checkpoint's own tensors: no random init, no copy."""
    state = _trained_state(cls)
    model, _ = build_with_weights(Architecture(cls.__name__, cls, (1, 3, 8, 8)), state)
    assert model.conv.weight.data_ptr() == state["conv.weight"].data_ptr()
    assert model.conv.weight.requires_grad and isinstance(model.conv.weight, nn.Parameter)


def test_modules_built_afterwards_get_real_parameters() -> None:
    build_with_weights(Architecture("net", Net, (1, 3, 8, 8)), _trained_state(Net))
    assert not nn.Linear(2, 2).weight.is_meta and not nn.BatchNorm1d(2).running_mean.is_meta


def test_ties_survive_loading() -> None:
    model, _ = build_with_weights(Architecture("tied", Tied, (1, 4)), _trained_state(Tied))
    assert model.a.weight is model.b.weight


def test_absent_batchnorm_counters_become_zero() -> None:
    state = _trained_state(Net)
    del state["bn.num_batches_tracked"]
    model, notes = build_with_weights(Architecture("net", Net, (1, 3, 8, 8)), state)
    assert model.bn.num_batches_tracked.item() == 0 and not model.bn.num_batches_tracked.is_meta
    assert any("num_batches_tracked" in n for n in notes)


def test_a_mismatch_is_still_named() -> None:
    state = _trained_state(Net)
    state["fc.weight"] = torch.zeros(5, 8)
    with pytest.raises(InputError, match=r"fc.weight: checkpoint \(5, 8\) vs model \(4, 8\)"):
        build_with_weights(Architecture("net", Net, (1, 3, 8, 8)), state)
