"""One channel rule per ATen op: how channel indices flow from an op's inputs to its outputs.

A rule receives a :class:`~slimmer.graph.space.RuleContext` and returns the labels of the op's
output (a list of Labels for ops returning several tensors, None for non-tensor results). It
may unify atoms (same channel), mark produced channels (a weight creates them) and put barriers
on dimensions it cannot follow exactly.

Masking contract the rules keep (see :mod:`slimmer.surgery`): a channel may only mix with other
channels inside a weight that is a member of its group (conv/linear input columns), so zeroing
the group's parameter slices makes the channel's values irrelevant downstream. Anything that
mixes channels without a weight (LayerNorm over channels, softmax or mean over channels, a
matmul of two activations over channels, a reshape merging two channel dims) is a barrier.
Ops without a rule are barriers for every tensor they touch (see :mod:`slimmer.graph.groups`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from slimmer.graph import attention, pooling, reshape
from slimmer.graph.space import Labels, RuleContext
from slimmer.registry import Registry

ChannelRule = Callable[[RuleContext], Any]

RULES: Registry[ChannelRule] = Registry("channel rule")


def register(*names: str) -> Callable[[ChannelRule], ChannelRule]:
    """Register one rule under several op names (e.g. an op and its in-place variant)."""

    def wrap(rule: ChannelRule) -> ChannelRule:
        for name in names:
            RULES.register(name, rule)
        return rule

    return wrap


def _variants(*bases: str) -> list[str]:
    return [f"aten.{b}" for b in bases]


# --------------------------------------------------------------------------- element-wise
_UNARY = [
    "relu",
    "relu6",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "mish",
    "softplus",
    "neg",
    "abs",
    "exp",
    "sqrt",
    "rsqrt",
    "erf",
    "clamp",
    "clamp_min",
    "clamp_max",
    "dropout",
    "alpha_dropout",
    "feature_dropout",
    "square",
    "log_sigmoid",
    "reciprocal",
    "sin",
    "cos",
    "log",
    "floor",
    "ceil",
    "round",
]
_BINARY = ["add", "sub", "mul", "div", "pow", "maximum", "minimum", "where", "rsub"]
_ELEMENTWISE_NAMES = (
    [f"aten.{u}.default" for u in _UNARY]
    + [f"aten.{u}_.default" for u in _UNARY]
    + [f"aten.{b}.{o}" for b in _BINARY for o in ("Tensor", "Scalar", "self", "Tensor_Scalar", "Tensor_Tensor")]
    + [f"aten.{b}_.{o}" for b in _BINARY for o in ("Tensor", "Scalar")]
    + [f"aten.{u}.Tensor" for u in ("clamp", "clamp_min", "clamp_max")]
    + [f"aten.{u}.Scalar" for u in ("leaky_relu", "hardtanh", "elu")]
    + [f"aten.div.{o}" for o in ("Tensor_mode", "Scalar_mode")]
    + _variants(
        "clone.default",
        "contiguous.default",
        "alias.default",
        "detach.default",
        "type_as.default",
        "to.dtype",
        "to.dtype_layout",
        "_to_copy.default",
        "lift_fresh_copy.default",
        "gelu_.default",
        "real.default",
    )
)


def _exists(name: str) -> bool:
    """Whether ``aten.<op>.<overload>`` is an op of this torch build."""
    _, op, overload = name.split(".")
    packet = getattr(torch.ops.aten, op, None)
    return packet is not None and overload in packet.overloads()


_ELEMENTWISE_NAMES = [n for n in dict.fromkeys(_ELEMENTWISE_NAMES) if n != "aten.real.default" and _exists(n)]


@register(*_ELEMENTWISE_NAMES)
def elementwise(ctx: RuleContext) -> Labels:
    """Same index in, same index out; broadcasting aligns dims from the right."""
    out_shape = ctx.shape()
    out: list[np.ndarray | None] = [None] * len(out_shape)
    for labels in ctx.tensor_args():
        offset = len(out_shape) - len(labels)
        for i, atoms in enumerate(labels):
            o = offset + i
            if atoms.size == out_shape[o]:
                if out[o] is None:
                    out[o] = atoms
                else:
                    ctx.unify(out[o], atoms)
            else:  # a size-1 dim broadcast over many: its single atom cannot follow them
                ctx.barrier(atoms, "broadcast of a size-1 dim")
    fresh = ctx.fresh([s if a is None else 0 for s, a in zip(out_shape, out, strict=True)])
    return [a if a is not None else f for a, f in zip(out, fresh, strict=True)]


@register("aten.prelu.default", "aten._prelu_kernel.default")
def prelu(ctx: RuleContext) -> Labels:
    """One slope per channel (dim 1) follows its channel; a single slope is shared and left whole.

    PReLU is element-wise with a parameter: its weight holds one value per channel or one value
    for all. A per-channel slope is sliced with the channel; a single slope (even one module
    reused by several layers) has no channel dim, so no group ever touches it.
    """
    xl, wl = ctx.labels(ctx.arg(0, "self")), ctx.labels(ctx.arg(1, "weight"))
    if wl is not None and len(xl) >= 2 and wl[0].size == xl[1].size and xl[1].size > 1:
        ctx.unify(wl[0], xl[1])
    elif wl is not None and wl[0].size != 1:
        ctx.barrier([*xl, *wl], "PReLU slopes that are neither one per channel nor one in all")
    return list(xl)


# --------------------------------------------------------------------------- weights
def _weighted_conv(ctx: RuleContext, x: Any, w: Any, bias: Any, groups: int, transposed: bool) -> Labels:
    xl, wl = ctx.labels(x), ctx.labels(w)
    out_shape = ctx.shape()
    out = ctx.fresh(out_shape)
    ctx.unify(out[0], xl[0])
    c_in, c_out = xl[1].size, out_shape[1]
    w_in, w_out = (0, 1) if transposed else (1, 0)
    if groups == 1:
        out[1] = wl[w_out]
        ctx.unify(xl[1], wl[w_in])
    else:  # whole groups only: every channel of group k (in and out) is one removable unit
        ctx.space.produce(out[1])
        a, b = c_in // groups, c_out // groups
        for k in range(groups):
            atoms = list(xl[1][k * a : (k + 1) * a]) + list(out[1][k * b : (k + 1) * b])
            if transposed:
                atoms += list(wl[0][k * a : (k + 1) * a])
            else:
                atoms += list(wl[0][k * b : (k + 1) * b])
            ctx.space.unify_all(atoms)
    ctx.space.produce(out[1])
    bl = ctx.labels(bias)
    if bl is not None:
        ctx.unify(bl[0], out[1])
    return out


@register("aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default")
def conv(ctx: RuleContext) -> Labels:
    """Output channels are produced by weight dim 0; input channels meet weight dim 1."""
    return _weighted_conv(
        ctx,
        ctx.arg(0, "input"),
        ctx.arg(1, "weight"),
        ctx.arg(2, "bias"),
        int(ctx.arg(6, "groups", 1)),
        transposed=False,
    )


@register("aten.conv_transpose1d.default", "aten.conv_transpose2d.input", "aten.conv_transpose3d.input")
def conv_transpose(ctx: RuleContext) -> Labels:
    """Weight is (in, out/groups, k...): output channels come from weight dim 1."""
    return _weighted_conv(
        ctx,
        ctx.arg(0, "input"),
        ctx.arg(1, "weight"),
        ctx.arg(2, "bias"),
        int(ctx.arg(6, "groups", 1)),
        transposed=True,
    )


@register("aten.convolution.default")
def convolution(ctx: RuleContext) -> Labels:
    return _weighted_conv(
        ctx,
        ctx.arg(0, "input"),
        ctx.arg(1, "weight"),
        ctx.arg(2, "bias"),
        int(ctx.arg(8, "groups", 1)),
        transposed=bool(ctx.arg(6, "transposed")),
    )


@register("aten.linear.default")
def linear(ctx: RuleContext) -> Labels:
    """``x @ W.T + b``: x's last dim meets W dim 1; W dim 0 produces the output features."""
    xl, wl, bl = (
        ctx.labels(ctx.arg(0, "input")),
        ctx.labels(ctx.arg(1, "weight")),
        ctx.labels(ctx.arg(2, "bias")),
    )
    ctx.unify(xl[-1], wl[1])
    ctx.space.produce(wl[0])
    if bl is not None:
        ctx.unify(bl[0], wl[0])
    return [*xl[:-1], wl[0]]


def _from_state(ctx: RuleContext, arg: Any) -> bool:
    """Whether a tensor is a parameter/buffer reached only through layout ops (t, permute, view)."""
    layout = {
        "aten.t.default",
        "aten.permute.default",
        "aten.transpose.int",
        "aten.view.default",
        "aten.reshape.default",
        "aten.contiguous.default",
        "aten.expand.default",
    }
    node = arg
    while node is not None and node.op == "call_function" and str(node.target) in layout:
        node = node.args[0]
    return node is not None and node.op == "placeholder" and node.name in ctx.state_placeholders


def _matmul(ctx: RuleContext, a: Any, b: Any) -> Labels:
    al, bl = ctx.labels(a), ctx.labels(b)
    out_shape = ctx.shape()
    if len(al) < 2 or len(bl) < 2:
        ctx.barrier([*al, *bl], "matmul with a 1-D operand")
        return ctx.fresh(out_shape)
    ctx.unify(al[-1], bl[-2])
    a_state, b_state = _from_state(ctx, a), _from_state(ctx, b)
    if not (a_state or b_state):  # channels contracted between two activations: not maskable
        ctx.barrier(al[-1], "contraction of two activations")
    if b_state:
        ctx.space.produce(bl[-1])
    if a_state:
        ctx.space.produce(al[-2])
    out = ctx.fresh(out_shape)
    out[-2], out[-1] = al[-2], bl[-1]
    for labels in (al[:-2], bl[:-2]):  # batch dims broadcast from the right
        for i, atoms in enumerate(reversed(labels)):
            o = len(out_shape) - 3 - i
            if atoms.size == out_shape[o]:
                ctx.unify(out[o], atoms)
            else:
                ctx.barrier(atoms, "broadcast of a size-1 dim")
    return out


@register("aten.matmul.default", "aten.mm.default", "aten.bmm.default")
def matmul(ctx: RuleContext) -> Labels:
    return _matmul(ctx, ctx.arg(0, "self"), ctx.arg(1, "other"))


@register("aten.addmm.default")
def addmm(ctx: RuleContext) -> Labels:
    """``bias + x @ W``: the bias follows the output columns."""
    out = _matmul(ctx, ctx.arg(1, "mat1"), ctx.arg(2, "mat2"))
    bias = ctx.labels(ctx.arg(0, "self"))
    for i, atoms in enumerate(reversed(bias)):
        o = len(out) - 1 - i
        if atoms.size == out[o].size:
            ctx.unify(out[o], atoms)
        else:
            ctx.barrier(atoms, "broadcast of a size-1 dim")
    return out


@register("aten.embedding.default")
def embedding(ctx: RuleContext) -> Labels:
    wl, il = ctx.labels(ctx.arg(0, "weight")), ctx.labels(ctx.arg(1, "indices"))
    ctx.space.produce(wl[1])
    return [*il, wl[1]]


# --------------------------------------------------------------------------- normalization
def _per_channel(ctx: RuleContext, x: Any, params: list[Any]) -> Labels:
    xl = ctx.labels(x)
    for p in params:
        pl = ctx.labels(p)
        if pl is not None:
            ctx.unify(pl[0], xl[1])
    return list(xl)


_NORM_PARAMS = [(1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var")]


@register("aten.batch_norm.default")
def batch_norm(ctx: RuleContext) -> Labels:
    """Per-channel affine and statistics: weight, bias, running mean/var follow dim 1."""
    return _per_channel(ctx, ctx.arg(0, "input"), [ctx.arg(i, n) for i, n in _NORM_PARAMS])


@register("aten.instance_norm.default")
def instance_norm(ctx: RuleContext) -> Labels:
    """Statistics per (sample, channel): removing a channel leaves the others untouched."""
    return _per_channel(ctx, ctx.arg(0, "input"), [ctx.arg(i, n) for i, n in _NORM_PARAMS])


@register("aten.group_norm.default")
def group_norm(ctx: RuleContext) -> Labels:
    """Each group is normalized on its own, so only whole groups can go (num_groups shrinks)."""
    xl = ctx.labels(ctx.arg(0, "input"))
    groups = int(ctx.arg(1, "num_groups"))
    weight, bias = ctx.labels(ctx.arg(2, "weight")), ctx.labels(ctx.arg(3, "bias"))
    if weight is None:
        ctx.barrier(xl[1], "GroupNorm without affine parameters keeps a fixed channel count")
        return list(xl)
    size = xl[1].size // groups
    for k in range(groups):
        ctx.space.unify_all(xl[1][k * size : (k + 1) * size].tolist())
    for p in (weight, bias):
        if p is not None:
            ctx.unify(p[0], xl[1])
    return list(xl)


@register("aten.layer_norm.default", "aten.rms_norm.default")
def layer_norm(ctx: RuleContext) -> Labels:
    """Statistics over the normalized dims: removing one of their channels changes all others."""
    xl = ctx.labels(ctx.arg(0, "input"))
    n = len(ctx.arg(1, "normalized_shape"))
    ctx.barrier(xl[-n:], "normalizes over this dim")
    for p in (ctx.labels(ctx.arg(2, "weight")), ctx.labels(ctx.arg(3, "bias"))):
        if p is not None:
            for atoms, xa in zip(p, xl[-n:], strict=True):
                ctx.unify(atoms, xa)
    return list(xl)


pooling.register_pooling_rules(register)
reshape.register_layout_rules(register)
attention.register_attention_rules(register)
