"""Small models and fixed batches for the criterion tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from slimmer.zoo import ARCHITECTURES

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "models" / "resnet20_fmnist.safetensors"


class ConvBNNet(nn.Module):
    """Every prunable layer is followed by a BatchNorm, so every criterion (bn-scale too) applies."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 3)
        self.bn3 = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = nn.functional.adaptive_avg_pool2d(x, 4)
        return self.bn3(self.fc(torch.flatten(x, 1)))


@pytest.fixture
def conv_bn_net() -> ConvBNNet:
    torch.manual_seed(0)
    model = ConvBNNet()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.fixture
def conv_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(12, 1, 8, 8, generator=gen), torch.arange(12) % 3) for _ in range(2)]


@pytest.fixture(scope="session")
def trained_resnet20() -> nn.Module:
    from safetensors.torch import load_file

    model = ARCHITECTURES.get("resnet20-fmnist").build()
    model.load_state_dict(load_file(str(TRAINED)))
    return model.eval()


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine's 2 cores are shared: a second intra-op thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
