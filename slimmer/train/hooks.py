"""The seam between the fine-tuning loop and everything that shapes the weights.

The loop (``train/finetune.py``) knows nothing of masks, schedules or regularizers: the pipeline
hands it a list of :class:`TrainHook` objects and the loop calls them at fixed points of each
optimizer step. Masks held at zero, schedule-driven mask updates, SR-STE, network slimming, GReg and
HALO are all hooks.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from slimmer.errors import ConfigError


class TrainHook:
    """No-op base: override what you need. ``step`` counts optimizer steps from 0."""

    def on_start(self, model: nn.Module, total_steps: int) -> None:
        """Before the first step (e.g. create extra trainable parameters)."""

    def extra_parameters(self) -> list[nn.Parameter]:
        """Extra trainable tensors the optimizer must update (e.g. HALO's per-weight scales)."""
        return []

    def loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        """An extra loss term added to the task loss (e.g. a penalty), or None."""
        return None

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Between ``backward`` and ``optimizer.step``: edit gradients (e.g. SR-STE decay, L1 on γ)."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """After ``optimizer.step``: re-apply masks, update masks on a schedule, grow a penalty."""

    def on_end(self, model: nn.Module) -> None:
        """After the last step."""


class KeepMasks(Protocol):
    """What :class:`MaskHook` needs from a mask set (``slimmer.structures.unstructured.MaskSet``)."""

    masks: dict[str, torch.Tensor]


class MaskHook(TrainHook):
    """Hold pruned weights at exactly zero during fine-tuning.

    Weights are zeroed before the first step and after every optimizer step, and their gradients are
    zeroed before every step, so momentum buffers (SGD) and moment estimates (Adam) of pruned weights
    stay zero too: nothing pushes them back between steps.
    """

    def __init__(self, masks: KeepMasks) -> None:
        self.masks = masks
        self._pairs: list[tuple[nn.Parameter, torch.Tensor]] = []

    def set_masks(self, model: nn.Module, masks: KeepMasks) -> None:
        """Switch to new masks (a schedule's update) and zero the newly pruned weights now."""
        self.masks = masks
        params = dict(model.named_parameters(remove_duplicate=False))
        missing = sorted(set(masks.masks) - set(params))
        if missing:
            raise ConfigError(f"masks name parameters the model does not have: {', '.join(missing[:5])}")
        self._pairs = []
        for name, mask in masks.masks.items():
            p = params[name]
            if tuple(mask.shape) != tuple(p.shape):
                raise ConfigError(f"mask {name} has shape {tuple(mask.shape)}, the weight {tuple(p.shape)}")
            self._pairs.append((p, mask.to(device=p.device, dtype=p.dtype)))
        self._zero_weights()

    def _zero_weights(self) -> None:
        with torch.no_grad():
            for p, mask in self._pairs:
                p.mul_(mask)

    def on_start(self, model: nn.Module, total_steps: int) -> None:
        self.set_masks(model, self.masks)

    def after_backward(self, model: nn.Module, step: int) -> None:
        for p, mask in self._pairs:
            if p.grad is not None:
                p.grad.mul_(mask)

    def after_step(self, model: nn.Module, step: int) -> None:
        self._zero_weights()
