"""Fold inference-mode BatchNorm into the Conv/Linear layer before it.

BN in eval mode is the per-channel affine map y = γ (x − μ)/√(σ² + ε) + β, so after a layer
x = W∗u + b it folds exactly into W' = W·s, b' = (b − μ)·s + β with s = γ/√(σ² + ε) (Ioffe &
Szegedy, ICML 2015; the standard inference fusion, and step 3 of Layer Folding, Ben Dror et al.,
BMVC 2022). The pairs come from the captured graph: the BN's input must be the output of one
Conv/Linear layer and have no other user (otherwise the un-normalized tensor is still needed).
Arithmetic runs in float64 and is cast back, so the folded model equals the original in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimmer.folding._modules import CONV_OPS, LINEAR_OPS, call_counts, innermost_module, layer_of, set_module
from slimmer.graph.capture import capture, module_path, op_name

BN_OPS = {"aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default"}
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class FoldResult:
    """The model (changed in place), the ``(layer, bn)`` pairs folded, and BNs left with the reason."""

    model: nn.Module
    folded: list[tuple[str, str]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def fold_bn_into(layer: nn.Module, bn: nn.Module) -> None:
    """Fold eval-mode ``bn`` into ``layer`` (Conv or Linear, output channels on dim 0) in place."""
    weight = layer.weight.detach().double()
    mean = bn.running_mean.detach().double()
    scale = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    shift = torch.zeros_like(mean)
    if bn.affine:
        scale = scale * bn.weight.detach().double()
        shift = bn.bias.detach().double()
    bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(mean)
    new_weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    new_bias = (bias - mean) * scale + shift
    dtype = layer.weight.dtype
    with torch.no_grad():
        layer.weight.copy_(new_weight.to(dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias.to(device=layer.weight.device, dtype=dtype))
        else:
            layer.bias.copy_(new_bias.to(dtype))


def _refusal(model: nn.Module, captured: Any, node: Any, counts: dict[str, int]) -> str | tuple[str, str]:
    """The (layer, bn) pair for a BN node, or why it cannot be folded."""
    bn_path = innermost_module(node)
    if bn_path is None:
        return "batch norm issued outside any module (functional call)"
    bn = model.get_submodule(bn_path) if bn_path else model
    if not isinstance(bn, BN_TYPES):
        return f"batch norm issued from a {type(bn).__name__}, not a BatchNorm module"
    if bn.running_mean is None or bn.running_var is None:
        return "track_running_stats=False: the BN normalizes with batch statistics"
    if counts.get(bn_path, 0) != 1:
        return "the BN module is called more than once"
    source = node.args[0]
    found = layer_of(captured, model, source) if hasattr(source, "op") else None
    if found is None:
        producer = module_path(source) if hasattr(source, "op") else "a constant"
        return f"its input comes from {producer}, not a Conv/Linear layer"
    layer_path, layer = found
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return "the layer before it is a transposed conv (output channels on dim 1)"
    if counts.get(layer_path, 0) != 1:
        return f"{layer_path} is called more than once (or pads separately)"
    if len(source.users) != 1:
        return f"the output of {layer_path} has other users besides the BN"
    if isinstance(layer, nn.Linear) and source.meta["val"].dim() != 2:
        return f"{layer_path} outputs a {source.meta['val'].dim()}-d tensor: BN channels are not its features"
    return layer_path, bn_path


def _feeds_a_layer(node: Any) -> bool:
    users = list(node.users)
    return len(users) == 1 and users[0].op == "call_function" and op_name(users[0]) in CONV_OPS | LINEAR_OPS


def fold_batchnorm(
    model: nn.Module, example_input: torch.Tensor | Sequence[Any], *, only_between_layers: bool = False
) -> FoldResult:
    """Fold every foldable eval-mode BatchNorm into its producer and replace it with ``nn.Identity``.

    The model is changed in place (and returned in the result). A BN that cannot be folded stays
    and is listed in ``skipped`` with the reason. With ``only_between_layers`` only the BNs whose
    output goes straight into another Conv/Linear layer are folded (what a merge needs); the others
    are left alone, silently (layer folding keeps them for the fine-tuning that follows).
    """
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    captured = capture(model, inputs)
    counts = call_counts(captured)
    result = FoldResult(model=model)
    pairs: list[tuple[str, str]] = []
    for node in captured.graph.nodes:
        if node.op != "call_function" or op_name(node) not in BN_OPS:
            continue
        if only_between_layers and not _feeds_a_layer(node):
            continue
        outcome = _refusal(model, captured, node, counts)
        if isinstance(outcome, str):
            result.skipped[innermost_module(node) or node.name] = outcome
        else:
            pairs.append(outcome)
    for layer_path, bn_path in pairs:
        layer = model.get_submodule(layer_path) if layer_path else model
        fold_bn_into(layer, model.get_submodule(bn_path))
        set_module(model, bn_path, nn.Identity())
        result.folded.append((layer_path, bn_path))
    return result
