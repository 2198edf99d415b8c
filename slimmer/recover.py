"""The recovery stage of ``compress``: fine-tuning the pruned model, distilling from the original.

It picks the hooks the fine-tuning loop runs (``train/`` never imports ``structures/``): masks held
at zero for one-shot pruning, masks driven by a schedule (iterative, gradual, cyclical), SR-STE for
N:M, and the chosen regularizer. After channel surgery, BatchNorm statistics are re-estimated on
a few training batches before fine-tuning (or instead of it when no steps are asked for).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from slimmer.config import CompressConfig
from slimmer.folding import phase as fold_phase
from slimmer.prune import PruneResult
from slimmer.runplan import RunPlan
from slimmer.structures.nm import nm_mask
from slimmer.structures.unstructured import MaskSet, largest_mask
from slimmer.train.data import DataSplits
from slimmer.train.distributed import init_from_env, wrap_ddp
from slimmer.train.feature_kd import FeatureDistillHook, matched_layers
from slimmer.train.finetune import BN_TYPES, finetune, recalibrate_bn
from slimmer.train.hooks import MaskHook, TrainHook
from slimmer.train.reconstruct import ReconstructResult, reconstruct
from slimmer.train.setup import distillation_teacher, finetune_config, step_printer
from slimmer.train.srste import SRSTEHook

Say = Callable[[str, str], None]


@dataclass(frozen=True)
class Recovered:
    """What the recovery stage did.

    ``model``: the model to carry on with (after layer folding a new traced GraphModule, else the
    model given, fine-tuned in place). ``pruned``: the pruning result as recovery leaves it (the
    regrown masks of ``--regrow``, layer folding's record). ``finetune``: the figures for the
    report's ``finetune`` section, None when there was no training data. ``accuracy_after_reconstruct``:
    top-1 in % after least-squares reconstruction, when it ran and labels exist;
    ``accuracy_after_recalibrate``: the same after BatchNorm statistics were re-estimated (which
    changes the model the earlier figures were taken on)."""

    model: nn.Module
    pruned: PruneResult
    finetune: dict | None
    accuracy_after_reconstruct: float | None = None
    accuracy_after_recalibrate: float | None = None


def scheduled(config: CompressConfig) -> bool:
    """The run plan's decision (:class:`slimmer.runplan.RunPlan`): a schedule prunes during fine-tuning."""
    return RunPlan.resolve(config).scheduled


def _hooks(model: nn.Module, config: CompressConfig, pruned: PruneResult, strategy: list[TrainHook]) -> list[TrainHook]:
    """The hooks the loop runs: the pruning strategy's (a schedule), else the one-shot masks held (or
    regrown), SR-STE for N:M."""
    hooks: list[TrainHook] = list(strategy)  # a pruning schedule moves the masks itself
    if not strategy and regrows(config, pruned):  # the one-shot weights come back; each layer keeps its count
        restore_dense(model, pruned.dense)
        counts = {name: int(mask.sum()) for name, mask in pruned.masks.masks.items()}
        hooks.append(SRSTEHook(counts, {name: partial(largest_mask, keep=k) for name, k in counts.items()}))
    elif not strategy and pruned.masks is not None:
        hooks.append(MaskHook(pruned.masks))
    if pruned.nm is not None and config.nm_fixed_mask:  # the one-shot N:M pattern held, as unstructured masks are
        hooks.append(MaskHook(pruned.nm.masks))
    elif pruned.nm is not None:
        restore_dense(model, pruned.nm.dense)
        hooks.append(SRSTEHook(pruned.nm.layers, partial(nm_mask, n=pruned.nm.n, m=pruned.nm.m)))
    return hooks


def regrows(config: CompressConfig, pruned: PruneResult) -> bool:
    """``--regrow``: fine-tune a one-shot unstructured mask from the weights before masking, re-choosing
    each layer's largest weights at every step (Lin et al., ICLR 2020, Dynamic Model Pruning with
    Feedback; the SR-STE hook's mechanics). Measured on resnet20-fmnist at 90% LAMP, 468 steps
    (docs/BENCHMARKS.md, Accuracy): 92.10 / 92.03% against 91.90 / 91.94% with the mask held fixed
    (today's recipe, 2.6% of the mask moved); 91.58% against 91.43% over 4 seeds with the augmented,
    KD 0.9 one. Not the default: issue 4 asks pruned weights to stay exactly zero."""
    return config.regrow and pruned.masks is not None and set(pruned.masks.masks) <= set(pruned.dense)


def restore_dense(model: nn.Module, dense: dict[str, torch.Tensor]) -> None:
    """Put the N:M layers' weights from before masking back: SR-STE recomputes the mask from them
    at every step (Zhou et al. keep dense weights throughout), and leaves them exactly N:M at the end."""
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, weight in dense.items():
            params[name].copy_(weight)


def reconstructs(config: CompressConfig, pruned: PruneResult) -> bool:
    """Least-squares reconstruction runs after one-shot unstructured or channel pruning (not under a
    schedule, which prunes later; not for N:M, which SR-STE trains, nor with layer folding).

    By default only when no fine-tuning follows. Measured on resnet20-fmnist (docs/BENCHMARKS.md,
    Accuracy): it lifts 90% LAMP from 15.2% to 90.1% and half-MACs channel pruning from 16.7% to
    91.4% by itself, but 468 fine-tuning steps from there ended at 91.02 / 90.92% for 90% LAMP
    against 91.41–91.46% (4 seeds) without it (and 91.66% against 91.73 / 91.59% for channels). ``--reconstruct``
    asks for it before fine-tuning anyway.
    """
    plan = RunPlan.resolve(config)
    return plan.reconstruct and pruned.nm is None and (pruned.masks is not None or pruned.plan is not None)


def kept_outputs(original: nn.Module, pruned: PruneResult) -> dict[str, torch.Tensor]:
    """For each Conv/Linear whose output channels channel surgery removed: the original's channels it kept."""
    kept: dict[str, torch.Tensor] = {}
    if pruned.plan is None:
        return kept
    reference = dict(original.named_modules())
    for name, dims in pruned.plan.removals().items():
        path, _, leaf = name.rpartition(".")
        layer = reference.get(path)
        if leaf == "weight" and 0 in dims and isinstance(layer, (nn.Conv2d, nn.Linear)):
            removed = dims[0]
            kept[path] = torch.tensor([i for i in range(layer.weight.shape[0]) if i not in removed])
    return kept


def _reconstruct(
    model: nn.Module, original: nn.Module, config: CompressConfig, data: DataSplits, pruned: PruneResult, say: Say
) -> ReconstructResult:
    generator = torch.Generator().manual_seed(config.seed)
    pick = torch.randperm(len(data.train), generator=generator)[: config.recon_samples]
    masks = pruned.masks.masks if pruned.masks is not None else None
    return reconstruct(
        model,
        original,
        data.train.x[pick],
        keep_masks=masks,
        kept_outputs=kept_outputs(original, pruned),
        progress=lambda m: say("reconstruct", m),
    )


def layer_distillation(
    model: nn.Module, teacher: nn.Module | None, config: CompressConfig, pruned: PruneResult
) -> FeatureDistillHook | None:
    """The layer-wise distillation hook of ``--kd-layers W`` (the configuration refuses it without a
    teacher or with layer folding, which renames layers), matching every Conv/Linear the models share."""
    if teacher is None or config.kd_layers <= 0:
        return None
    kept = kept_outputs(teacher, pruned) if not scheduled(config) else {}
    layers = matched_layers(model, teacher, kept)
    return FeatureDistillHook(teacher, layers, kept, config.kd_layers) if layers else None


def recover(
    model: nn.Module,
    teacher: nn.Module,
    config: CompressConfig,
    example: tuple,
    data: DataSplits | None,
    pruned: PruneResult,
    say: Say,
    evaluate: Callable[[nn.Module], float] | None = None,
    strategy: tuple[TrainHook, ...] = (),
) -> Recovered:
    """Reconstruct or re-estimate BN statistics after surgery, and fine-tune (``model`` in place).

    ``strategy`` holds the pruning stage's hooks for the loop (a schedule's
    :class:`~slimmer.schedules.ScheduledMaskHook`, from :func:`slimmer.prune_schedule.schedule_hooks`):
    recovery runs them and never calls back into pruning."""
    if data is None or not len(data.train):
        return Recovered(model, pruned, None)
    done: dict = {}
    after_reconstruct = after_recalibrate = None
    if reconstructs(config, pruned) and data.train.feed is not None:  # text: several inputs per sample
        done["reconstruction"] = {"skipped": "layer-wise reconstruction reads one float input; not run on text data"}
    elif reconstructs(config, pruned):
        say(
            "reconstruct",
            f"re-solving the pruned layers by least squares on {min(config.recon_samples, len(data.train))} "
            "training inputs",
        )
        done["reconstruction"] = _reconstruct(model, teacher, config, data, pruned, say).to_dict()
        if evaluate is not None:
            after_reconstruct = evaluate(model)
    has_bn = any(isinstance(m, BN_TYPES) for m in model.modules())
    if pruned.plan is not None and not scheduled(config) and has_bn:  # a schedule removes channels after fine-tuning
        say("recalibrate", "re-estimating BatchNorm statistics after channel removal")
        recalibrate_bn(model, data.train, batches=20, batch_size=min(128, len(data.train)), seed=config.seed)
        done["bn_recalibrated"] = True
        if evaluate is not None and config.finetune_steps == 0:  # else after_finetune describes the model
            after_recalibrate = evaluate(model)
    if config.finetune_steps == 0:
        return Recovered(model, pruned, done, after_reconstruct, after_recalibrate)
    hooks = _hooks(model, config, pruned, list(strategy))
    cfg = finetune_config(config.stages.recover, example, len(data.train), config.finetune_steps)
    teacher_or_none = distillation_teacher(teacher, config.stages.recover, data)
    layered = layer_distillation(model, teacher_or_none, config, pruned)
    if layered is not None:
        hooks.append(layered)
        done["kd_layers"] = {"weight": config.kd_layers, "layers": len(layered.layers)}
    how = _how(config, data, cfg, layered, pruned, distils=teacher_or_none is not None)
    say("finetune", f"fine-tuning {config.finetune_steps} steps ({how})")
    progress = step_printer(say, "finetune", "fine-tune")
    info = init_from_env()
    if RunPlan.resolve(config).fold_phase:  # linearize, fold, merge (Ben Dror et al.)
        result, pruned = fold_phase.finetune_with_folding(
            model,
            teacher_or_none,
            data.train,
            cfg,
            hooks,
            example,
            pruned,
            say,
            progress if info.is_main else None,
            gate=config.fold_latency_gate,
            alpha_start=config.fold_alpha_start,
        )
        model = pruned.model
    else:
        student = wrap_ddp(model, info) if info.world_size > 1 else model
        result = finetune(student, teacher_or_none, data.train, cfg, hooks, progress=progress if info.is_main else None)
    done.update(result.to_dict())
    if pruned.nm is not None:
        done["nm"] = {"mask_held": config.nm_fixed_mask, "mask_changed": nm_mask_changed(model, pruned.nm.masks)}
    for hook in hooks:
        if isinstance(hook, SRSTEHook) and regrows(config, pruned):
            final = hook.masks()
            moved = sum(int((final[n] != m).sum()) for n, m in pruned.masks.masks.items())
            done["regrow"] = {"mask_changed": moved / max(1, pruned.masks.total)}
            pruned = pruned.but(masks=MaskSet(final, warnings=pruned.masks.warnings))
        elif isinstance(hook, SRSTEHook) and pruned.nm is not None and set(hook.names) == set(pruned.nm.layers):
            # SR-STE moved the N:M pattern: the export's read-back locates the weights by the pattern they ship
            nm = dataclasses.replace(pruned.nm, masks=MaskSet(hook.masks(), warnings=pruned.nm.masks.warnings))
            pruned = pruned.but(nm=nm)
    return Recovered(model, pruned, done, after_reconstruct, after_recalibrate)


def nm_mask_changed(model: nn.Module, masks: MaskSet) -> float:
    """Fraction of the one-shot N:M pattern's entries (kept or zeroed) that fine-tuning changed: SR-STE
    may swap a pruned weight in when it outgrows a kept one; 0.0 when the mask was held."""
    params = dict(model.named_parameters(remove_duplicate=False))
    flips = sum(int(((params[n].detach() != 0) != m).sum()) for n, m in masks.masks.items() if n in params)
    return flips / max(1, masks.total)


def _how(
    config: CompressConfig,
    data: DataSplits,
    cfg,
    layered: FeatureDistillHook | None,
    pruned: PruneResult,
    distils: bool,
) -> str:
    """The fine-tuning recipe in words, for the progress line; ``distils``: whether a teacher was chosen
    (:func:`slimmer.train.setup.distillation_teacher`)."""
    how = "distilling from the original" if distils else "labels only"
    if data.train.feed is not None and data.train.y is None:
        how = "distilling the original's mean-pooled embeddings and hidden states: cosine + MSE"
    if distils and data.train.y is not None:
        how += f" at weight {cfg.kd_alpha:g}, the rest cross-entropy"
    if cfg.augment is not None:
        how += ", pad-crop-flip augmentation"
    if layered is not None:
        how += f", layer by layer over {len(layered.layers)} layers"
    if regrows(config, pruned):
        how += ", the mask may move (--regrow)"
    return how
