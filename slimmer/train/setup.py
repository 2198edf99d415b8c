"""The loop setup shared by the stages that train (regularize and recover): the loop's settings
from ``compress``'s options, the progress line, and the distillation teacher."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from slimmer.inputs import as_args
from slimmer.stage_config import RecoverConfig
from slimmer.train.data import DataSplits, pad_crop_flip
from slimmer.train.distributed import init_from_env, resolve_device
from slimmer.train.finetune import FinetuneConfig

Say = Callable[[str, str], None]


def finetune_config(
    config: RecoverConfig,
    example: tuple,
    n_train: int,
    steps: int,
    lr: float | None = None,
    distils: bool | None = None,
) -> FinetuneConfig:
    """The loop settings of the recovery stage's options for ``steps`` optimizer steps (fine-tuning or
    regularizing), on ``n_train`` training samples shaped like ``example``, at peak learning rate ``lr``
    and distilling or not (``distils``); by default those of the fine-tuning after pruning
    (``config.finetune_lr``, ``config.distils``).

    Pad-crop-flip augmentation only with ``--augment``, and distillation weighted ``--kd-weight``
    (:attr:`~slimmer.stage_config.RecoverConfig.distillation_weight`: 0.5, 0.9 with search) against
    cross-entropy: a brief fine-tune from a trained model recovers more on the images as they are, and
    more when the labels weigh as much as the original's outputs. Measured on resnet20-fmnist,
    468 steps (docs/BENCHMARKS.md, Accuracy: the "no augmentation" and "KD 0.5" rows)."""
    distils = config.distils if distils is None else distils
    info = init_from_env()
    on_gpu = resolve_device(config.device, info.local_rank).type == "cuda"
    first = as_args(example)[0]
    image = isinstance(first, torch.Tensor) and first.is_floating_point() and first.ndim == 4
    return FinetuneConfig(
        amp=on_gpu and config.amp,
        steps=steps,
        batch_size=min(config.batch_size, n_train),
        lr=config.finetune_lr if lr is None else lr,
        optimizer=config.optimizer,
        device=config.device,
        seed=config.seed,
        kd_alpha=config.distillation_weight if distils else 0.0,
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


def distillation_teacher(
    teacher: nn.Module, config: RecoverConfig, data: DataSplits, distils: bool | None = None
) -> nn.Module | None:
    """The original model when the training distils (``distils``, by default
    :attr:`RecoverConfig.distils`: the fine-tuning after pruning), and always when the data has no
    labels (the only signal)."""
    distils = config.distils if distils is None else distils
    return teacher if distils or data.train.y is None else None
