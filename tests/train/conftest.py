"""Tiny, fast fixtures for the fine-tuning tests: a synthetic 4-class task and a small MLP with BN."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from slimmer.train.data import Dataset


def make_net(seed: int = 0, width: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 4))


@pytest.fixture
def net_factory() -> Callable[..., nn.Module]:
    return make_net


@pytest.fixture(scope="session")
def tiny_task() -> Dataset:
    """512 Gaussian points labelled by the argmax of a fixed random linear map (learnable)."""
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(512, 8, generator=gen)
    w = torch.randn(8, 4, generator=gen)
    return Dataset(x=x, y=(x @ w).argmax(1), source="synthetic")
