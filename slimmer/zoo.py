"""Built-in reference architectures, registered by name for ``--arch``.

Each entry knows how to build the network with fresh weights and what input it expects, so a
state_dict of it needs no ``--input-shape``. The bundled default is ``resnet20-fmnist``: a
ResNet-20-style network (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, the
CIFAR variant: 3 stages of 3 basic blocks, widths 16/32/64) for 1×28×28 Fashion-MNIST images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from slimmer.registry import Registry


@dataclass(frozen=True)
class Architecture:
    """How to build a model and what it eats."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None


ARCHITECTURES: Registry[Architecture] = Registry("architecture")


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and an identity (or 1×1 projection) shortcut.

    Activations are modules (not ``torch.relu`` calls) so that layer folding can linearize them.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for small images: stem 3×3 conv, 3 stages × 3 blocks, global pool, linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        layers = []
        in_ch = widths[0]
        for i, w in enumerate(widths):
            blocks = [BasicBlock(in_ch, w, 1 if i == 0 else 2)]
            blocks += [BasicBlock(w, w, 1) for _ in range(2)]
            layers.append(nn.Sequential(*blocks))
            in_ch = w
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)
FMNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

ARCHITECTURES.register(
    "resnet20-fmnist",
    Architecture(
        name="resnet20-fmnist",
        build=lambda: ResNet20(1, 10),
        input_shape=(1, 1, 28, 28),
        mean=FMNIST_MEAN,
        std=FMNIST_STD,
        num_classes=10,
    ),
)
