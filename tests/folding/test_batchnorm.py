"""BatchNorm folding is exact, and refuses BNs whose input is needed elsewhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimmer.folding import fold_batchnorm
from slimmer.zoo import ARCHITECTURES


def perturb_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.3, 2.0)
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.3, 0.3)


def assert_rel_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(float(b.abs().max()), 1.0)
    assert float((a - b).abs().max()) <= tol * scale


def test_resnet20_folds_every_bn_exactly() -> None:
    torch.manual_seed(0)
    model = ARCHITECTURES.get("resnet20-fmnist").build().eval()
    perturb_bn(model)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    result = fold_batchnorm(model, x)
    assert result.model is model
    assert len(result.folded) == 21 and result.skipped == {}
    assert ("layer2.0.shortcut.0", "layer2.0.shortcut.1") in result.folded
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert_rel_close(model(x), expected)


class Shared(nn.Module):
    """conv → bn, but the conv output is also added to the result: the BN cannot fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 6, bias=False)
        self.bn3 = nn.BatchNorm1d(6, affine=False)
        self.bn4 = nn.BatchNorm1d(6, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.bn2(self.act(self.bn(y) + y))
        return self.bn4(self.bn3(self.fc(z.mean((2, 3)))))


def test_refusals_name_the_reason_and_linear_folds() -> None:
    torch.manual_seed(0)
    model = Shared().eval()
    perturb_bn(model)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    result = fold_batchnorm(model, x)
    assert result.folded == [("fc", "bn3")]
    assert "other users" in result.skipped["bn"]
    assert "not a Conv/Linear" in result.skipped["bn2"]
    assert "batch statistics" in result.skipped["bn4"]
    assert isinstance(model.bn3, nn.Identity) and model.fc.bias is not None
    with torch.no_grad():
        assert_rel_close(model(x), expected)


@pytest.mark.parametrize("bias", [True, False])
def test_conv_bias_and_stride(bias: bool) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, bias=bias), nn.BatchNorm2d(5)).eval()
    perturb_bn(model)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        expected = model(x)
    assert fold_batchnorm(model, x).folded == [("0", "1")]
    with torch.no_grad():
        assert_rel_close(model(x), expected)
