"""The pruning stage's result and method handlers: what pruning chose and achieved (immutable), and
one registered handler per ``--method`` (:data:`slimmer.prune.METHODS`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from slimmer.graph.groups import GroupSet
from slimmer.structures.nm import NMResult
from slimmer.structures.plan import PruningPlan
from slimmer.structures.unstructured import MaskSet


@dataclass(frozen=True)
class PruneResult:
    """What pruning chose and achieved (immutable: every step returns a new one).

    ``plan`` is set for channel pruning (removed by :func:`shrink_model`); ``masks`` holds unstructured
    masks, ``nm`` an N:M pattern; ``fold`` what BatchNorm/layer folding did and ``model`` the rebuilt
    model to export when folding replaced it (a traced GraphModule). ``per_layer`` maps a layer to
    its sparsity (unstructured) or removed-channel fraction (channel); ``dense`` keeps the weights a
    mask zeroed, for ``--regrow``; ``masked_values`` the values of the slices ``plan`` zeroed
    (:func:`slimmer.surgery.slice_values`), until the surgery, which puts back a rolled-back group's."""

    masks: MaskSet | None = None
    nm: NMResult | None = None
    fold: dict | None = None
    model: nn.Module | None = None
    plan: PruningPlan | None = None
    groups: GroupSet | None = None
    sparsity_requested: float | None = None
    sparsity_achieved: float | None = None
    per_layer: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    details: dict = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    masked_values: tuple | None = field(default=None, repr=False)

    def but(self, **changes: Any) -> PruneResult:
        """A copy with ``changes`` (field values)."""
        return replace(self, **changes)

    def warn(self, *messages: str) -> PruneResult:
        """A copy with ``messages`` added to ``warnings`` (each once, in order)."""
        new = tuple(dict.fromkeys(m for m in messages if m and m not in self.warnings))
        return replace(self, warnings=self.warnings + new) if new else self

    def detail(self, **items: Any) -> PruneResult:
        """A copy with ``items`` set in ``details``."""
        return replace(self, details={**self.details, **items})


def checked(handler: MethodHandler, result: Any) -> PruneResult:
    """A handler's step must return the new :class:`PruneResult` (results are immutable: a step that
    changed one in place and returned None would lose what it did)."""
    if not isinstance(result, PruneResult):
        raise TypeError(f"method handler {handler.name!r} returned {type(result).__name__}, not a PruneResult")
    return result


@dataclass(frozen=True)
class MethodHandler:
    """One ``--method``: how it prunes, and whether it acts before or after channel surgery.

    ``apply(model, config, example, data, result) -> PruneResult`` changes ``model`` in place and
    returns ``result`` with what it did added (results are immutable). Handlers with ``after_shrink``
    run on the physically pruned model, in ``order``; ``finish(model, config, example, result) ->
    PruneResult``, when set, is a before-surgery handler's second step on the physically pruned model
    (search: dropping residual blocks, ``result.model``)."""

    name: str
    description: str
    apply: Callable[..., PruneResult]
    after_shrink: bool = False
    order: int = 0
    finish: Callable[..., PruneResult] | None = None
