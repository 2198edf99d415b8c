"""The recovery stage of ``compress``: fine-tuning the pruned model, distilling from the original.

It picks the hooks the fine-tuning loop runs (``train/`` never imports ``structures/``): masks held
at zero for one-shot pruning, masks driven by a schedule (iterative, gradual, cyclical), SR-STE for
N:M, and the chosen regularizer. After channel surgery, BatchNorm statistics are re-estimated on
a few training batches before fine-tuning (or instead of it when no steps are asked for).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from slimmer.config import CompressConfig
from slimmer.folding import phase as fold_phase
from slimmer.inputs import as_args
from slimmer.prune import PruneResult, channel_masks_for, schedule_final, unstructured_masks_for
from slimmer.runplan import RunPlan
from slimmer.schedules import ScheduledMaskHook, build_schedule
from slimmer.structures.channel_masks import ChannelMasks
from slimmer.structures.nm import nm_mask
from slimmer.structures.unstructured import MaskSet, largest_mask
from slimmer.train.data import DataSplits, pad_crop_flip
from slimmer.train.distributed import init_from_env, resolve_device, wrap_ddp
from slimmer.train.feature_kd import FeatureDistillHook, matched_layers
from slimmer.train.finetune import FinetuneConfig, finetune, recalibrate_bn
from slimmer.train.hooks import MaskHook, TrainHook
from slimmer.train.reconstruct import ReconstructResult, reconstruct
from slimmer.train.srste import SRSTEHook

Say = Callable[[str, str], None]


def scheduled(config: CompressConfig) -> bool:
    """The run plan's decision (:class:`slimmer.runplan.RunPlan`): a schedule prunes during fine-tuning."""
    return RunPlan.resolve(config).scheduled


def _hooks(
    model: nn.Module, config: CompressConfig, example: tuple, data: DataSplits, pruned: PruneResult
) -> list[TrainHook]:
    hooks: list[TrainHook] = []
    if scheduled(config):
        if "channel" in config.methods:  # channel masks; the channels go once, after fine-tuning

            def recompute(m: nn.Module, fraction: float):
                return channel_masks_for(m, config, example, data, fraction, groups=pruned.groups)
        else:

            def recompute(m: nn.Module, fraction: float):
                return unstructured_masks_for(m, config, example, data, fraction)

        interval = max(1, config.finetune_steps // 50)
        hooks.append(
            ScheduledMaskHook(build_schedule(config.schedule, schedule_final(config), interval=interval), recompute)
        )
    elif regrows(config, pruned):  # the one-shot weights come back; each layer keeps its count of weights
        restore_dense(model, pruned.dense)
        counts = {name: int(mask.sum()) for name, mask in pruned.masks.masks.items()}
        hooks.append(SRSTEHook(counts, {name: partial(largest_mask, keep=k) for name, k in counts.items()}))
    elif pruned.masks is not None:
        hooks.append(MaskHook(pruned.masks))
    if pruned.nm is not None:
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
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, weight in dense.items():
            params[name].copy_(weight)


def finetune_config(config: CompressConfig, example: tuple, n_train: int, steps: int) -> FinetuneConfig:
    """The loop settings of ``compress`` for ``steps`` optimizer steps (fine-tuning or regularizing).

    Pad-crop-flip augmentation only with ``--augment``, and distillation weighted ``--kd-weight`` (0.5)
    against cross-entropy: a brief fine-tune from a trained model recovers more on the images as they
    are, and more when the labels weigh as much as the original's outputs. Measured on resnet20-fmnist,
    468 steps (docs/BENCHMARKS.md, Accuracy: the "no augmentation" and "KD 0.5" rows)."""
    info = init_from_env()
    on_gpu = resolve_device(config.device, info.local_rank).type == "cuda"
    first = as_args(example)[0]
    image = isinstance(first, torch.Tensor) and first.is_floating_point() and first.ndim == 4
    return FinetuneConfig(
        amp=on_gpu and config.amp,
        steps=steps,
        batch_size=min(config.batch_size, n_train),
        lr=config.lr,
        optimizer=config.optimizer,
        device=config.device,
        seed=config.seed,
        kd_alpha=config.kd_weight if config.kd else 0.0,
        progress_every_s=config.progress_every_s,
        augment=pad_crop_flip(pad=max(1, first.shape[-1] // 8)) if config.augment and image else None,
        output_name=config.output_name,
    )


def step_printer(say: Say, stage: str, label: str) -> Callable[[dict], None]:
    """A loop progress callback that reports one line per update through ``say``."""

    def progress(p: dict) -> None:
        say(
            stage,
            f"{label} step {p['step']}/{p['total']}  loss {p['loss']:.4f}  lr {p['lr']:.2e}  "
            f"{p['samples_per_s']:.0f} samples/s",
        )

    return progress


def distillation_teacher(teacher: nn.Module, config: CompressConfig, data: DataSplits) -> nn.Module | None:
    """The original model with ``--kd``, and always when the data has no labels (the only signal)."""
    return teacher if config.kd or data.train.y is None else None


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
) -> dict | None:
    """Re-estimate BN statistics after surgery and fine-tune; return what was done (or None)."""
    if data is None or not len(data.train):
        return None
    done: dict = {}
    if reconstructs(config, pruned):
        say(
            "reconstruct",
            f"re-solving the pruned layers by least squares on {min(config.recon_samples, len(data.train))} "
            "training inputs",
        )
        done["reconstruction"] = _reconstruct(model, teacher, config, data, pruned, say).to_dict()
        if evaluate is not None:
            done["accuracy_after_reconstruct"] = evaluate(model)
    if pruned.plan is not None and not scheduled(config):  # a schedule removes channels after fine-tuning
        say("recalibrate", "re-estimating BatchNorm statistics after channel removal")
        recalibrate_bn(model, data.train, batches=20, batch_size=min(128, len(data.train)), seed=config.seed)
        done["bn_recalibrated"] = True
    if config.finetune_steps == 0:
        return done
    hooks = _hooks(model, config, example, data, pruned)
    cfg = finetune_config(config, example, len(data.train), config.finetune_steps)
    teacher_or_none = distillation_teacher(teacher, config, data)
    layered = layer_distillation(model, teacher_or_none, config, pruned)
    if layered is not None:
        hooks.append(layered)
        done["kd_layers"] = {"weight": config.kd_layers, "layers": len(layered.layers)}

    progress = step_printer(say, "finetune", "fine-tune")
    how = "distilling from the original" if config.kd else "labels only"
    if config.kd and data.train.y is not None:
        how += f" at weight {config.kd_weight:g}, the rest cross-entropy"
    if cfg.augment is not None:
        how += ", pad-crop-flip augmentation"
    if layered is not None:
        how += f", layer by layer over {len(layered.layers)} layers"
    if regrows(config, pruned):
        how += ", the mask may move (--regrow)"
    say("finetune", f"fine-tuning {config.finetune_steps} steps ({how})")
    info = init_from_env()
    if RunPlan.resolve(config).fold_phase:  # linearize, fold, merge (Ben Dror et al.)
        result = fold_phase.finetune_with_folding(
            model, teacher_or_none, data.train, cfg, hooks, example, pruned, say, progress if info.is_main else None
        )
    else:
        student = wrap_ddp(model, info) if info.world_size > 1 else model
        result = finetune(student, teacher_or_none, data.train, cfg, hooks, progress=progress if info.is_main else None)
    done.update(result.to_dict())
    for hook in hooks:
        if isinstance(hook, SRSTEHook) and regrows(config, pruned):
            final = hook.masks()
            moved = sum(int((final[n] != m).sum()) for n, m in pruned.masks.masks.items())
            done["regrow"] = {"mask_changed": moved / max(1, pruned.masks.total)}
            pruned.masks = MaskSet(final, warnings=pruned.masks.warnings)
        if isinstance(hook, ScheduledMaskHook) and isinstance(hook.masks, ChannelMasks):
            pruned.plan = hook.masks.plan  # removed by the caller (shrink_model), once
            if pruned.plan is not None:
                pruned.details["channels_pruned"] = pruned.plan.channels_pruned
            pruned.per_layer = hook.masks.per_layer_sparsity()
            if config.macs_target is None:
                pruned.sparsity_achieved = hook.masks.sparsity
            pruned.warnings += [w for w in hook.warnings if w not in pruned.warnings]
            done["schedule_updates"] = len(hook.updates)
        elif isinstance(hook, ScheduledMaskHook) and hook.masks is not None:
            pruned.masks = hook.masks
            pruned.sparsity_achieved = hook.masks.sparsity
            pruned.per_layer = hook.masks.per_layer_sparsity()
            pruned.warnings += hook.warnings
            done["schedule_updates"] = len(hook.updates)
    return done
