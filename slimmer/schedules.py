"""Sparsity schedules: plain functions of the optimizer step → target sparsity.

Every schedule has the signature ``schedule(step, total_steps, *, final, ...) -> float`` and is
piecewise constant on a grid of ``interval`` (Δt) steps, so "update the masks every Δt steps" is
simply "recompute the masks when the target changes". Steps at or past ``total_steps`` hold
``final``. :class:`ScheduledMaskHook` drives the masks from a schedule during fine-tuning without
knowing how masks are chosen: the pipeline hands it a ``(model, sparsity) -> MaskSet`` callable.

- ``oneshot``: ``final`` from the first step (prune once, then fine-tune).
- ``iterative``: ``rounds`` equal rounds over the whole run, each pruning the same fraction of the
  weights still alive (density ``d_i·(d_f/d_i)^(r/k)``), as in iterative magnitude pruning (Han et
  al., "Learning both Weights and Connections", NeurIPS 2015; Frankle & Carbin, ICLR 2019).
- ``gradual``: Zhu & Gupta, "To prune, or not to prune", 2017: ``s_t = s_f + (s_i − s_f)(1 −
  (t − t₀)/(nΔt))³`` over ``nΔt`` ≤ ``ramp_fraction``·steps, then hold ``s_f``.
- ``cyclical``: Srinivas et al., "Cyclical Pruning for Sparse Neural Networks", CVPR-W 2022, as
  reconstructed in ALGORITHMS.md §5 (not checked against the paper): ``cycles`` cubic ramps over the
  ramp window, the first from ``initial``, later ones restarting from ``cycle_start`` so weights
  pruned by mistake can regrow from zero; then hold ``s_f``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from slimmer.errors import ConfigError
from slimmer.registry import Registry
from slimmer.train.hooks import MaskHook, TrainHook

Schedule = Callable[..., float]
SCHEDULES: Registry[Schedule] = Registry("schedule")


def _check(final: float, initial: float, interval: int, ramp_fraction: float = 0.75) -> None:
    for name, value in (("final sparsity", final), ("initial sparsity", initial)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value < 1):
            raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    if initial > final:
        raise ConfigError(f"initial sparsity {initial} is above the final sparsity {final}")
    if not isinstance(interval, int) or interval < 1:
        raise ConfigError(f"the mask update interval must be an integer ≥ 1, got {interval!r}")
    if not (isinstance(ramp_fraction, (int, float)) and 0 < ramp_fraction <= 1):
        raise ConfigError(f"ramp_fraction must be in (0, 1], got {ramp_fraction!r}")


def _cubic(frac: float, start: float, final: float) -> float:
    """Zhu & Gupta's cubic: ``final + (start − final)(1 − frac)³`` for ``frac`` in [0, 1]."""
    return final + (start - final) * (1.0 - min(max(frac, 0.0), 1.0)) ** 3


def _ramp_updates(total_steps: int, ramp_fraction: float, interval: int, per: int = 1) -> int:
    """How many Δt-long updates fit in the ramp window (for ``per`` cycles): at least one each."""
    ramp = max(1, int(round(ramp_fraction * total_steps)))
    n = ramp // (interval * per)
    if n < 1:
        raise ConfigError(
            f"a mask update every {interval} step(s) does not fit {per} ramp(s) in the first {ramp} of "
            f"{total_steps} steps",
            hint="lower the update interval or raise the number of fine-tuning steps",
        )
    return n


@SCHEDULES.decorator("oneshot")
def oneshot(step: int, total_steps: int, *, final: float, **_: Any) -> float:
    """Prune to ``final`` before the first step and hold it."""
    _check(final, 0.0, 1)
    return float(final)


@SCHEDULES.decorator("iterative")
def iterative(step: int, total_steps: int, *, final: float, rounds: int = 3, initial: float = 0.0, **_: Any) -> float:
    """Round ``r`` (0-based) starts at ``floor(r·total/rounds)`` and prunes to density
    ``d_i·(d_f/d_i)^((r+1)/rounds)``: the same fraction of the surviving weights every round."""
    _check(final, initial, 1)
    if not isinstance(rounds, int) or not 1 <= rounds <= max(1, total_steps):
        raise ConfigError(f"iterative pruning needs 1 ≤ rounds ≤ steps ({total_steps}), got {rounds!r}")
    if step >= total_steps:
        return float(final)
    r = min(rounds - 1, (step * rounds) // total_steps)
    if r == rounds - 1:
        return float(final)
    d_i, d_f = 1.0 - initial, 1.0 - final
    return 1.0 - d_i * (d_f / d_i) ** ((r + 1) / rounds)


@SCHEDULES.decorator("gradual")
def gradual(
    step: int,
    total_steps: int,
    *,
    final: float,
    initial: float = 0.0,
    interval: int = 1,
    ramp_fraction: float = 0.75,
    **_: Any,
) -> float:
    """Zhu & Gupta 2017 (t₀ = 0): ``n = ⌊ramp_fraction·steps / Δt⌋`` updates, ``s_f`` from ``nΔt`` on."""
    _check(final, initial, interval, ramp_fraction)
    n = _ramp_updates(total_steps, ramp_fraction, interval)
    t = (min(step, total_steps) // interval) * interval
    return _cubic(t / (n * interval), initial, final)


@SCHEDULES.decorator("cyclical")
def cyclical(
    step: int,
    total_steps: int,
    *,
    final: float,
    initial: float = 0.0,
    cycles: int = 3,
    cycle_start: float | None = None,
    interval: int = 1,
    ramp_fraction: float = 0.75,
    **_: Any,
) -> float:
    """Srinivas et al. 2022 (reconstruction): cycle length ``T_c = nΔt`` with ``n = ⌊ramp/(cycles·Δt)⌋``;
    inside a cycle ``s = s_f − (s_f − s_start)(1 − τ)³``, ``τ`` the Δt-quantized position in the cycle;
    ``s_start`` is ``initial`` in the first cycle and ``cycle_start`` (default ``final/2``) after."""
    restart = final / 2 if cycle_start is None else cycle_start
    _check(final, initial, interval, ramp_fraction)
    _check(final, restart, interval, ramp_fraction)
    if not isinstance(cycles, int) or cycles < 1:
        raise ConfigError(f"cyclical pruning needs cycles ≥ 1, got {cycles!r}")
    length = _ramp_updates(total_steps, ramp_fraction, interval, cycles) * interval
    t = min(step, total_steps)
    cycle = t // length
    if cycle >= cycles:
        return float(final)
    local = ((t % length) // interval) * interval
    return _cubic(local / length, initial if cycle == 0 else restart, final)


def build_schedule(name: str, final: float, **params: Any) -> Callable[[int, int], float]:
    """``(step, total_steps) -> sparsity`` for a registered schedule with its parameters bound."""
    return functools.partial(SCHEDULES.get(name), final=final, **params)


class MaskSetLike(Protocol):
    masks: dict[str, torch.Tensor]

    @property
    def sparsity(self) -> float: ...


class ScheduledMaskHook(TrainHook):
    """Drive masks from a schedule: whenever the target sparsity changes, recompute masks from the
    current weights with ``recompute(model, sparsity)`` and apply them; keep them applied between.

    Masks are recomputed from scratch (not only tightened), so when a cyclical schedule drops to a
    lower sparsity, weights pruned before can come back, starting from zero. The masks for step
    ``t + 1`` are chosen after step ``t``; the last update leaves the model at ``schedule(total)``,
    which every registered schedule makes the final sparsity.
    """

    def __init__(
        self, schedule: Callable[[int, int], float], recompute: Callable[[nn.Module, float], MaskSetLike]
    ) -> None:
        self.schedule = schedule
        self.recompute = recompute
        self.total_steps = 0
        self.current: float | None = None
        self.updates: list[tuple[int, float]] = []
        self.warnings: list[str] = []
        self.masks: MaskSetLike | None = None
        self._keep: MaskHook | None = None

    def _update(self, model: nn.Module, step: int) -> None:
        target = float(self.schedule(step, self.total_steps))
        if target == self.current:
            return
        self.masks = self.recompute(model, target)
        for warning in getattr(self.masks, "warnings", []):
            if warning not in self.warnings:
                self.warnings.append(warning)
        if self._keep is None:
            self._keep = MaskHook(self.masks)
        self._keep.set_masks(model, self.masks)
        self.current = target
        self.updates.append((step, target))

    def on_start(self, model: nn.Module, total_steps: int) -> None:
        self.total_steps = total_steps
        self.current = None
        self.updates = []
        self._update(model, 0)

    def after_backward(self, model: nn.Module, step: int) -> None:
        if self._keep is not None:
            self._keep.after_backward(model, step)

    def after_step(self, model: nn.Module, step: int) -> None:
        if self._keep is not None:
            self._keep.after_step(model, step)
        self._update(model, step + 1)

    def on_end(self, model: nn.Module) -> None:
        if self._keep is not None:
            self._keep.on_end(model)
