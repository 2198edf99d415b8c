"""Coupled channels: walk the captured graph with the op rules and collect ``ChannelGroup``s.

A channel group is the set of parameter/buffer slices that must be removed together: the conv
that produces a channel, the BN after it, every consumer's input columns, every branch joined to
it by an add, the offsets a concat or split moved it to. One *channel* of a group is one
union-find class of :mod:`slimmer.graph.space`; channels touching the same tensors form a group.

A group is blocked (never pruned) when any of its channels reaches a model input or output, an
op without a rule, or a rule's barrier; ``blocked_by`` says which op, where, and why.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from slimmer.graph import attention
from slimmer.graph.capture import CapturedGraph, capture, module_path, op_name
from slimmer.graph.rules import RULES
from slimmer.graph.space import ChannelSpace, RuleContext

MAX_REASONS = 4
MAX_LAYERS = 6


@dataclass(frozen=True)
class GroupMember:
    """One tensor slice of a group: ``indices[j]`` are the positions along ``dim`` of channel j."""

    name: str
    dim: int
    indices: tuple[tuple[int, ...], ...]

    @property
    def module(self) -> str:
        """The owning module's path (``''`` for the root)."""
        return self.name.rsplit(".", 1)[0] if "." in self.name else ""


@dataclass
class ChannelGroup:
    """Channels that are removed together, with every tensor slice that holds them."""

    id: str
    members: list[GroupMember]
    channels: int
    blocked_by: str | None = None
    reasons: tuple[str, ...] = ()  # every barrier reason of a blocked group, without the layer list
    heads: list[Any] = field(default_factory=list)
    """Attention head splits this group removes (:class:`slimmer.graph.attention.HeadSplit`)."""

    @property
    def prunable(self) -> bool:
        return self.blocked_by is None and self.channels > 1

    @property
    def signature(self) -> list[tuple[str, int]]:
        """The architecture-level identity of the group: its (tensor name, dim) pairs."""
        return [(m.name, m.dim) for m in self.members]

    @property
    def layers(self) -> list[str]:
        return sorted({m.module for m in self.members})


@dataclass
class GroupSet:
    """All channel groups of a model, prunable and blocked."""

    groups: list[ChannelGroup]
    captured: CapturedGraph | None = field(default=None, repr=False)

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def blocked(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.blocked_by is not None]

    def get(self, group_id: str) -> ChannelGroup:
        for group in self.groups:
            if group.id == group_id:
                return group
        raise KeyError(group_id)


def _tensor_shapes(node: fx.Node) -> Any:
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor):
        return tuple(int(s) for s in value.shape)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return [tuple(int(s) for s in v.shape) for v in value]
    return None


def _barrier_everything(ctx: RuleContext, reason: str) -> Any:
    """The rule for an op without one: nothing it touches can be removed."""
    ctx.space.barrier([a for labels in ctx.tensor_args() for a in labels], reason)
    shapes = _tensor_shapes(ctx.node)
    if shapes is None:
        return None
    if isinstance(shapes, list):
        outs = [ctx.space.fresh_labels(s) for s in shapes]
        ctx.space.barrier([a for labels in outs for a in labels], reason)
        return outs
    out = ctx.space.fresh_labels(shapes)
    ctx.space.barrier(out, reason)
    return out


def _matches(labels: Any, shapes: Any) -> bool:
    if shapes is None:
        return True
    if isinstance(shapes, list):
        return (
            isinstance(labels, list)
            and len(labels) == len(shapes)
            and all(_matches(lab, s) for lab, s in zip(labels, shapes, strict=True))
        )
    return (
        isinstance(labels, list)
        and len(labels) == len(shapes)
        and all(isinstance(a, np.ndarray) and a.size == s for a, s in zip(labels, shapes, strict=True))
    )


def trace_channels(captured: CapturedGraph) -> tuple[ChannelSpace, dict[str, Any]]:
    """Run every node's rule over the graph; return the channel space and each node's labels."""
    space = ChannelSpace()
    labels: dict[str, Any] = {}
    state = set(captured.parameters) | set(captured.buffers)
    for node in captured.graph.nodes:
        if node.op == "placeholder":
            shape = _tensor_shapes(node)
            if shape is None or isinstance(shape, list):
                continue
            labels[node.name] = space.fresh_labels(shape)
            if node.name in captured.user_inputs:
                space.barrier(labels[node.name], f"model input {node.name!r}")
            elif node.name not in state:
                space.barrier(labels[node.name], f"tensor constant {node.name!r} cannot be sliced")
        elif node.op == "call_function":
            name, where = op_name(node), module_path(node)
            ctx = RuleContext(space, node, labels, where, state)
            if name in RULES:
                try:
                    out = RULES.get(name)(ctx)
                except Exception as error:  # a rule that cannot read this call blocks, it never guesses
                    out = _barrier_everything(ctx, f"rule for {name} failed at {where}: {error}")
                if not _matches(out, _tensor_shapes(node)):
                    out = _barrier_everything(ctx, f"rule for {name} gave wrong shapes at {where}")
            else:
                out = _barrier_everything(ctx, f"no channel rule for {name} at {where}")
            if out is not None:
                labels[node.name] = out
        elif node.op == "output":
            ctx = RuleContext(space, node, labels, "output", state)
            space.barrier([a for lab in ctx.tensor_args() for a in lab], "model output")
    return space, labels


def _reason(reasons: set[str]) -> str:
    ordered = sorted(reasons)
    text = "; ".join(ordered[:MAX_REASONS])
    return text + (f"; and {len(ordered) - MAX_REASONS} more" if len(ordered) > MAX_REASONS else "")


def _holdings(
    captured: CapturedGraph, space: ChannelSpace, labels: dict[str, Any]
) -> dict[int, dict[tuple[str, int], tuple[int, ...]]]:
    """For every live root (a channel with a producer): the positions it holds in each (tensor, dim),
    ascending, the (tensor, dim) keys in sorted order. One numpy sort over every (root, key, position)
    triple instead of a Python append per position: resnet50 has about 160,000 of them."""
    root_of = space.root_table()
    is_live = np.zeros(len(root_of), dtype=bool)
    is_live[sorted(space.live_roots())] = True
    state = {**captured.parameters, **captured.buffers}
    entries = sorted(
        (
            ((name, dim), atoms)
            for placeholder, name in state.items()
            for dim, atoms in enumerate(labels.get(placeholder, []))
        ),
        key=lambda entry: entry[0],
    )
    keys, positions, roots = [], [], []
    for k, (_, atoms) in enumerate(entries):
        atom_roots = root_of[atoms]
        (index,) = np.nonzero(is_live[atom_roots])
        keys.append(np.full(index.size, k, dtype=np.int64))
        positions.append(index)
        roots.append(atom_roots[index])
    if not entries:
        return {}
    key, position, root = (np.concatenate(a) for a in (keys, positions, roots))
    order = np.lexsort((position, key, root))
    key, position, root = key[order], position[order], root[order]
    starts = np.flatnonzero(np.r_[True, (root[1:] != root[:-1]) | (key[1:] != key[:-1])])
    ends = np.r_[starts[1:], len(root)]
    listed = position.tolist()
    holdings: dict[int, dict[tuple[str, int], tuple[int, ...]]] = {}
    for r, k, a, b in zip(root[starts].tolist(), key[starts].tolist(), starts.tolist(), ends.tolist(), strict=True):
        holdings.setdefault(r, {})[entries[k][0]] = tuple(listed[a:b])
    return holdings


def groups_from_trace(captured: CapturedGraph, space: ChannelSpace, labels: dict[str, Any]) -> GroupSet:
    """Turn union-find classes holding produced channels into :class:`ChannelGroup`s."""
    reasons = space.reasons_by_root()
    holdings = _holdings(captured, space, labels)
    by_key: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for root, held in holdings.items():
        blocked = _reason(reasons[root]) if root in reasons else None
        by_key[(tuple(held), blocked)].append(root)
    groups = []
    for (signature, blocked), roots in by_key.items():
        raw = tuple(sorted(set().union(*(reasons.get(r, set()) for r in roots))))
        anchor = signature[0]
        roots.sort(key=lambda r: holdings[r][anchor][0])
        members = [GroupMember(name, dim, tuple(holdings[r][(name, dim)] for r in roots)) for name, dim in signature]
        group_id = f"{anchor[0]}:{anchor[1]}@{holdings[roots[0]][anchor][0]}"
        group = ChannelGroup(group_id, members, len(roots), blocked, raw)
        if blocked is not None:
            layers = group.layers
            more = f" and {len(layers) - MAX_LAYERS} more" if len(layers) > MAX_LAYERS else ""
            group.blocked_by = f"{blocked} [layers: {', '.join(layers[:MAX_LAYERS])}{more}]"
        groups.append(group)
    groups.sort(key=lambda g: g.id)
    return GroupSet(groups, captured)


def build_groups(model: nn.Module, example_inputs: Sequence[Any]) -> GroupSet:
    """Capture ``model`` and return its channel groups (``.prunable`` and ``.blocked``).

    Raises :class:`~slimmer.errors.InputError` when the model cannot be captured.
    """
    captured = capture(model, example_inputs)
    space, labels = trace_channels(captured)
    if attention.mark_head_splits(model, captured, labels):  # heads found: walk again with H as the carrier
        space, labels = trace_channels(captured)
        attention.bar_fixed_heads(captured, space, labels)
    groupset = groups_from_trace(captured, space, labels)
    attention.attach_heads(model, groupset, space, labels)
    return groupset
