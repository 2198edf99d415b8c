"""Multi-head attention: one removable channel per head, however the attention is written.

A head is the unit of attention that can go without changing any other head: its rows of the
query, key and value projections and its columns of the output projection. In the captured ATen
graph a head appears as a reshape that splits a projection's features into ``(..., H, D)``
(``view(B, N, H, D)`` as HF BERT/DistilBERT/ViT do, or ``reshape(B, N, 3, H, D)`` of a fused
``qkv`` as timm does), followed by layout ops and a product of two activations (``q @ k^T``,
``probs @ v``, ``scaled_dot_product_attention``) in which H is a *batch* dim and D is contracted.

The generic reshape rule (:mod:`slimmer.graph.reshape`) ties the positions of a split to its
largest new dim; for attention that is usually D, whose contraction between two activations is a
barrier, so no head could go. This module finds those splits and re-runs the channel walk with H
as the carrier (:func:`mark_head_splits`): every position of head h then shares one channel, the
batch-dim rule of matmul/SDPA ties the query, key and value heads together, and the merge after
the attention (``(B, N, H, D) -> (B, N, H*D)``) maps head h to its D columns of the output
projection. Grouped-query attention needs nothing more: ``repeat_kv``'s expand + reshape (or SDPA's
``enable_gqa``) map key/value head j to its query heads, so one channel is one key/value head with
all the query heads that share it. D itself is never pruned: its atoms are split off and barred.

Masking argument (the invariant pruned == masked original): zeroing head h's q, k and v rows
(weights and biases) makes its scores 0 and its values 0, so its attention output is exactly 0
whatever the softmax gives; the output projection's columns of the head are zeroed too, and no
other head reads head h. Removing the head therefore computes the same thing.

The head count lives in the module that issues the split (``self.num_heads`` etc.); surgery
updates it through :func:`update_head_attributes`. A split whose module has no such attribute (a
count hard-coded in ``forward`` or captured in a closure) is a barrier naming the module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import fx, nn

from slimmer.graph.capture import op_name
from slimmer.graph.reshape import HEAD_CARRIER_META
from slimmer.graph.space import ChannelSpace, Labels, RuleContext

if TYPE_CHECKING:
    from slimmer.graph.capture import CapturedGraph
    from slimmer.graph.groups import GroupSet
    from slimmer.structures.plan import PruningPlan

HEAD_COUNT_NAMES = ("num_heads", "num_attention_heads", "n_heads", "n_head", "num_head", "heads", "nheads")
KV_HEAD_COUNT_NAMES = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head", "num_kv")
WIDTH_NAMES = ("all_head_size", "inner_dim", "attn_dim", "embed_dim", "dim", "hidden_size", "inner_size")
_HEAD_BARRIER_META = "slimmer_head_barrier"

_RESHAPES = {
    "aten.view.default",
    "aten.reshape.default",
    "aten._unsafe_view.default",
    "aten.unflatten.int",
}
_MATMULS = {"aten.matmul.default", "aten.bmm.default"}
_SDPA = {"aten.scaled_dot_product_attention.default"}


@dataclass(frozen=True)
class HeadSplit:
    """One split of features into heads, as found in the graph and bound to a channel group.

    ``module`` is the path of the module that issues the split (where the head count lives),
    ``heads`` the number of heads H and ``head_width`` the features per head D along that split,
    ``channel_of_head[i]`` the channel of the group that head i belongs to (several query heads
    share a channel under grouped-query attention).
    """

    module: str
    heads: int
    head_width: int
    channel_of_head: tuple[int, ...]


# --------------------------------------------------------------------------- SDPA rule
def _align_batch(ctx: RuleContext, out: Labels, labels: Labels, batch: int, gqa: bool) -> None:
    """Tie the leading (batch/head) dims of an SDPA operand to the output's, aligned from the right."""
    for i, atoms in enumerate(reversed(labels[:batch])):
        o = batch - 1 - i
        size = out[o].size
        if atoms.size == size:
            ctx.unify(out[o], atoms)
        elif gqa and o == batch - 1 and atoms.size and size % atoms.size == 0:
            ctx.unify(out[o], np.repeat(atoms, size // atoms.size))  # kv head j serves query heads j*g..j*g+g-1
        else:
            ctx.barrier(atoms, "broadcast of a size-1 dim")


def sdpa(ctx: RuleContext) -> Labels:
    """``softmax(q k^T * scale + mask) v``: (…, H, L, E), (…, Hkv, S, E), (…, Hkv, S, Ev) -> (…, H, L, Ev).

    The leading dims (batch, heads) pass through; E and S are contracted between activations and
    are barriers; the mask broadcasts into (…, L, S).
    """
    q, k, v = (ctx.labels(ctx.arg(i, n)) for i, n in enumerate(("query", "key", "value")))
    mask = ctx.labels(ctx.arg(3, "attn_mask"))
    gqa = bool(ctx.node.kwargs.get("enable_gqa", False))
    out_shape = ctx.shape()
    out = ctx.fresh(out_shape)
    batch = len(out_shape) - 2
    for labels in (q, k, v):
        _align_batch(ctx, out, labels, batch, gqa)
    out[-2], out[-1] = q[-2], v[-1]
    ctx.unify(k[-2], v[-2])
    ctx.barrier([q[-1], k[-1]], "contraction of two activations")
    ctx.barrier(k[-2], "attention over this dim")
    if mask is not None:
        target = [*out[:-2], q[-2], k[-2]]
        for i, atoms in enumerate(reversed(mask)):
            o = len(target) - 1 - i
            if o >= 0 and atoms.size == target[o].size:
                ctx.unify(target[o], atoms)
            else:
                ctx.barrier(atoms, "broadcast of a size-1 dim")
    return out


def register_attention_rules(register: Callable[..., Callable[[Any], Any]]) -> None:
    """Register the SDPA rule with the rule registry (called once by rules.py)."""
    register(*sorted(_SDPA))(sdpa)


# --------------------------------------------------------------------------- finding heads
def _module_of(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def _head_owner(model: nn.Module, path: str, heads: int) -> str | None:
    """The nearest module at or above ``path`` with a head-count attribute equal to ``heads``."""
    parts = path.split(".") if path else []
    for end in range(len(parts), -1, -1):
        prefix = ".".join(parts[:end])
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            continue
        for name in HEAD_COUNT_NAMES + KV_HEAD_COUNT_NAMES:
            if getattr(module, name, None) == heads and isinstance(getattr(module, name), int):
                return prefix
    return None


def _pure_split_dims(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> set[int]:
    """Out dims of a reshape that come from splitting one input dim into several (size-1 dims aside).

    A dim that merges input dims (``(L, B, C) -> (L, B*H, D)`` in ``nn.MultiheadAttention``) is
    not a head split: its heads share positions with the batch.
    """
    ins = [s for s in in_shape if s != 1]
    outs = [o for o, s in enumerate(out_shape) if s != 1]
    found: set[int] = set()
    i = j = 0
    while i < len(ins) and j < len(outs):
        n_in, run = 1, [outs[j]]
        p_in, p_out = ins[i], out_shape[outs[j]]
        while p_in != p_out:
            if p_in < p_out:
                i += 1
                n_in += 1
                p_in *= ins[i]
            else:
                j += 1
                run.append(outs[j])
                p_out *= out_shape[outs[j]]
        if n_in == 1 and len(run) > 1:
            found.update(run)
        i += 1
        j += 1
    return found


def _split_index(captured: CapturedGraph, labels: dict[str, Any]) -> dict[int, list[tuple[fx.Node, int]]]:
    """First atom id -> (reshape node, out dim) for every dim a reshape makes by splitting one dim."""
    index: dict[int, list[tuple[fx.Node, int]]] = {}
    for node in captured.graph.nodes:
        if node.op != "call_function" or op_name(node) not in _RESHAPES or node.name not in labels:
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or "val" not in source.meta or "val" not in node.meta:
            continue
        in_shape = tuple(int(s) for s in source.meta["val"].shape)
        for o in _pure_split_dims(in_shape, tuple(int(s) for s in node.meta["val"].shape)):
            atoms = labels[node.name][o]
            index.setdefault(int(atoms[0]), []).append((node, o))
    return index


def _origin(atoms: np.ndarray, index: dict[int, list[tuple[fx.Node, int]]], labels: dict[str, Any]) -> Any:
    """The (reshape node, out dim) whose atoms contain all of ``atoms``, or None."""
    if atoms.size == 0:
        return None
    for node, o in index.get(int(atoms[0]), []):
        if np.isin(atoms, labels[node.name][o]).all():
            return node, o
    return None


_LAYOUT = {
    "aten.t.default",
    "aten.permute.default",
    "aten.transpose.int",
    "aten.view.default",
    "aten.reshape.default",
    "aten.contiguous.default",
    "aten.expand.default",
}


def _is_state(arg: Any, state: set[str]) -> bool:
    """Whether a tensor is a parameter/buffer reached only through layout ops."""
    while isinstance(arg, fx.Node) and arg.op == "call_function" and op_name(arg) in _LAYOUT:
        arg = arg.args[0]
    return isinstance(arg, fx.Node) and arg.op == "placeholder" and arg.name in state


def _operands(node: fx.Node, state: set[str]) -> list[tuple[Any, int]]:
    """(operand, number of trailing non-batch dims) of an activation-activation contraction."""
    name = op_name(node)
    if name in _MATMULS:
        if _is_state(node.args[0], state) or _is_state(node.args[1], state):
            return []  # a weight: its rule already tracks the contracted channels
        return [(node.args[0], 2), (node.args[1], 2)]
    if name in _SDPA:
        return [(a, 2) for a in node.args[:3]]
    return []


def mark_head_splits(model: nn.Module, captured: CapturedGraph, labels: dict[str, Any]) -> int:
    """Mark every reshape that splits features into attention heads; return how many were marked.

    ``labels`` is a first channel walk. An operand of a matmul/SDPA whose batch dim H and one of
    whose trailing dims D were created by the same reshape is a head split: that reshape gets
    ``meta[HEAD_CARRIER_META] = H's out dim``, and when the head count is not an attribute of the
    issuing module (or an ancestor), a barrier reason in ``meta[_HEAD_BARRIER_META]``.
    """
    index = _split_index(captured, labels)
    state = set(captured.parameters) | set(captured.buffers)
    marked = 0
    for node in captured.graph.nodes:
        if node.op != "call_function":
            continue
        for operand, trailing in _operands(node, state):
            op_labels = labels.get(operand.name) if isinstance(operand, fx.Node) else None
            if not op_labels or len(op_labels) <= trailing:
                continue
            tails = {_origin(a, index, labels) for a in op_labels[-trailing:]} - {None}
            for atoms in op_labels[:-trailing]:
                origin = _origin(atoms, index, labels)
                if origin is None or not any(t[0] is origin[0] and t[1] > origin[1] for t in tails):
                    continue
                split, dim = origin
                if split.meta.get(HEAD_CARRIER_META) == dim:
                    continue
                split.meta[HEAD_CARRIER_META] = dim
                marked += 1
                path, heads = _module_of(split), labels[split.name][dim].size
                if _head_owner(model, path, heads) is None:
                    split.meta[_HEAD_BARRIER_META] = (
                        f"head count {heads} of {path or '<root>'} is not a module attribute slimmer can update "
                        f"(looked for {', '.join(HEAD_COUNT_NAMES + KV_HEAD_COUNT_NAMES)}): it is fixed in forward()"
                    )
    return marked


def _splits(captured: CapturedGraph) -> list[fx.Node]:
    return [n for n in captured.graph.nodes if n.op == "call_function" and HEAD_CARRIER_META in n.meta]


def bar_fixed_heads(captured: CapturedGraph, space: ChannelSpace, labels: dict[str, Any]) -> None:
    """Put the barrier of every marked split whose head count cannot be rewritten."""
    for node in _splits(captured):
        reason = node.meta.get(_HEAD_BARRIER_META)
        if reason is not None:
            space.barrier(labels[node.name][node.meta[HEAD_CARRIER_META]], reason)


def attach_heads(model: nn.Module, groupset: GroupSet, space: ChannelSpace, labels: dict[str, Any]) -> None:
    """Record on each group the head splits its channels remove (``group.heads``), for surgery."""
    captured = groupset.captured
    if captured is None:
        return
    placeholders = {name: ph for ph, name in {**captured.parameters, **captured.buffers}.items()}
    channel_of_root: dict[int, tuple[Any, int]] = {}
    for group in groupset.groups:
        member = group.members[0]
        atoms = labels[placeholders[member.name]][member.dim]
        for j, idx in enumerate(member.indices):
            channel_of_root[space.find(int(atoms[idx[0]]))] = (group, j)
    for node in _splits(captured):
        dim = node.meta[HEAD_CARRIER_META]
        found = [channel_of_root.get(space.find(int(a))) for a in labels[node.name][dim].tolist()]
        if any(f is None for f in found) or len({id(f[0]) for f in found}) != 1:
            continue
        group = found[0][0]
        heads = len(found)
        owner = _head_owner(model, _module_of(node), heads)
        if owner is None:
            continue
        width = int(np.prod(node.meta["val"].shape[dim + 1 :]))
        split = HeadSplit(owner, heads, width, tuple(f[1] for f in found))
        if split not in group.heads:
            group.heads.append(split)


def head_round_to(group: Any, round_to: int) -> int:
    """``round_to`` (features) in channels of ``group``: a head is D features, so heads round to
    ``ceil(round_to / D)`` (1 when a head is at least ``round_to`` wide); other groups unchanged."""
    heads = getattr(group, "heads", None)
    if not heads:
        return round_to
    width = min(split.head_width for split in heads)
    return max(1, -(-round_to // width))


PARTS = ("heads", "ffn")


def select_parts(groupset: GroupSet, parts: str | None) -> GroupSet:
    """Keep only the chosen parts prunable (``--prune heads``, ``ffn`` or ``heads,ffn``; None = both).

    ``heads`` are the groups that remove attention heads, ``ffn`` every other group (the
    feed-forward width in a transformer). The others are marked blocked with the reason, in place.
    Raises :class:`~slimmer.errors.ConfigError` for an unknown part.
    """
    from slimmer.errors import ConfigError

    if parts is None:
        return groupset
    chosen = {p.strip() for p in parts.split(",") if p.strip()}
    unknown = chosen - set(PARTS)
    if unknown or not chosen:
        raise ConfigError(f"--prune {parts}: choose from {', '.join(PARTS)} (comma-separated)")
    for group in groupset.groups:
        part = "heads" if group.heads else "ffn"
        if part not in chosen and group.blocked_by is None:
            group.blocked_by = f"not selected by --prune {parts} ({part})"
    return groupset


# --------------------------------------------------------------------------- surgery
def update_head_attributes(model: nn.Module, plan: PruningPlan) -> None:
    """Set head counts and head widths of attention modules to what the plan leaves.

    For each head split of each pruned group: an int attribute in :data:`HEAD_COUNT_NAMES` or
    :data:`KV_HEAD_COUNT_NAMES` equal to the old count H becomes the kept count H'; one in
    :data:`WIDTH_NAMES` equal to H*D becomes H'*D. Per-head sizes (``head_dim``) stay.
    """
    changes: dict[str, dict[int, int]] = {}
    widths: dict[str, dict[int, int]] = {}
    for planned in plan.groups:
        if not planned.pruned:
            continue
        kept = set(planned.kept)
        for split in plan.bound_group(planned.id).heads:
            new = sum(1 for c in split.channel_of_head if c in kept)
            changes.setdefault(split.module, {})[split.heads] = new
            widths.setdefault(split.module, {})[split.heads * split.head_width] = new * split.head_width
    for path, counts in changes.items():
        module = model.get_submodule(path)
        for name in HEAD_COUNT_NAMES + KV_HEAD_COUNT_NAMES:
            value = getattr(module, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value in counts:
                setattr(module, name, counts[value])
        for name in WIDTH_NAMES:
            value = getattr(module, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value in widths[path]:
                setattr(module, name, widths[path][value])
