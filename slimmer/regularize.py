"""The regularized phase of ``compress``: train with a sparsity-inducing penalty, then prune.

``--regularizer NAME`` runs ``--reg-steps`` optimizer steps (default: as many as
``--finetune-steps``) of the fine-tuning loop, distilling from the original as usual, with one of
the hooks of :mod:`slimmer.train.regularizers`; the final pruning comes after:

- ``slimming`` (channel): L1 on BatchNorm γ, then channels ranked by ``bn-scale``.
- ``greg`` (unstructured or channel): the weights or channels to remove are chosen first by the
  configured criterion, pushed towards zero by a growing L2 penalty, then removed exactly as chosen.
- ``greg2`` (unstructured): a growing L2 on every weight first; the weights to remove are picked
  by their magnitude after it (per-layer ratios from the configured criterion), then pushed as greg.
- ``halo`` (unstructured): trainable per-weight scales with the hierarchical adaptive lasso on
  every Conv weight, then pruning by the configured criterion (magnitude by default).

The papers regularize for 60k–125k steps; a brief phase would see almost no penalty at their
constants, so each schedule here is scaled to the budget given (the same total dose, or the same
growth curve compressed), as documented on each function.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimmer.config import CompressConfig
from slimmer.errors import ConfigError
from slimmer.prune import PruneResult, prune, record_masks, weights_before_masking
from slimmer.structures.unstructured import MaskSet, prunable_weights
from slimmer.surgery import mask_model, slice_values
from slimmer.train.data import DataSplits
from slimmer.train.distributed import init_from_env, wrap_ddp
from slimmer.train.finetune import finetune
from slimmer.train.hooks import TrainHook
from slimmer.train.regularizers import (
    GrowingRegularizer,
    GrowingRegularizerPick,
    HaloRegularizer,
    SlimmingRegularizer,
)

Say = Callable[[str, str], None]

SLIMMING_LAMBDA = 1e-5
"""Liu et al.'s λ for ResNet-164 and DenseNet-40 (1e-4 for VGG)."""
SLIMMING_REFERENCE_STEPS = 160 * 391
"""The paper's run: 160 epochs of CIFAR at batch 64 (391 steps per epoch at batch 128)."""
GREG_RAMP = 0.8
"""Fraction of the phase over which GReg's λ grows to its cap (the rest holds it there)."""


@dataclass(frozen=True)
class Regularized:
    """What the phase did (immutable); ``chosen`` is set when the removal was fixed before it (greg, greg2)."""

    name: str
    steps: int
    prune_config: CompressConfig
    details: dict = field(default_factory=dict)
    chosen: PruneResult | None = None


def regularize(
    model: nn.Module,
    teacher: nn.Module,
    config: CompressConfig,
    example: tuple,
    data: DataSplits,
    say: Say,
) -> Regularized:
    """Train ``model`` in place with ``config.regularizer``; the returned ``prune_config`` is what
    the final pruning uses, or ``chosen`` when set (apply it with :func:`apply_chosen`)."""
    from slimmer.train.setup import distillation_teacher, finetune_config, step_printer

    name, steps = config.regularizer, config.regularize_steps
    if name is None:
        raise ConfigError("regularize() needs config.regularizer")
    hook, finish, prune_config, details = _setup(name, model, config, example, data, steps)
    say("regularize", f"regularizing with {name} for {steps} steps before the final pruning")
    info = init_from_env()
    student = wrap_ddp(model, info) if info.world_size > 1 else model
    recover = config.stages.recover
    done = finetune(
        student,
        distillation_teacher(teacher, recover, data, recover.phase_distils),
        data.train,
        finetune_config(recover, example, len(data.train), steps, recover.phase_lr, recover.phase_distils),
        [hook],
        progress=step_printer(say, "regularize", "regularize") if info.is_main else None,
    )
    extra, chosen = finish()
    details = {
        **details,
        "regularizer": name,
        "steps": steps,
        "lr": done.lr,
        "kd_weight": done.kd_weight,
        "final_loss": done.final_loss,
        **extra,
    }
    return Regularized(name=name, steps=steps, prune_config=prune_config, details=details, chosen=chosen)


Finish = Callable[[], tuple[dict[str, Any], "PruneResult | None"]]
"""Run once the phase is over: ``(figures for the report, the removal fixed beforehand or None)``."""


def _setup(
    name: str,
    model: nn.Module,
    config: CompressConfig,
    example: tuple,
    data: DataSplits,
    steps: int,
) -> tuple[TrainHook, Finish, CompressConfig, dict[str, Any]]:
    """The hook for ``name``, what to do once the phase is over, the final pruning's config and the
    figures known before the phase."""
    if name == "slimming":
        lam = SLIMMING_LAMBDA * max(1.0, SLIMMING_REFERENCE_STEPS / steps)
        hook = SlimmingRegularizer(lam=lam)

        def finish() -> tuple[dict[str, Any], None]:
            gammas = torch.cat([g.detach().abs().flatten() for g in hook.gammas(model).values()])
            return {"gamma_below_1e-2": float((gammas < 1e-2).float().mean())}, None

        return hook, finish, dataclasses.replace(config, criterion="bn-scale"), {"lambda": lam}

    if name == "halo":
        convs = [n for n, w in prunable_weights(model).items() if w.ndim > 2]  # the paper: Conv only
        halo = HaloRegularizer(convs)

        def finish() -> tuple[dict[str, Any], None]:
            scales = torch.cat([s.detach().flatten() for s in halo.scales().values()])
            weights = torch.cat([model.get_parameter(n).detach().abs().flatten() for n in convs])
            return {
                "penalty_scale": halo.scale,
                "scale_mean": float(scales.mean()),
                "weights_below_1e-3": float((weights < 1e-3).float().mean()),
            }, None

        return halo, finish, config, {}

    # greg, greg2: choose what to remove before the phase, on a copy (the model stays dense)
    chosen = prune(copy.deepcopy(model), config, example, data)
    ramp = max(1, round(GREG_RAMP * steps))
    if name == "greg":
        keep = _keep_masks(model, chosen)
        greg = GrowingRegularizer(keep, lam_step=1.0 / ramp, update_every=1, lam_max=1.0)

        def finish() -> tuple[dict[str, Any], PruneResult]:
            return {"lambda_final": greg.lam, **_pushed_magnitude(model, keep)}, chosen

        return greg, finish, config, {}

    half = max(1, steps // 2)
    ratios = chosen.masks.per_layer_sparsity()
    greg2 = GrowingRegularizerPick(
        ratios, pick_lam_step=1e-2 / half, lam_step=1.0 / max(1, round(GREG_RAMP * (steps - half))), update_every=1
    )

    def finish_pick() -> tuple[dict[str, Any], PruneResult]:
        if not greg2.picked:
            greg2.pick(model)
        masks = MaskSet({n: m.clone() for n, m in greg2.keep_masks.items()})
        return {"lambda_final": greg2.lam, **_pushed_magnitude(model, greg2.keep_masks)}, record_masks(masks, config)

    return greg2, finish_pick, config, {}


def apply_chosen(model: nn.Module, chosen: PruneResult, keep_dense: bool = False) -> PruneResult:
    """Zero what greg chose (its channel plan or weight masks) in ``model``. Returns ``chosen``, with
    the weights that were zeroed kept in ``dense`` when ``keep_dense`` (``--regrow``)."""
    if chosen.plan is not None:
        chosen = chosen.but(masked_values=slice_values(model, chosen.plan))  # for a group surgery rolls back
        mask_model(model, chosen.plan)
    if chosen.masks is not None:
        if keep_dense:
            chosen = chosen.but(dense=weights_before_masking(model, chosen.masks))
        chosen.masks.apply(model)
    return chosen


def _keep_masks(model: nn.Module, chosen: PruneResult) -> dict[str, torch.Tensor]:
    """True = keep, by parameter name: the unstructured masks, or every slice a channel plan zeroes."""
    if chosen.plan is None:
        return dict(chosen.masks.masks)
    params = dict(model.named_parameters(remove_duplicate=False))
    keep: dict[str, torch.Tensor] = {}
    for tensor, dims in chosen.plan.removals().items():
        if tensor not in params:  # a buffer (BN running statistics): not trained
            continue
        mask = torch.ones_like(params[tensor], dtype=torch.bool)
        for dim, indices in dims.items():
            mask.index_fill_(dim, torch.tensor(sorted(indices), dtype=torch.long), False)
        keep[tensor] = mask
    return keep


def _pushed_magnitude(model: nn.Module, keep: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean |w| of the weights being removed and of the kept ones, after the phase."""
    params = dict(model.named_parameters(remove_duplicate=False))
    pushed = [params[n].detach()[~m].abs() for n, m in keep.items() if (~m).any()]
    kept = [params[n].detach()[m].abs() for n, m in keep.items() if m.any()]
    return {
        "removed_mean_abs": float(torch.cat(pushed).mean()) if pushed else 0.0,
        "kept_mean_abs": float(torch.cat(kept).mean()) if kept else 0.0,
    }
