"""Groups whose removal breaks a model's forward (a channel count written as a literal in ``forward``, or
one that must divide evenly), for :func:`slimmer.structures.channel.plan_channels`: it raises
:class:`ForwardBreaks` when a planned forward fails on the meta copy, and keeps whole the groups
:func:`breaking_groups` names."""

from __future__ import annotations

from collections.abc import Callable

from slimmer.graph.groups import ChannelGroup


class ForwardBreaks(Exception):
    """A planned removal broke the meta copy's forward: look for the groups that cause it."""

    def __init__(self, keeps: list[int]) -> None:
        super().__init__("a planned forward failed")
        self.keeps = keeps


def breaking_groups(
    groups: list[ChannelGroup],
    excluded: set[int],
    failing: list[int],
    keeps_for: Callable[[list[int]], list[int]],
    macs_of: Callable[[list[int]], int | None],
) -> list[int]:
    """Indices of the groups whose removal alone breaks the forward: first each group alone at the count
    ``failing`` keeps, then, if none does, each alone at its largest removal (one meta count per try)."""
    whole = [group.channels for group in groups]
    candidates = [g for g in range(len(groups)) if g not in excluded]
    found = [
        g
        for g in candidates
        if failing[g] < whole[g] and macs_of([failing[g] if i == g else whole[i] for i in range(len(groups))]) is None
    ]
    if not found:
        found = [
            g for g in candidates if macs_of(keeps_for([whole[i] if i == g else 0 for i in range(len(groups))])) is None
        ]
    return found
