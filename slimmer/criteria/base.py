"""The criterion contract: scores per prunable tensor; higher means more important (kept first)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from slimmer.registry import Registry

Needs = Literal["none", "data", "grads"]


@dataclass
class ScoreContext:
    """What a criterion may use: the model, a seeded generator and (for data criteria) batches."""

    model: nn.Module
    seed: int = 0
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]] | None = None
    extra: dict = field(default_factory=dict)

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


ScoreFn = Callable[[dict[str, torch.Tensor], ScoreContext], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Criterion:
    """A named scoring rule. ``needs`` says what it requires: nothing, data, or data with gradients."""

    name: str
    needs: Needs
    score: ScoreFn
    description: str


CRITERIA: Registry[Criterion] = Registry("criterion")


def register_criterion(name: str, needs: Needs, description: str) -> Callable[[ScoreFn], ScoreFn]:
    def wrap(fn: ScoreFn) -> ScoreFn:
        CRITERIA.register(name, Criterion(name=name, needs=needs, score=fn, description=description))
        return fn

    return wrap


def get_criterion(name: str) -> Criterion:
    return CRITERIA.get(name)
