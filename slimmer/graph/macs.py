"""Multiply-accumulate counts from ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2).

The counter sees every matmul-like ATen op (conv, mm, bmm, addmm, attention), so no per-layer
formula of our own is needed. Counting on a ``meta``-device copy costs no arithmetic, which lets
the channel planner re-count after every trial removal.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, example_inputs: Sequence[Any]) -> int:
    """MACs of one forward of ``model`` on ``example_inputs`` (run under ``torch.no_grad``)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*example_inputs)
    return int(counter.get_total_flops()) // 2


def to_meta(model: nn.Module, example_inputs: Sequence[Any]) -> tuple[nn.Module, tuple[Any, ...]]:
    """A ``meta``-device copy of the model (eval mode) and of its inputs, for shape-only counting."""
    meta_model = copy.deepcopy(model).to("meta").eval()
    meta_inputs = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, tuple(example_inputs))
    return meta_model, meta_inputs
