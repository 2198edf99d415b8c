"""Layer patterns from other pruning tools' bug reports, rebuilt small (issue 16).

Importable as ``--arch field_models:NAME`` (tests/graph is on sys.path under pytest).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random norm affine parameters and statistics, so that a masking mistake changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.5)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model


class GroupedResidual(nn.Module):
    """A residual block of grouped convs (64 channels in 8 conv groups), then 64 -> 128 with 4 groups."""

    input_shape = (1, 3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(64))
        self.wide = nn.Sequential(nn.Conv2d(64, 128, 1, groups=4, bias=False), nn.BatchNorm2d(128), nn.ReLU())
        self.head = nn.Linear(128, 10)
        perturbed(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.b(self.a(x)))
        return self.head(self.wide(x).mean((2, 3)))


class GroupNormStack(nn.Module):
    """``Conv -> GroupNorm(32, 128) -> Conv -> GroupNorm(8, 64)``: two different group sizes."""

    input_shape = (1, 3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 128, 3, padding=1), nn.GroupNorm(32, 128)
        self.c2, self.n2 = nn.Conv2d(128, 64, 3, padding=1), nn.GroupNorm(8, 64)
        self.head = nn.Conv2d(64, 4, 1)
        perturbed(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.n1(self.c1(x)))
        return self.head(F.silu(self.n2(self.c2(x))))


class GroupedTranspose(nn.Module):
    """A grouped ``ConvTranspose2d(64, 64, groups=16)`` upsampler between two plain convs."""

    input_shape = (1, 3, 6, 6)

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.up = nn.ConvTranspose2d(64, 64, 2, stride=2, groups=16)
        self.out = nn.Conv2d(64, 3, 3, padding=1)
        perturbed(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.up(self.c1(x))))


class PReLUNet(nn.Module):
    """Per-channel ``PReLU(C)`` after each conv, plus one single-value PReLU shared by two layers."""

    input_shape = (1, 3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.p1 = nn.Conv2d(3, 32, 3, padding=1), nn.PReLU(32)
        self.c2, self.p2 = nn.Conv2d(32, 48, 3, padding=1), nn.PReLU(48)
        self.c3 = nn.Conv2d(48, 32, 3, padding=1)
        self.shared = nn.PReLU()  # one slope, used after c3 and after c4
        self.c4 = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, 10)
        with torch.no_grad():
            for p in (self.p1, self.p2, self.shared):
                p.weight.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.p2(self.c2(self.p1(self.c1(x))))
        x = self.shared(self.c4(self.shared(self.c3(x))))
        return self.fc(x.mean((2, 3)))


class LayerScaleBlock(nn.Module):
    """A ConvNeXt-style block: depthwise conv, channels-last MLP, ``x * self.gamma`` (one value per
    channel), plus an affine-only per-channel scale and shift in NCHW layout."""

    input_shape = (1, 3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 32)
        self.gamma = nn.Parameter(torch.rand(64) + 0.5)  # LayerScale on the hidden features
        self.scale = nn.Parameter(torch.rand(1, 32, 1, 1) + 0.5)  # affine-only "norm" in NCHW
        self.shift = nn.Parameter(torch.randn(1, 32, 1, 1))
        self.out = nn.Conv2d(32, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(y)) * self.gamma).permute(0, 3, 1, 2)
        return self.out(F.relu((x + y) * self.scale + self.shift))


class Recurrent(nn.Module):
    """``Linear -> LSTM -> LayerNorm -> Linear`` on sequences (batch first)."""

    input_shape = (1, 6, 16)

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.lstm = nn.LSTM(32, 48, batch_first=True)
        self.norm = nn.LayerNorm(48)
        self.head = nn.Linear(48, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(self.embed(x))
        return self.head(self.norm(y))


class PixelShuffleUp(nn.Module):
    """A sub-pixel upsampler: conv to ``C * r**2`` channels, ``PixelShuffle(r)``, conv."""

    input_shape = (1, 3, 4, 4)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
        self.expand = nn.Conv2d(32, 32 * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.out = nn.Conv2d(32, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.shuffle(self.expand(self.stem(x)))))


class UnequalSplit(nn.Module):
    """``torch.split(x, [16, 48])`` into two branches; the sizes follow the branches' layers."""

    input_shape = (1, 3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.left = nn.Conv2d(16, 32, 3, padding=1)
        self.right = nn.Conv2d(48, 32, 1)
        self.out = nn.Conv2d(32, 4, 1)
        perturbed(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.stem(x), [self.left.in_channels, self.right.in_channels], dim=1)
        return self.out(F.relu(self.left(a)) + F.relu(self.right(b)))


class UnequalSplitLiteral(UnequalSplit):
    """The same split with the sizes written as literals: pruning either part breaks ``forward``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.stem(x), [16, 48], dim=1)
        return self.out(F.relu(self.left(a)) + F.relu(self.right(b)))


class BareMatmul(nn.Module):
    """An embedding table, a positional table, and bare weight matrices used by ``@`` and einsum, and
    an ``nn.MultiheadAttention``: what unstructured pruning must cover or name."""

    input_shape = (1, 5)

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.position = nn.Parameter(torch.randn(5, 16))
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.w = nn.Parameter(torch.randn(32, 16) * 0.2)
        self.v = nn.Parameter(torch.randn(32, 4) * 0.2)
        self.scale = nn.Parameter(torch.ones(16))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = (self.embed(tokens) + self.position) * self.scale
        x = x + self.attn(x, x, x, need_weights=False)[0]
        h = torch.relu(x @ self.w.t())
        return torch.einsum("btk,kc->btc", h, self.v)
