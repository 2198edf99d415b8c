"""Merge two consecutive linear layers into one (Layer Folding, Ben Dror et al., BMVC 2022).

Once the activation between them is the identity, ``conv2(conv1(x))`` is one convolution. With
conv1 = (W1, b1, kernel k1, stride s1, padding p1) and conv2 = (W2, b2, k2, s2, padding 0):

    K[o, d, s1·u + p] += Σ_c W2[o, c, u] · W1[c, d, p]      (per spatial axis)
    kernel  s1·(k2 − 1) + k1   (k1 + k2 − 1 when s1 = 1)
    stride  s1·s2,   padding p1,   bias b2 + Σ_{c,u} W2[o, c, u] · b1[c]

and the output size is the same (⌊⌊A/s1⌋ − (k2−1))/s2⌋ = ⌊(A − s1(k2−1))/(s1 s2)⌋).

**Exactness.** The rule is exact only when conv2 has no padding: conv2 pads the *intermediate*
with zeros, whereas the merged conv would see conv1 applied to the padded input there (its
border values, plus b1). So ``p2 ≠ 0`` is refused unless ``allow_border_approx=True``, which uses
the paper's padding p1 + s1·p2 — exact on interior outputs, different on the outermost
⌈p2⌉-wide border (the paper fine-tunes afterwards). Also refused: groups ≠ 1, dilation ≠ 1,
non-zero padding modes, string paddings, transposed convs. Linear∘Linear is W2·W1, b2 + W2·b1.

A residual ``x + conv2(conv1(x))`` folds the skip into the merged kernel's centre tap with
:func:`add_identity` (needs stride 1, in = out channels, and an output the size of the input).
"""

from __future__ import annotations

import torch
from torch import nn

from slimmer.errors import InputError


class MergeRefused(InputError):
    """Two layers cannot be merged exactly; ``reason`` says why (exit 3)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot merge: {reason}")
        self.reason = reason


def _conv_refusal(conv: nn.Module, which: str) -> str | None:
    if type(conv) is not nn.Conv2d:
        return f"{which} is a {type(conv).__name__}, only nn.Conv2d is merged"
    if conv.groups != 1:
        return f"{which} has groups={conv.groups} (only groups=1 is merged)"
    if tuple(conv.dilation) != (1, 1):
        return f"{which} has dilation {tuple(conv.dilation)}"
    if isinstance(conv.padding, str):
        return f"{which} has padding={conv.padding!r} (give integer padding)"
    if conv.padding_mode != "zeros" and any(conv.padding):
        return f"{which} pads with padding_mode={conv.padding_mode!r}"
    return None


def merge_refusal(first: nn.Module, second: nn.Module, *, allow_border_approx: bool = False) -> str | None:
    """Why ``second(first(x))`` cannot be merged into one layer, or None when it can."""
    if isinstance(first, nn.Linear) or isinstance(second, nn.Linear):
        if not (type(first) is nn.Linear and type(second) is nn.Linear):
            return "a Linear layer only merges with another Linear layer"
        if first.out_features != second.in_features:
            return f"shape mismatch: {first.out_features} outputs into {second.in_features} inputs"
        return None
    for conv, which in ((first, "the first conv"), (second, "the second conv")):
        reason = _conv_refusal(conv, which)
        if reason:
            return reason
    if first.out_channels != second.in_channels:
        return f"shape mismatch: {first.out_channels} channels into {second.in_channels}"
    if any(second.padding) and not allow_border_approx:
        return (
            f"the second conv pads the intermediate by {tuple(second.padding)}: the merged conv "
            "differs on the border (pass allow_border_approx=True to accept that)"
        )
    return None


def merge_linears(first: nn.Linear, second: nn.Linear) -> nn.Linear:
    """One ``nn.Linear`` equal to ``second(first(x))`` (computed in float64)."""
    reason = merge_refusal(first, second)
    if reason:
        raise MergeRefused(reason)
    w1, w2 = first.weight.detach().double(), second.weight.detach().double()
    bias = torch.zeros(second.out_features, dtype=torch.float64, device=w2.device)
    if first.bias is not None:
        bias = bias + w2 @ first.bias.detach().double()
    if second.bias is not None:
        bias = bias + second.bias.detach().double()
    has_bias = first.bias is not None or second.bias is not None
    merged = nn.Linear(first.in_features, second.out_features, bias=has_bias)
    merged = merged.to(device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        merged.weight.copy_(w2 @ w1)
        if has_bias:
            merged.bias.copy_(bias)
    return merged


def merge_convs(first: nn.Conv2d, second: nn.Conv2d, *, allow_border_approx: bool = False) -> nn.Conv2d:
    """One ``nn.Conv2d`` equal to ``second(first(x))``; see the module docstring for the rule."""
    reason = merge_refusal(first, second, allow_border_approx=allow_border_approx)
    if reason:
        raise MergeRefused(reason)
    w1, w2 = first.weight.detach().double(), second.weight.detach().double()
    (k1h, k1w), (k2h, k2w) = first.kernel_size, second.kernel_size
    (s1h, s1w), (s2h, s2w) = first.stride, second.stride
    kh, kw = s1h * (k2h - 1) + k1h, s1w * (k2w - 1) + k1w
    kernel = torch.zeros(second.out_channels, first.in_channels, kh, kw, dtype=torch.float64, device=w1.device)
    for u in range(k2h):
        for v in range(k2w):
            tap = torch.einsum("oc,cdpq->odpq", w2[:, :, u, v], w1)
            kernel[:, :, s1h * u : s1h * u + k1h, s1w * v : s1w * v + k1w] += tap
    bias = torch.zeros(second.out_channels, dtype=torch.float64, device=w1.device)
    if first.bias is not None:
        bias = bias + torch.einsum("ocuv,c->o", w2, first.bias.detach().double())
    if second.bias is not None:
        bias = bias + second.bias.detach().double()
    has_bias = first.bias is not None or second.bias is not None
    (p1h, p1w), (p2h, p2w) = first.padding, second.padding
    merged = nn.Conv2d(
        first.in_channels,
        second.out_channels,
        (kh, kw),
        stride=(s1h * s2h, s1w * s2w),
        padding=(p1h + s1h * p2h, p1w + s1w * p2w),
        bias=has_bias,
    ).to(device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        merged.weight.copy_(kernel)
        if has_bias:
            merged.bias.copy_(bias)
    return merged


def identity_refusal(layer: nn.Module) -> str | None:
    """Why ``x + layer(x)`` cannot be one layer, or None."""
    if type(layer) is nn.Linear:
        if layer.in_features != layer.out_features:
            return f"Linear {layer.in_features}→{layer.out_features} is not square"
        return None
    reason = _conv_refusal(layer, "the conv")
    if reason:
        return reason
    if layer.in_channels != layer.out_channels:
        return f"conv maps {layer.in_channels} channels to {layer.out_channels}"
    if tuple(layer.stride) != (1, 1):
        return f"conv has stride {tuple(layer.stride)}: the output is not the size of the input"
    for k, p in zip(layer.kernel_size, layer.padding, strict=True):
        if 2 * p != k - 1:
            return f"kernel {tuple(layer.kernel_size)} with padding {tuple(layer.padding)} changes the size"
    return None


def add_identity(layer: nn.Conv2d | nn.Linear) -> nn.Conv2d | nn.Linear:
    """Fold a skip connection in place: ``layer(x) + x`` becomes ``layer(x)`` (centre tap += 1)."""
    reason = identity_refusal(layer)
    if reason:
        raise MergeRefused(reason)
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            layer.weight.add_(torch.eye(layer.in_features, dtype=layer.weight.dtype, device=layer.weight.device))
        else:
            ph, pw = layer.padding
            idx = torch.arange(layer.in_channels, device=layer.weight.device)
            layer.weight[idx, idx, ph, pw] += 1.0
    return layer


def merge_residual(first: nn.Conv2d, second: nn.Conv2d) -> nn.Conv2d:
    """One conv equal to ``x + second(first(x))`` (shapes must match; exact, no border padding)."""
    return add_identity(merge_convs(first, second))  # type: ignore[return-value]
