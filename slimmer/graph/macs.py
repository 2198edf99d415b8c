"""Multiply-accumulate counts from ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2).

The counter sees every matmul-like ATen op (conv, mm, bmm, addmm, attention), so no per-layer
formula of our own is needed. Counting on a ``meta``-device copy costs no arithmetic, which lets
the channel planner re-count after every trial removal.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
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


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are on the ``meta`` device (eval mode).

    The weights are never copied: each parameter and buffer is mapped to its meta twin before the
    module tree is deep-copied (tied weights stay tied), so the copy costs the module objects only,
    not the model's bytes (issue 20: a deep copy first and ``.to("meta")`` after held a second full
    model in memory for a moment)."""
    memo: dict[int, Any] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in memo:
            meta = tensor.detach().to("meta")
            if isinstance(tensor, nn.Parameter):
                meta = nn.Parameter(meta, requires_grad=tensor.requires_grad)
            memo[id(tensor)] = meta
    return copy.deepcopy(model, memo).eval()


def to_meta(model: nn.Module, example_inputs: Sequence[Any]) -> tuple[nn.Module, tuple[Any, ...]]:
    """A ``meta``-device copy of the model (eval mode, see :func:`meta_copy`) and of its inputs, for
    shape-only counting."""
    meta_model = meta_copy(model)
    meta_inputs = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, tuple(example_inputs))
    return meta_model, meta_inputs


def counting_copy(model: nn.Module, example_inputs: Sequence[Any]) -> tuple[nn.Module, tuple[Any, ...]]:
    """A copy of the model and inputs to count MACs on: ``meta`` when the forward runs there, else real.

    Hugging Face models read tensor values while building their attention masks (``.item()``),
    which ``meta`` tensors cannot do; those are counted on a real deep copy (eval mode) instead.
    """
    meta_model, meta_inputs = to_meta(model, example_inputs)
    try:
        with torch.no_grad():
            meta_model(*meta_inputs)
    except Exception:  # noqa: BLE001 - any failure on meta: count on real tensors
        return copy.deepcopy(model).eval(), tuple(example_inputs)
    return meta_model, meta_inputs


class MacsByWeight:
    """MACs attributed to each Conv/Linear weight, to re-estimate MACs after channel removal.

    A convolution's or linear layer's MACs are its weight's element count times the number of
    output positions, so removing channels scales them by the weight's kept fraction exactly.
    MACs of other ops (attention matmuls, ...) are kept constant; the planner confirms its final
    choice with a real count.
    """

    def __init__(self, model: nn.Module, example_inputs: Sequence[Any]) -> None:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*example_inputs)
        per_module = {key.split(".", 1)[1]: flops for key, flops in counter.get_flop_counts().items() if "." in key}
        self.total = int(counter.get_total_flops()) // 2
        self.weights: dict[str, tuple[int, tuple[int, ...]]] = {}
        for path, module in model.named_modules():
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and path in per_module:
                macs = sum(per_module[path].values()) // 2
                self.weights[f"{path}.weight"] = (macs, tuple(module.weight.shape))

    def estimate(self, removals: dict[str, dict[int, set[int]]]) -> int:
        """MACs after removing ``removals`` (tensor name → dim → removed indices)."""
        return self.estimate_counts(
            {name: {dim: len(idx) for dim, idx in dims.items()} for name, dims in removals.items()}
        )

    def estimate_counts(self, removed: Mapping[str, Mapping[int, int]]) -> int:
        """MACs after removing ``removed[name][dim]`` indices of each weight's dimension (counts only)."""
        macs = float(self.total)
        for name, dims in removed.items():
            if name in self.weights:
                original, shape = self.weights[name]
                kept = 1.0
                for dim, count in dims.items():
                    kept *= (shape[dim] - count) / shape[dim]
                macs -= original * (1.0 - kept)
        return round(macs)
