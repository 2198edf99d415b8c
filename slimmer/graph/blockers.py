"""What holds channels back: each barrier reason with the channels and MACs of the groups it blocks.

A group is blocked by every barrier any of its channels meets (:mod:`slimmer.graph.groups`). When a
model prunes badly or not at all, the useful answer is not the alphabetically first reason but the
one that holds back the most: this module totals, per reason, the channels of the groups it blocks
and the MACs of the weights those channels feed (:class:`~slimmer.graph.macs.MacsByWeight`, i.e.
what removing all of them would save), largest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from slimmer.graph.groups import ChannelGroup, GroupSet
from slimmer.graph.macs import MacsByWeight, to_meta

BY_DESIGN = ("model output", "model input")
MAX_SHOWN = 4


@dataclass
class Blocker:
    """One barrier reason and what it holds back (channels as counted in the producing tensors)."""

    reason: str
    channels: int
    macs: int | None
    groups: int
    layers: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "channels": self.channels,
            "macs": self.macs,
            "groups": self.groups,
            "layers": self.layers,
        }

    def describe(self) -> str:
        macs = f", {self.macs:,} MACs" if self.macs is not None else ""
        layers = ", ".join(self.layers[:6]) + (f" and {len(self.layers) - 6} more" if len(self.layers) > 6 else "")
        return f"{self.reason} holds back {self.channels} channels{macs} [layers: {layers}]"


def group_channel_count(group: ChannelGroup) -> int:
    """Channels of a group as a tensor holds them: the widest dim-0 member (a unit may hold several)."""
    counts = [sum(len(idx) for idx in m.indices) for m in group.members if m.dim == 0]
    return max(counts, default=group.channels)


def _removals(groups: list[ChannelGroup]) -> dict[str, dict[int, set[int]]]:
    out: dict[str, dict[int, set[int]]] = {}
    for group in groups:
        for member in group.members:
            removed = out.setdefault(member.name, {}).setdefault(member.dim, set())
            removed.update(i for idx in member.indices for i in idx)
    return out


def blockers(
    groupset: GroupSet, model: nn.Module | None = None, example_inputs: Sequence[Any] | None = None
) -> list[Blocker]:
    """Every barrier reason of ``groupset``'s blocked groups with what it holds back, largest first.

    Channels of a group blocked by several reasons count under each of them. MACs are counted when
    ``model`` and ``example_inputs`` are given (on a meta copy, at the inputs' batch size; pass batch
    1); otherwise ``macs`` is None. Sorted by MACs (when known), then channels, then reason.
    """
    by_reason: dict[str, list[ChannelGroup]] = {}
    for group in groupset.blocked:
        for reason in group.reasons or (group.blocked_by or "",):
            by_reason.setdefault(reason, []).append(group)
    counter = None
    if model is not None and example_inputs is not None and by_reason:
        try:
            counter = MacsByWeight(*to_meta(model, example_inputs))
        except Exception:  # noqa: BLE001 - a forward that cannot run on meta: channels only
            counter = None
    found = []
    for reason, groups in by_reason.items():
        macs = counter.total - counter.estimate(_removals(groups)) if counter is not None else None
        layers = sorted({layer for g in groups for layer in g.layers})
        found.append(Blocker(reason, sum(group_channel_count(g) for g in groups), macs, len(groups), layers))
    found.sort(key=lambda b: (-(b.macs or 0), -b.channels, b.reason))
    return found


def by_design(blocker: Blocker) -> bool:
    """Model inputs and outputs keep their channels by design: not a barrier to report as a warning."""
    return blocker.reason.startswith(BY_DESIGN)


def nothing_prunable_message(found: list[Blocker]) -> str:
    """The error when no group can be pruned: every reason with what it holds back, largest first."""
    if not found:
        return "no channel group of this model can be pruned: it has no channels made by a weight"
    shown = "; ".join(b.describe() for b in found[:MAX_SHOWN])
    more = f"; and {len(found) - MAX_SHOWN} more reasons" if len(found) > MAX_SHOWN else ""
    return f"no channel group of this model can be pruned. Blocked by: {shown}{more}"
