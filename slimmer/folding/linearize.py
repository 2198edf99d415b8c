"""Learn which activations can go: σ_α(x) = αx + (1−α)·act(x) (Layer Folding, Ben Dror et al., BMVC 2022).

"Layer Folding: Neural Network Depth Reduction using Activation Linearization" (arXiv 2106.09309)
gives each activation one trainable scalar α (initialized at 0, so the network is unchanged),
fine-tunes with the penalty λ·Σ|1−α²| (λ = 0.25) that pulls α towards 1, then turns activations
with α ≥ 0.9 into the identity so the linear layers around them can be merged
(:mod:`slimmer.folding.merge`).

Only activations that are ``nn.Module`` children can be swapped: a ``torch.relu(x)`` inside a
``forward`` cannot be replaced without rewriting that code. :func:`functional_activations` finds
them in the captured graph so the report can say they are not foldable.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import fx, nn

from slimmer.folding._modules import innermost_module, set_module
from slimmer.graph.capture import CapturedGraph, capture, op_name
from slimmer.train.hooks import TrainHook

DEFAULT_KINDS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU)
ACTIVATION_OPS = {
    "aten.relu.default",
    "aten.relu_.default",
    "aten.hardtanh.default",
    "aten.hardtanh_.default",
    "aten.leaky_relu.default",
    "aten.leaky_relu_.default",
    "aten.gelu.default",
}
DEFAULT_PENALTY = 0.25
DEFAULT_THRESHOLD = 0.9


class LinearizableActivation(nn.Module):
    """σ_α(x) = αx + (1−α)·act(x) with one trainable α, used clamped to [0, 1] (init 0: σ_0 = act)."""

    def __init__(self, act: nn.Module, alpha: float = 0.0) -> None:
        super().__init__()
        self.act = act
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    @property
    def value(self) -> float:
        """The α the forward uses (clamped to [0, 1])."""
        return float(self.alpha.detach().clamp(0.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha.clamp(0.0, 1.0)
        return a * x + (1.0 - a) * self.act(x)


def insert_linearizable(
    model: nn.Module, kinds: tuple[type[nn.Module], ...] = DEFAULT_KINDS, alpha: float = 0.0
) -> list[str]:
    """Wrap every activation module of the given ``kinds`` in :class:`LinearizableActivation`.

    Changes ``model`` in place and returns the paths wrapped. In-place activations
    (``ReLU(inplace=True)``) are wrapped with a non-in-place copy, since σ_α needs x twice.
    ``alpha`` is the initial α (the paper: 0). Note that d/dα |1−α²| = −2α vanishes at α = 0, so
    from α = 0 only the task loss moves α; a small positive start (e.g. 0.05) lets the penalty act.
    """
    inside = {f"{p}.act" for p, m in model.named_modules() if isinstance(m, LinearizableActivation)}
    found = [
        (path, module)
        for path, module in model.named_modules()
        if path and path not in inside and isinstance(module, kinds)
    ]
    wrapped: list[str] = []
    for path, module in found:
        if getattr(module, "inplace", False):
            module.inplace = False
        set_module(model, path, LinearizableActivation(module, alpha))
        wrapped.append(path)
    return wrapped


def activation_calls(model: nn.Module, captured: CapturedGraph) -> Iterator[tuple[fx.Node, str | None, nn.Module]]:
    """``(node, module path, the module whose forward makes the call)`` for every activation op of ``captured``."""
    for node in captured.graph.nodes:
        if node.op == "call_function" and op_name(node) in ACTIVATION_OPS:
            path = innermost_module(node)
            yield node, path, model.get_submodule(path) if path else model


def functional_activations(model: nn.Module, example_input: torch.Tensor | Sequence[Any]) -> dict[str, str]:
    """Activations called as functions inside a ``forward``: ``{node: reason}`` (not foldable)."""
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    captured = capture(model, inputs)
    found: dict[str, str] = {}
    for node, path, owner in activation_calls(model, captured):
        if isinstance(owner, (*DEFAULT_KINDS, LinearizableActivation)):
            continue
        where = f"{path or '<root>'} ({type(owner).__name__}).forward"
        found[f"{where}: {node.name}"] = (
            f"{op_name(node)} is called inside {where}, not as an nn.Module: it cannot be linearized"
        )
    return found


def linearizable(model: nn.Module) -> dict[str, LinearizableActivation]:
    """``{path: module}`` of every :class:`LinearizableActivation` in ``model``."""
    return {p: m for p, m in model.named_modules() if isinstance(m, LinearizableActivation)}


def folding_penalty(model: nn.Module) -> torch.Tensor:
    """Σ|1−α²| over the model's linearizable activations (clamped α, as the forward uses it)."""
    terms = [(1.0 - m.alpha.clamp(0.0, 1.0) ** 2).abs() for m in linearizable(model).values()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


class FoldingPenaltyHook(TrainHook):
    """Adds λ·Σ|1−α²| (λ = 0.25) to the loss and keeps α in [0, 1] after each step (Ben Dror et al.).

    The α parameters are returned by :meth:`extra_parameters`, so a loop that puts hook parameters
    in a group without weight decay keeps decay from pulling α back towards 0.

    ``alpha_lr_scale`` gives α its own learning rate: each optimizer step's change of α is
    multiplied by it (α ← α₀ + scale·(α₁ − α₀)). With weight decay 0 on α, that is exactly a
    learning rate ``scale``× the network's for SGD (with or without momentum) and for AdamW; the
    fine-tuning loop itself keeps one learning rate for every group.
    """

    def __init__(self, penalty: float = DEFAULT_PENALTY, alpha_lr_scale: float = 1.0) -> None:
        if penalty < 0:
            raise ValueError(f"layer-folding penalty λ must be ≥ 0, got {penalty}")
        if not alpha_lr_scale > 0:
            raise ValueError(f"alpha_lr_scale must be > 0, got {alpha_lr_scale}")
        self.penalty = penalty
        self.alpha_lr_scale = alpha_lr_scale
        self._alphas: list[nn.Parameter] = []
        self._before: list[torch.Tensor] = []

    def on_start(self, model: nn.Module, total_steps: int) -> None:
        self._alphas = list({id(m.alpha): m.alpha for m in linearizable(model).values()}.values())  # tied α once

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self._alphas)

    def loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        if not linearizable(model):
            return None
        return self.penalty * folding_penalty(model)

    def after_backward(self, model: nn.Module, step: int) -> None:
        if self.alpha_lr_scale != 1.0:
            self._before = [a.detach().clone() for a in self._alphas]

    def after_step(self, model: nn.Module, step: int) -> None:
        with torch.no_grad():
            for alpha, before in zip(self._alphas, self._before, strict=False):
                alpha.copy_(before + self.alpha_lr_scale * (alpha - before))
            self._before = []
            for module in linearizable(model).values():
                module.alpha.clamp_(0.0, 1.0)


def finalize_activations(model: nn.Module, threshold: float = DEFAULT_THRESHOLD) -> dict[str, str]:
    """Resolve every :class:`LinearizableActivation`: ``{path: "identity" | "activation" | "kept"}``.

    * α ≥ ``threshold`` → ``nn.Identity`` (exact when α = 1; otherwise the paper's rounding, which
      the following fine-tune absorbs). Only these activations let layers merge.
    * α = 0 → the plain activation again (exact).
    * 0 < α < ``threshold`` → σ_α stays as it is (exact, still nonlinear, not foldable).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    outcome: dict[str, str] = {}
    for path, module in linearizable(model).items():
        alpha = module.value
        if alpha >= threshold:
            set_module(model, path, nn.Identity())
            outcome[path] = "identity"
        elif alpha == 0.0:
            set_module(model, path, module.act)
            outcome[path] = "activation"
        else:
            outcome[path] = "kept"
    return outcome
