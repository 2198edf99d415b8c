"""torch.fx tracing for region folding, and the check that a trace can stand in for its model.

Region folding (:mod:`slimmer.folding.region`) rewrites a model as an ``fx.GraphModule``; it may do
so only when the trace computes what the model computes (data-dependent Python control flow is
traced down one branch), so every trace is run against the model on the example input first.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from slimmer.folding.linearize import LinearizableActivation
from slimmer.inputs import fresh


class _Tracer(fx.Tracer):
    """torch.fx tracing that keeps a :class:`LinearizableActivation` as one node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LinearizableActivation) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as an ``fx.GraphModule`` sharing its submodules and parameters (raises when untraceable)."""
    graph = _Tracer().trace(model)
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    gm.train(model.training)
    return gm


def traced(model: nn.Module, example: tuple[Any, ...]) -> tuple[fx.GraphModule | None, str | None]:
    """``model`` traced, and why the trace cannot stand in for it (None when it can)."""
    try:
        gm = trace(model)
        return gm, _differs(model, gm, example)
    except Exception as exc:  # noqa: BLE001 - torch.fx raises many kinds for untraceable code
        return None, f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc})"


def _differs(model: nn.Module, gm: fx.GraphModule, example: tuple[Any, ...]) -> str | None:
    """Why the traced graph cannot stand in for ``model`` (its outputs differ on ``example``), or None."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            want, got = model(*fresh(example)), gm(*fresh(example))
    finally:
        model.train(was)
    pairs = list(zip(want, got, strict=False)) if isinstance(want, (tuple, list)) else [(want, got)]
    for a, b in pairs:
        if isinstance(a, torch.Tensor) and (
            not isinstance(b, torch.Tensor) or a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        ):
            return f"the torch.fx trace of {type(model).__name__} does not reproduce its outputs"
    return None
