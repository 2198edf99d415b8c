"""Channel rules for layout ops: view/reshape/flatten, permute/transpose, cat/split/slice/select.

These ops move channels without computing on them, so their rules are pure index maps:

* reshape: dims are grouped into runs with equal products. A run that merges dims keeps at most
  one channel dim (the *carrier*; e.g. C in ``flatten`` before a Linear, where channel c becomes
  the block ``c*H*W ... (c+1)*H*W-1``). A run that splits one dim (channel shuffle's
  ``view(N, g, C/g, H, W)``) makes the largest new dim the carrier and ties every position with
  the same carrier coordinate together, so every block loses the same channels.
* cat concatenates index maps; equal chunk/split ties piece k's channel i to piece 0's channel i
  (all pieces shrink alike, as ``chunk`` recomputes sizes); a split with explicit sizes
  (``torch.split(x, [16, 48])``) maps each index into its part, and each part shrinks on its own
  (when the sizes are literals in ``forward``, the pruned forward fails, and the planner and
  :func:`~slimmer.surgery.shrink` keep those groups whole and say so); slice/select/pad have fixed
  bounds in the graph and are barriers along the dim they cut.
* pixel shuffle turns each block of r*r channels into one channel: the block is one unit.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod
from typing import Any

import numpy as np

from slimmer.graph.space import Labels, RuleContext

HEAD_CARRIER_META = "slimmer_head_carrier"
"""Node meta key: the out dim of a reshape that carries the channel (set for attention head splits)."""


def reshape_labels(ctx: RuleContext, xl: Labels, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Labels:
    """Map labels through a reshape from ``in_shape`` to ``out_shape`` (same number of elements)."""
    out: list[np.ndarray | None] = [None] * len(out_shape)
    in_dims = [i for i, s in enumerate(in_shape) if s != 1]
    out_dims = [o for o, s in enumerate(out_shape) if s != 1]
    for i, s in enumerate(in_shape):
        if s == 1:
            ctx.barrier(xl[i], "size-1 dim dropped by reshape")
    i = j = 0
    while i < len(in_dims) and j < len(out_dims):
        group_in, group_out = [in_dims[i]], [out_dims[j]]
        p_in, p_out = in_shape[in_dims[i]], out_shape[out_dims[j]]
        while p_in != p_out:
            if p_in < p_out:
                i += 1
                group_in.append(in_dims[i])
                p_in *= in_shape[in_dims[i]]
            else:
                j += 1
                group_out.append(out_dims[j])
                p_out *= out_shape[out_dims[j]]
        for o, atoms in zip(group_out, _map_run(ctx, xl, in_shape, out_shape, group_in, group_out), strict=True):
            out[o] = atoms
        i += 1
        j += 1
    return [a if a is not None else ctx.space.fresh(out_shape[o]) for o, a in enumerate(out)]


def _map_run(
    ctx: RuleContext,
    xl: Labels,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    group_in: list[int],
    group_out: list[int],
) -> list[np.ndarray]:
    if len(group_in) == 1 and len(group_out) == 1:
        return [xl[group_in[0]]]
    sizes_in = [in_shape[d] for d in group_in]
    total = prod(sizes_in)
    if len(group_in) == 1:
        flat = xl[group_in[0]]
    else:
        live = [k for k, d in enumerate(group_in) if ctx.space.is_live(xl[d])]
        if len(live) > 1:
            ctx.barrier([xl[d] for d in group_in], "reshape merges two channel dims")
            flat = ctx.space.fresh(total)
            ctx.barrier(flat, "reshape merges two channel dims")
        else:
            c = live[0] if live else 0
            for k, d in enumerate(group_in):
                if k != c:
                    ctx.barrier(xl[d], "merged into another dim by reshape")
            after = prod(sizes_in[c + 1 :])
            flat = np.tile(np.repeat(xl[group_in[c]], after), prod(sizes_in[:c]))
    if len(group_out) == 1:
        return [flat]
    sizes_out = [out_shape[d] for d in group_out]
    hint = ctx.node.meta.get(HEAD_CARRIER_META)  # attention heads: H carries, D is split off
    largest = max(range(len(sizes_out)), key=lambda k: (sizes_out[k], k))
    carrier = group_out.index(hint) if hint in group_out else largest
    result = [ctx.space.fresh(s) for s in sizes_out]
    after = prod(sizes_out[carrier + 1 :])
    coordinate = (np.arange(total) // after) % sizes_out[carrier]
    ctx.unify(flat, result[carrier][coordinate])
    for k, atoms in enumerate(result):
        if k != carrier:
            ctx.barrier(atoms, "split off by reshape")
    return result


def _reshape(ctx: RuleContext) -> Labels:
    x = ctx.node.args[0]
    return reshape_labels(ctx, ctx.labels(x), ctx.shape(x), ctx.shape())


def _permute(ctx: RuleContext) -> Labels:
    xl = ctx.labels(ctx.node.args[0])
    dims = ctx.arg(1, "dims")
    return [xl[d % len(xl)] for d in dims]


def _transpose(ctx: RuleContext) -> Labels:
    xl = list(ctx.labels(ctx.node.args[0]))
    if ctx.op == "aten.t.default":
        return xl[::-1]
    a, b = int(ctx.arg(1, "dim0")) % len(xl), int(ctx.arg(2, "dim1")) % len(xl)
    xl[a], xl[b] = xl[b], xl[a]
    return xl


def _expand(ctx: RuleContext) -> Labels:
    xl = ctx.labels(ctx.node.args[0])
    out_shape = ctx.shape()
    out = ctx.fresh(out_shape)
    offset = len(out_shape) - len(xl)
    for i, atoms in enumerate(xl):
        if atoms.size == out_shape[offset + i]:
            out[offset + i] = atoms
        else:
            ctx.barrier(atoms, "broadcast of a size-1 dim")
    return out


def _cat(ctx: RuleContext) -> Labels:
    tensors = [ctx.labels(t) for t in ctx.arg(0, "tensors")]
    tensors = [t for t in tensors if t is not None and not (len(t) == 1 and t[0].size == 0)]
    dim = int(ctx.arg(1, "dim", 0)) % len(tensors[0])
    out = list(tensors[0])
    for t in tensors[1:]:
        for d, atoms in enumerate(t):
            if d != dim:
                ctx.unify(out[d], atoms)
    out[dim] = np.concatenate([t[dim] for t in tensors])
    return out


def _stack(ctx: RuleContext) -> Labels:
    tensors = [ctx.labels(t) for t in ctx.arg(0, "tensors")]
    for t in tensors[1:]:
        for a, b in zip(tensors[0], t, strict=True):
            ctx.unify(a, b)
    dim = int(ctx.arg(1, "dim", 0)) % (len(tensors[0]) + 1)
    return [*tensors[0][:dim], ctx.space.fresh(len(tensors)), *tensors[0][dim:]]


def _split(ctx: RuleContext) -> list[Labels]:
    xl = ctx.labels(ctx.node.args[0])
    dim_index = 1 if ctx.op == "aten.unbind.int" else 2
    dim = int(ctx.arg(dim_index, "dim", 0)) % len(xl)
    shapes = ctx.out_shapes()
    sizes = [s[dim] for s in shapes] if ctx.op != "aten.unbind.int" else [1] * len(shapes)
    if ctx.op == "aten.unbind.int":
        ctx.barrier(xl[dim], "unbind of a dim")
        return [[*xl[:dim], *xl[dim + 1 :]] for _ in shapes]
    if len(set(sizes)) == 1 and ctx.op != "aten.split_with_sizes.default":
        size = sizes[0]
        for k in range(1, len(sizes)):
            ctx.unify(xl[dim][:size], xl[dim][k * size : (k + 1) * size])
    pieces, start = [], 0
    for size in sizes:
        pieces.append([*xl[:dim], xl[dim][start : start + size], *xl[dim + 1 :]])
        start += size
    return pieces


def _getitem(ctx: RuleContext) -> Any:
    raw = ctx.any_labels(ctx.node.args[0])
    return raw[ctx.node.args[1]] if isinstance(raw, list) else None


def _slice(ctx: RuleContext) -> Labels:
    xl = list(ctx.labels(ctx.node.args[0]))
    dim = int(ctx.arg(1, "dim", 0)) % len(xl)
    size = xl[dim].size
    start, end, step = ctx.arg(2, "start"), ctx.arg(3, "end"), ctx.arg(4, "step", 1)
    start, end, step = slice(start, end, step).indices(size)
    if (start, end, step) != (0, size, 1):
        ctx.barrier(xl[dim], "slice with fixed bounds")
    xl[dim] = xl[dim][start:end:step]
    return xl


def _select(ctx: RuleContext) -> Labels:
    xl = ctx.labels(ctx.node.args[0])
    dim = int(ctx.arg(1, "dim")) % len(xl)
    ctx.barrier(xl[dim], "select of one index")
    return [*xl[:dim], *xl[dim + 1 :]]


def _pad(ctx: RuleContext) -> Labels:
    xl = list(ctx.labels(ctx.node.args[0]))
    pad = list(ctx.arg(1, "pad"))
    out_shape = ctx.shape()
    for k in range(len(pad) // 2):
        d = len(xl) - 1 - k
        if pad[2 * k] or pad[2 * k + 1]:
            ctx.barrier(xl[d], "padded dim")
            xl[d] = ctx.space.fresh(out_shape[d])
    return xl


def _roll(ctx: RuleContext) -> Labels:
    xl = list(ctx.labels(ctx.node.args[0]))
    shifts, dims = list(ctx.arg(1, "shifts")), list(ctx.arg(2, "dims", []))
    if not dims:
        ctx.barrier(xl, "roll of the flattened tensor")
        return ctx.fresh()
    for shift, d in zip(shifts, dims, strict=True):
        xl[d % len(xl)] = np.roll(xl[d % len(xl)], shift)
    return xl


def _flip(ctx: RuleContext) -> Labels:
    xl = list(ctx.labels(ctx.node.args[0]))
    for d in ctx.arg(1, "dims"):
        xl[d % len(xl)] = xl[d % len(xl)][::-1].copy()
    return xl


def _pixel_shuffle(ctx: RuleContext) -> Labels:
    """``(N, C*r*r, H, W) -> (N, C, H*r, W*r)``: output channel c is input block c*r*r..(c+1)*r*r-1.

    The r*r input channels of a block become one channel, so they are removed together (a unit of
    r*r channels of the producing conv). The spatial dims mix with the channel dim: fresh, barred.
    """
    xl = ctx.labels(ctx.node.args[0])
    r = int(ctx.arg(1, "upscale_factor"))
    out = ctx.fresh()
    ctx.unify(np.repeat(out[-3], r * r), xl[-3])
    for i in range(len(xl) - 3):
        ctx.unify(out[i], xl[i])
    ctx.barrier([*xl[-2:], *out[-2:]], "spatial dim mixed with channels by pixel shuffle")
    return out


def _pixel_unshuffle(ctx: RuleContext) -> Labels:
    """``(N, C, H*r, W*r) -> (N, C*r*r, H, W)``: input channel c becomes the block c*r*r..(c+1)*r*r-1."""
    xl = ctx.labels(ctx.node.args[0])
    r = int(ctx.arg(1, "downscale_factor"))
    out = ctx.fresh()
    ctx.unify(out[-3], np.repeat(xl[-3], r * r))
    for i in range(len(xl) - 3):
        ctx.unify(out[i], xl[i])
    ctx.barrier([*xl[-2:], *out[-2:]], "spatial dim mixed with channels by pixel unshuffle")
    return out


def _no_tensor(ctx: RuleContext) -> None:
    return None


def register_layout_rules(register: Callable[..., Callable[[Any], Any]]) -> None:
    """Register this module's rules with the rule registry (called once by rules.py)."""
    register(
        "aten.view.default",
        "aten.reshape.default",
        "aten._unsafe_view.default",
        "aten.flatten.using_ints",
        "aten.unflatten.int",
        "aten.squeeze.dim",
        "aten.squeeze.dims",
        "aten.squeeze.default",
        "aten.unsqueeze.default",
        "aten.view_as.default",
        "aten.reshape_as.default",
    )(_reshape)
    register("aten.permute.default")(_permute)
    register("aten.transpose.int", "aten.t.default")(_transpose)
    register("aten.expand.default", "aten.expand_as.default")(_expand)
    register("aten.cat.default", "aten.concat.default")(_cat)
    register("aten.stack.default")(_stack)
    register(
        "aten.chunk.default",
        "aten.split.Tensor",
        "aten.split_with_sizes.default",
        "aten.unsafe_split.Tensor",
        "aten.unbind.int",
    )(_split)
    register("getitem")(_getitem)
    register("aten.slice.Tensor")(_slice)
    register("aten.select.int")(_select)
    register("aten.pad.default", "aten.constant_pad_nd.default")(_pad)
    register("aten.roll.default")(_roll)
    register("aten.pixel_shuffle.default")(_pixel_shuffle)
    register("aten.pixel_unshuffle.default")(_pixel_unshuffle)
    register("aten.flip.default")(_flip)
    register("aten.sym_size.int", "aten._assert_tensor_metadata.default", "aten._assert_scalar.default")(_no_tensor)
