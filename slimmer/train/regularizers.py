"""Sparsity-inducing regularizers for the fine-tuning loop, each a :class:`TrainHook`.

Registered by name in :data:`REGULARIZERS` (name → class). Constructors take plain tensors, masks
and parameter names; nothing here knows how masks or channel plans are chosen.

- ``slimming``: L1 on BatchNorm γ (Liu et al., ICCV 2017).
- ``greg``: GReg-1, a growing L2 penalty on the weights chosen for removal (Wang et al., ICLR 2021).
- ``greg2``: GReg-2, a growing L2 on every weight first, then GReg-1 on the smallest ones.
- ``halo``: hierarchical adaptive lasso with trainable per-weight scales (Seto et al., SDM 2021).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from slimmer.errors import ConfigError
from slimmer.registry import Registry
from slimmer.train.hooks import TrainHook

REGULARIZERS: Registry[type[TrainHook]] = Registry("regularizer")


def _params(model: nn.Module, names: Iterable[str], who: str) -> dict[str, nn.Parameter]:
    found = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigError(f"{who}: the model has no parameter {', '.join(sorted(missing))}")
    return {n: found[n] for n in names}


def _positive(value: float, what: str) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


@REGULARIZERS.decorator("slimming")
class SlimmingRegularizer(TrainHook):
    """Network slimming (Liu, Li, Shen, Huang, Yan, Zhang, ICCV 2017): ``λ·Σ|γ|`` on BatchNorm
    scales, applied as ``γ.grad += λ·sign(γ)`` after backward. λ = 1e-4 (the paper's VGG value;
    1e-5 for ResNet-164 and DenseNet-40). ``names`` are the γ parameters; ``None`` means every
    affine BatchNorm weight of the model."""

    def __init__(self, names: list[str] | None = None, lam: float = 1e-4) -> None:
        self.names = names
        self.lam = _positive(lam, "slimming λ")
        self._gammas: dict[str, nn.Parameter] = {}

    def on_start(self, model: nn.Module, total_steps: int) -> None:
        names = self.names
        if names is None:
            names = [
                f"{mod_name}.weight" if mod_name else "weight"
                for mod_name, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
            ]
        self._gammas = _params(model, names, "slimming")

    def gammas(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The γ parameters penalized, by name."""
        if not self._gammas:
            self.on_start(model, 0)
        return dict(self._gammas)

    def after_backward(self, model: nn.Module, step: int) -> None:
        if not self._gammas:
            self.on_start(model, 0)
        with torch.no_grad():
            for gamma in self._gammas.values():
                if gamma.grad is None:
                    gamma.grad = torch.zeros_like(gamma)
                gamma.grad.add_(self.lam * torch.sign(gamma))


@REGULARIZERS.decorator("greg")
class GrowingRegularizer(TrainHook):
    """GReg-1 (Wang, Qin, Zhang, Fu, "Neural Pruning via Growing Regularization", ICLR 2021).

    ``keep_masks`` are boolean masks by parameter name, True = keep (as ``MaskSet.masks``; a mask
    may broadcast, e.g. shape (C_out, 1, 1, 1) for filters). Only the slices to remove are pushed:
    ``grad += λ·W·(1 − keep)``. λ starts at ``lam_start``, grows by ``lam_step`` (1e-4) every
    ``update_every`` (K_u, 10 on CIFAR) optimizer steps, and stops at ``lam_max`` (1.0).
    """

    def __init__(
        self,
        keep_masks: dict[str, torch.Tensor],
        lam_step: float = 1e-4,
        update_every: int = 10,
        lam_max: float = 1.0,
        lam_start: float = 0.0,
    ) -> None:
        if not isinstance(update_every, int) or update_every < 1:
            raise ConfigError(f"greg update_every must be an integer >= 1, got {update_every!r}")
        self.keep_masks = {n: m.bool() for n, m in keep_masks.items()}
        self.lam_step = _positive(lam_step, "greg λ step")
        self.lam_max = _positive(lam_max, "greg λ cap")
        self.lam = min(_positive(lam_start, "greg starting λ"), self.lam_max)
        self.update_every = update_every

    def _push(self, model: nn.Module) -> None:
        params = _params(model, self.keep_masks, "greg")
        with torch.no_grad():
            for name, keep in self.keep_masks.items():
                p = params[name]
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.add_(self.lam * p * (~keep.to(p.device)).to(p.dtype))

    def after_backward(self, model: nn.Module, step: int) -> None:
        if self.lam > 0:
            self._push(model)

    def after_step(self, model: nn.Module, step: int) -> None:
        if (step + 1) % self.update_every == 0:
            self.lam = min(self.lam + self.lam_step, self.lam_max)


@REGULARIZERS.decorator("greg2")
class GrowingRegularizerPick(GrowingRegularizer):
    """GReg-2 (Wang et al., ICLR 2021): grow an L2 penalty uniformly on all of ``names`` (1e-5 per
    K_u up to 1e-2) so that the weights the loss does not hold up shrink (the gap reflects
    curvature without a Hessian); then keep the largest ``1 − ratio`` of each tensor by |w| and
    push the rest as GReg-1. ``ratios`` maps parameter name → fraction to remove (the paper's
    layer-wise ratios; unstructured). ``keep_masks`` is filled when the pick happens."""

    def __init__(
        self,
        ratios: dict[str, float],
        pick_lam_step: float = 1e-5,
        pick_lam_max: float = 1e-2,
        lam_step: float = 1e-4,
        update_every: int = 10,
        lam_max: float = 1.0,
    ) -> None:
        for name, r in ratios.items():
            if not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
                raise ConfigError(f"greg2 ratio for {name} must be in [0, 1), got {r!r}")
        super().__init__({}, lam_step=lam_step, update_every=update_every, lam_max=lam_max)
        self.ratios = dict(ratios)
        self.pick_lam_step = _positive(pick_lam_step, "greg2 uniform λ step")
        self.pick_lam_max = _positive(pick_lam_max, "greg2 uniform λ cap")
        self.uniform_lam = 0.0
        self.picked = False

    def pick(self, model: nn.Module) -> None:
        """Choose the weights to remove by their current magnitude and switch to GReg-1."""
        params = _params(model, self.ratios, "greg2")
        masks: dict[str, torch.Tensor] = {}
        for name, ratio in self.ratios.items():
            w = params[name].detach().abs().flatten()
            keep = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
            keep[torch.argsort(w, stable=True)[: int(round(ratio * w.numel()))]] = False
            masks[name] = keep.view(params[name].shape)
        self.keep_masks = masks
        self.picked = True

    def after_backward(self, model: nn.Module, step: int) -> None:
        if self.picked:
            super().after_backward(model, step)
            return
        params = _params(model, self.ratios, "greg2")
        with torch.no_grad():
            for p in params.values():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.add_(self.uniform_lam * p)

    def after_step(self, model: nn.Module, step: int) -> None:
        if self.picked:
            super().after_step(model, step)
        elif (step + 1) % self.update_every == 0:
            self.uniform_lam = min(self.uniform_lam + self.pick_lam_step, self.pick_lam_max)
            if self.uniform_lam >= self.pick_lam_max:
                self.pick(model)


HALO_REFERENCE_STEPS = 125_000
"""Optimizer steps of HALO's reference run (CIFAR, batch 64, 160 epochs ≈ 782 × 160)."""


@REGULARIZERS.decorator("halo")
class HaloRegularizer(TrainHook):
    """HALO, hierarchical adaptive lasso (Seto, Wells, Zhang, "HALO: Learning to Prune Neural
    Networks with Shrinkage", SDM 2021): ``ξ·Σ|w_j|/λ_j² + ψ·Σ|λ_j|`` with one trainable scale
    λ_j per weight of ``names`` (the paper: every Conv weight, Linear excluded), starting at 1.

    λ = softplus(raw) + ``eps`` keeps every scale positive and away from zero (the official code
    divides by a raw λ and breaks on NaN; the softplus is our choice). The scales are returned by
    :meth:`extra_parameters`; give them the network's optimizer settings (weight decay included).

    ξ = ψ = 1e-8 are the paper's README values for a ~125k-step run. Short fine-tunes would see
    almost no penalty, so by default both are multiplied by ``HALO_REFERENCE_STEPS / total_steps``
    (at least 1): the same total dose over fewer steps. ``scale_to_steps=False`` keeps them raw.
    """

    def __init__(
        self,
        names: list[str],
        xi: float = 1e-8,
        psi: float = 1e-8,
        eps: float = 1e-3,
        scale_to_steps: bool = True,
    ) -> None:
        if not names:
            raise ConfigError("halo needs at least one weight to regularize")
        self.names = list(names)
        self.xi = _positive(xi, "halo ξ")
        self.psi = _positive(psi, "halo ψ")
        if not 0 < eps < 1:
            raise ConfigError(f"halo eps must be in (0, 1), got {eps!r}")
        self.eps = float(eps)
        self.scale_to_steps = scale_to_steps
        self.scale = 1.0
        self.raw: dict[str, nn.Parameter] = {}

    def on_start(self, model: nn.Module, total_steps: int) -> None:
        params = _params(model, self.names, "halo")
        start = math.log(math.expm1(1.0 - self.eps))  # softplus(start) + eps == 1
        self.raw = {n: nn.Parameter(torch.full_like(p.detach(), start)) for n, p in params.items()}
        if self.scale_to_steps and total_steps > 0:
            self.scale = max(1.0, HALO_REFERENCE_STEPS / total_steps)

    def extra_parameters(self) -> list[nn.Parameter]:
        return [self.raw[n] for n in self.names if n in self.raw]

    def scales(self) -> dict[str, torch.Tensor]:
        """The current λ per weight (positive)."""
        return {n: F.softplus(raw) + self.eps for n, raw in self.raw.items()}

    def loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        if not self.raw:
            raise ConfigError("halo: on_start must run before the first loss (it creates the scales)")
        params = _params(model, self.names, "halo")
        penalty = torch.zeros((), device=next(iter(params.values())).device)
        for name, lam in self.scales().items():
            w = params[name]
            penalty = penalty + self.xi * self.scale * (w.abs() / lam.square()).sum()
            penalty = penalty + self.psi * self.scale * lam.abs().sum()
        return penalty
