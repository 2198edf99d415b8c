"""The seam between the fine-tuning loop and everything that shapes the weights.

The loop (``train/finetune.py``) knows nothing of masks, schedules or regularizers: the pipeline
hands it a list of :class:`TrainHook` objects and the loop calls them at fixed points of each
optimizer step. Masks held at zero, schedule-driven mask updates, SR-STE, network slimming, GReg and
HALO are all hooks.
"""

from __future__ import annotations

import torch
from torch import nn


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
