"""How kept channel counts are rounded: a fixed multiple, or a multiple relative to the layer's width.

A fixed ``round_to`` of 16 keeps onnxruntime on its fast kernels (docs/BENCHMARKS.md, Latency), but
on a 16- or 32-channel layer it leaves two choices: keep the layer whole or remove half of it at
once, which pushes the pruning into the wide layers (docs/BENCHMARKS.md, Round-to on a narrow
model). The relative rule (:data:`RELATIVE`) rounds each group to the largest of the
hardware-friendly multiples :data:`MULTIPLES` that is at most :data:`FRACTION` of the group's width:
16 for layers of 64 channels and more, 8 for 32-63, 4 for 16-31, 2 for 8-15, 1 below. Wide layers
are rounded exactly as with 16; a narrow layer can lose a quarter of its channels at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimmer.errors import ConfigError

if TYPE_CHECKING:  # the CLI parses --round-to with this module; keep torch off its import path
    from slimmer.graph.groups import ChannelGroup

RELATIVE = "relative"
MULTIPLES = (16, 8, 4, 2, 1)
FRACTION = 0.25

RoundTo = int | str
"""A fixed multiple (an int ≥ 1) or :data:`RELATIVE`."""


def check_round_to(round_to: RoundTo) -> None:
    """Raises :class:`ConfigError` unless ``round_to`` is an int ≥ 1 or :data:`RELATIVE`."""
    if round_to == RELATIVE:
        return
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ConfigError(f"round_to must be an integer >= 1 or {RELATIVE!r}, got {round_to!r}")


def parse_round_to(value: object) -> RoundTo | None:
    """``--round-to`` text (or an int) as a :data:`RoundTo`; None stays None (the default rule).

    Raises :class:`ConfigError` for anything but an integer ≥ 1 or ``relative``."""
    if value is None or value == RELATIVE or (isinstance(value, int) and not isinstance(value, bool)):
        if isinstance(value, int) and value < 1:
            raise ConfigError(f"--round-to must be an integer ≥ 1 or {RELATIVE}, got {value}")
        return value
    text = str(value).strip()
    if text == RELATIVE:
        return RELATIVE
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--round-to must be an integer ≥ 1 or {RELATIVE}, got {value!r}")
    return int(text)


def relative_multiple(width: int) -> int:
    """The largest of :data:`MULTIPLES` that is at most :data:`FRACTION` × ``width`` channels (1 when none is).

    >>> [relative_multiple(w) for w in (3, 8, 16, 24, 32, 63, 64, 512)]
    [1, 2, 4, 4, 8, 8, 16, 16]
    """
    return next((m for m in MULTIPLES if m <= FRACTION * width), 1)


def group_width(group: ChannelGroup) -> int:
    """The group's width in channels: the fewest indices any of its tensors holds along the pruned dim
    (a plain conv: its output channels; attention heads: heads × head width). The fewest, because a
    member can hold several indices per channel (a Linear after flattening a 2×2 map holds four): the
    rule is relative to the narrowest layer the group cuts, which would otherwise only be kept whole."""
    return min((sum(len(idx) for idx in m.indices) for m in group.members), default=group.channels)


def multiple_for(group: ChannelGroup, round_to: RoundTo) -> int:
    """The multiple (in channels) that ``group``'s kept count is rounded up to."""
    return relative_multiple(group_width(group)) if round_to == RELATIVE else int(round_to)


def describe(groups: list[ChannelGroup], round_to: RoundTo) -> dict[str, int]:
    """For the report: how many prunable groups got each multiple, e.g. ``{"4": 7, "8": 6, "16": 6}``."""
    counts: dict[int, int] = {}
    for g in groups:
        m = multiple_for(g, round_to)
        counts[m] = counts.get(m, 0) + 1
    return {str(m): counts[m] for m in sorted(counts)}
