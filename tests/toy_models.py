"""Small models for reliability tests, importable as ``--arch toy_models:NAME`` (tests/ is on sys.path)."""

import torch
from torch import nn


class DataDependent(nn.Module):
    """Takes a different branch depending on the input's values: torch.export cannot capture it."""

    input_shape = (1, 3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:
            return y.relu()
        return -y


def data_dependent() -> nn.Module:
    return DataDependent()


data_dependent.input_shape = (1, 3, 8, 8)


# ----------------------------------------------------------------------------- issue 19 (reliability round two)


class Tiny(nn.Module):
    """The smallest classifier for full CLI runs: conv 1→4, pool, linear 4→10 on 1×8×8 inputs."""

    input_shape = (1, 1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class Chatty(Tiny):
    """Prints from Python and writes to file descriptor 1 directly, as user code and torch's C++ do."""

    def __init__(self) -> None:
        super().__init__()
        print("building Chatty")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("chatty forward")
        import os

        os.write(1, b"fd-level chatter\n")
        return super().forward(x)


class CausalMask(nn.Module):
    """Self-attention with a causal mask of -inf held in a buffer (persistent or not)."""

    input_shape = (1, 4, 8)

    def __init__(self, persistent: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)
        mask = torch.triu(torch.full((4, 4), float("-inf")), diagonal=1)
        self.register_buffer("mask", mask, persistent=persistent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.proj(x)
        att = torch.softmax(q @ x.transpose(1, 2) / 8**0.5 + self.mask, dim=-1)
        return self.head((att @ x).mean(1))


def causal_mask_nonpersistent() -> nn.Module:
    return CausalMask(persistent=False)


causal_mask_nonpersistent.input_shape = (1, 4, 8)


class LogOfNegative(Tiny):
    """Its own output is NaN on ordinary inputs: log of a value that is negative for some inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(super().forward(x))


def raises() -> nn.Module:
    raise RuntimeError("the builder broke")


def returns_none():
    return None


def returns_tuple():
    return Tiny(), 3


def returns_str():
    return "Tiny"


def needs_args(width):
    return Tiny()


for _f in (raises, returns_none, returns_tuple, returns_str, needs_args):
    _f.input_shape = (1, 1, 8, 8)


# ----------------------------------------------------------------------------- issue 20 (latency cost constants)


class DepthwisePaths(nn.Module):
    """A dense path and a depthwise path side by side (as ``tests/test_latency_cost.py``'s model):
    ``dense`` widens 8 → 32 with a 3×3 conv, ``expand`` 8 → 32 with a 1×1 conv feeding a 3×3
    depthwise conv, so the depthwise cost constant decides which path latency-aware ranking prunes."""

    input_shape = (1, 3, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dense = nn.Conv2d(8, 32, 3, padding=1)
        self.dense_out = nn.Conv2d(32, 8, 1)
        self.expand = nn.Conv2d(8, 32, 1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.project = nn.Conv2d(32, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        a = self.dense_out(torch.relu(self.dense(x)))
        b = self.project(torch.relu(self.dw(torch.relu(self.expand(x)))))
        return self.fc((a + b).mean((2, 3)))


def tied_scores(m: nn.Module) -> nn.Module:
    """``m`` in eval mode with every Conv/Linear weight 0.1 and bias 0: channel scores tie, so only a
    latency cost can decide between channels."""
    m = m.eval()
    with torch.no_grad():
        for module in m.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.fill_(0.1)
                module.bias.zero_()
    return m
