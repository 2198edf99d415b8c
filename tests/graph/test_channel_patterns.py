"""Each coupling pattern on a toy model: pruned == masked original, fewer params, same output shape."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimmer.graph import ChannelGroup, GroupSet


def cbr(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.a = cbr(16, 24)
        self.b = nn.Sequential(nn.Conv2d(24, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.b(self.a(x)))
        return self.head(x.mean((2, 3)))


class Concat(nn.Module):
    """Inception branches joined by cat, then a DenseNet-style cat of input and new features."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 12)
        self.b1, self.b2 = cbr(12, 8, 1), cbr(12, 10, 3)
        self.dense = cbr(18, 6)
        self.out = cbr(24, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b2(x)], 1)
        x = torch.cat([x, self.dense(x)], 1)
        return self.head(F.adaptive_avg_pool2d(self.out(x), 1).flatten(1))


class SplitChunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32)
        self.left, self.right = cbr(16, 16), cbr(16, 8)
        self.out = nn.Conv2d(24, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.stem(x).chunk(2, dim=1)
        return self.out(torch.cat([self.left(a), self.right(b)], 1))


class GroupedConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32)
        self.depthwise = cbr(32, 32, 3, groups=32)
        self.multiplier = cbr(32, 64, 3, groups=32)  # depthwise with channel multiplier 2
        self.grouped = cbr(64, 32, 3, groups=4)
        self.out = nn.Conv2d(32, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.grouped(self.multiplier(self.depthwise(self.stem(x)))))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 24)
        self.branch = cbr(12, 12)
        self.out = cbr(24, 24)
        self.head = nn.Conv2d(24, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.stem(x).chunk(2, dim=1)
        x = channel_shuffle(torch.cat([a, self.branch(b)], 1), 2)
        return self.head(self.out(x))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32)
        self.reduce, self.expand = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)
        self.out = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        scale = torch.sigmoid(self.expand(F.silu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))
        return self.out(F.hardswish(x * scale))


class FlattenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(cbr(3, 16), nn.MaxPool2d(2), cbr(16, 12), nn.AdaptiveAvgPool2d(3))
        self.fc1, self.fc2 = nn.Linear(12 * 9, 32), nn.Linear(32, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(torch.flatten(self.features(x), 1))))


class NormsAndTranspose(nn.Module):
    """GroupNorm (whole groups), ConvTranspose, upsampling and an instance norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.up = nn.ConvTranspose2d(16, 12, 2, stride=2)
        self.inorm = nn.InstanceNorm2d(12, affine=True)
        self.out = nn.Conv2d(12, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn(self.conv(x)))
        x = F.relu(self.inorm(self.up(x)))
        return self.out(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def group_of(groups: GroupSet, name: str, dim: int = 0) -> ChannelGroup:
    """The prunable group holding dim ``dim`` of tensor ``name``."""
    return next(g for g in groups.prunable if (name, dim) in g.signature)


X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def test_residual_add_couples_both_branches(check) -> None:
    groups, result = check(Residual(), X)
    assert group_of(groups, "stem.0.weight") is group_of(groups, "b.0.weight")
    assert not result.rolled_back


def test_concat_maps_offsets(check) -> None:
    groups, _ = check(Concat(), X)
    # each concat input stays its own group, mapped to its offset in the consumer's columns
    b2 = group_of(groups, "b2.0.weight")
    consumer = next(m for m in b2.members if m.name == "dense.0.weight")
    assert consumer.dim == 1 and consumer.indices[0] == (8,)


def test_split_chunk(check) -> None:
    groups, _ = check(SplitChunk(), X)
    stem = group_of(groups, "stem.0.weight")
    assert stem.channels == 16  # channel i of each half goes with channel i of the other half


def test_depthwise_and_grouped_convs(check) -> None:
    model = GroupedConvs()
    check(model, X, sparsity=0.5)
    assert model.depthwise[0].groups == model.depthwise[0].in_channels == model.depthwise[0].out_channels
    assert model.multiplier[0].out_channels == 2 * model.multiplier[0].groups
    assert model.grouped[0].groups < 4 and model.grouped[0].in_channels % model.grouped[0].groups == 0


def test_channel_shuffle(check) -> None:
    _, result = check(Shuffle(), X, sparsity=0.5)
    assert not result.rolled_back


def test_squeeze_excitation(check) -> None:
    groups, _ = check(SqueezeExcite(), X)
    se = group_of(groups, "stem.0.weight")
    assert {"reduce.weight", "expand.weight", "expand.bias", "out.weight"} <= {m.name for m in se.members}


def test_flatten_before_linear(check) -> None:
    model = FlattenLinear()
    groups, _ = check(model, X)
    block = group_of(groups, "features.2.0.weight")
    fc1 = next(m for m in block.members if m.name == "fc1.weight")
    assert fc1.indices[1] == tuple(range(9, 18))  # channel 1 owns features 9..17 of the flatten
    assert model.fc1.in_features % 9 == 0 and model.fc1.in_features < 108


def test_group_norm_conv_transpose_upsample(check) -> None:
    model = NormsAndTranspose()
    check(model, X, sparsity=0.5)
    assert model.gn.num_channels // model.gn.num_groups == 4
    assert model.up.out_channels == model.inorm.num_features
