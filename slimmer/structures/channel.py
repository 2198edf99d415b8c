"""Channel pruning: score each channel of each group, then choose what to keep (a ``PruningPlan``).

Scores (:func:`group_scores`) sum over every tensor slice of a channel's group (the producer's
rows, the BN's parameters, every consumer's columns), in the spirit of DepGraph (Fang et al.,
CVPR 2023): a channel is as important as everything that goes with it. ``bn-scale`` is Network
Slimming's |γ| (Liu et al., ICCV 2017).

Selection (:func:`plan_channels`): ``global`` scope ranks every channel of every group on
scores normalized by their group's mean, so groups of different magnitudes compete fairly;
``layer`` scope prunes the same fraction of every group. With ``macs_target`` the global rank
cut (or the uniform fraction) is found by bisection on MACs counted by ``FlopCounterMode`` on a
meta-device copy with the channels really removed. Every group keeps at least one channel and at
least ``1 - max_ratio`` of them; kept counts are rounded *up* so that every tensor keeps a
multiple of ``round_to`` channels (counted in channels, not in units: a unit of a grouped conv or
GroupNorm holds several, see :func:`unit_step`), so rounding never prunes more than asked and the
bisection absorbs the difference elsewhere. Rounding moves in coarse steps, so the first step that
meets the target can land well under it; rounding steps are then given back, the most important
channels first (global) or the most cut layers first (layer), while the target still holds
(:func:`slimmer.structures.budget.refill`). Groups whose removal breaks the forward (a size
written as a literal in ``forward``, or one that must divide evenly) are looked for on a meta copy
when a planned forward fails there, and kept whole, with a note.

``latency_aware`` divides each channel's normalized score by its group's estimated time per MAC
relative to the model's average (:mod:`slimmer.structures.latency_cost`): at the same MACs target,
channels that cost more time than their MACs suggest (depthwise convolutions, wide activations at
high resolution) go first, so the saved MACs turn into saved time. The MACs target is unchanged.
"""

from __future__ import annotations

import bisect
import copy
import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from slimmer.errors import ConfigError
from slimmer.graph.groups import ChannelGroup, GroupSet
from slimmer.graph.macs import MacsByWeight, count_macs, counting_copy
from slimmer.structures.breaks import ForwardBreaks, breaking_groups
from slimmer.structures.budget import refill, removed_by_order, removed_counts, smallest_passing
from slimmer.structures.latency_cost import BUILT_IN, LatencyByWeight, LatencyCosts
from slimmer.structures.plan import PlannedGroup, PruningPlan
from slimmer.structures.rounding import RoundTo, check_round_to, multiple_for
from slimmer.surgery import remove_channels

SCORE_KINDS = ("l1", "l2", "bn-scale", "random")
SCOPES = ("global", "layer")
LATENCY_EXPONENT = 0.5  # key = normalized score / relative time-per-MAC ** LATENCY_EXPONENT (docs/BENCHMARKS.md)


def _per_channel(group: ChannelGroup, member_index: int, per_index: torch.Tensor) -> torch.Tensor:
    member = group.members[member_index]
    positions = [i for idx in member.indices for i in idx]
    channels = [j for j, idx in enumerate(member.indices) for _ in idx]
    out = torch.zeros(group.channels, dtype=torch.float64)
    return out.index_add_(0, torch.tensor(channels), per_index[torch.tensor(positions)])


def group_scores(
    group: ChannelGroup,
    model: nn.Module,
    kind: str = "l1",
    seed: int = 0,
    parameters: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Importance of each channel of ``group`` (float64, length ``group.channels``).

    ``l1``/``l2``: magnitude summed over every parameter slice of the channel; ``bn-scale``: |γ|
    summed over the group's BatchNorms (raises :class:`ConfigError` if it has none); ``random``:
    uniform, seeded by ``seed`` and the group id. ``parameters`` maps every parameter name (shared ones too)
    when the caller scores many groups (built here otherwise).
    """
    if kind not in SCORE_KINDS:
        raise ConfigError(f"unknown channel criterion {kind!r}; choose one of {', '.join(SCORE_KINDS)}")
    if kind == "random":
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(group.id.encode()))
        return torch.rand(group.channels, generator=generator, dtype=torch.float64)
    params = dict(model.named_parameters(remove_duplicate=False)) if parameters is None else parameters
    total = torch.zeros(group.channels, dtype=torch.float64)
    found = False
    for k, member in enumerate(group.members):
        tensor = params.get(member.name)
        if tensor is None:
            continue
        if kind == "bn-scale":
            owner = model.get_submodule(member.module)
            if not (isinstance(owner, nn.modules.batchnorm._BatchNorm) and member.name.endswith(".weight")):
                continue
        found = True
        # one float64 copy, laid out (channel, rest) as before, squared or made absolute in place: the same sums
        # as before with two fewer full-size temporaries (a third of resnet50's planning time went to them)
        rows = tensor.detach().movedim(member.dim, 0).reshape(tensor.shape[member.dim], -1)
        values = rows.to(torch.float64, copy=True)
        per_index = values.abs_().sum(1) if kind in ("l1", "bn-scale") else values.square_().sum(1)
        total += _per_channel(group, k, per_index)
    if kind == "bn-scale" and not found:
        raise ConfigError(f"group {group.id!r} has no BatchNorm, so bn-scale cannot score it")
    return total.sqrt() if kind == "l2" else total


def unit_step(group: ChannelGroup, round_to: int) -> int:
    """How many of ``group``'s units make every tensor's kept count a multiple of ``round_to``.

    A unit (one "channel" of the group) holds ``len(member.indices[j])`` indices of each member: one
    for a plain conv, a whole conv or GroupNorm group of several channels, r*r channels before a
    pixel shuffle. Keeping k units keeps ``k * width`` indices of a member, a multiple of
    ``round_to`` when k is a multiple of ``round_to / gcd(round_to, width)``; the step satisfies
    every member at once (their least common multiple). Rounding counts channels, never units.
    """
    step = 1
    for member in group.members:
        for width in {len(idx) for idx in member.indices}:
            step = math.lcm(step, round_to // math.gcd(round_to, width))
    return step


def _keep_count(n: int, pruned: int, round_to: int, max_ratio: float) -> int:
    """Units to keep of ``n`` when ``pruned`` are asked for: at least ``1 - max_ratio`` of them and
    one, rounded up to a multiple of ``round_to`` (here already in units, see :func:`unit_step`)."""
    keep = max(n - pruned, math.ceil(n * (1.0 - max_ratio) - 1e-9), 1)
    keep = math.ceil(keep / round_to) * round_to
    return min(keep, n)


def _validate(
    sparsity: float | None,
    macs_target: float | None,
    round_to: RoundTo,
    max_ratio: float,
    scope: str,
    criterion: str,
    example_inputs: Sequence[Any] | None,
) -> None:
    if (sparsity is None) == (macs_target is None):
        raise ConfigError("give exactly one of sparsity and macs_target for channel pruning")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if macs_target is not None and not 0.0 < macs_target <= 1.0:
        raise ConfigError(f"macs_target must be in (0, 1], got {macs_target!r}")
    if macs_target is not None and example_inputs is None:
        raise ConfigError("macs_target needs example_inputs to count MACs")
    check_round_to(round_to)
    if not 0.0 < max_ratio < 1.0:
        raise ConfigError(f"max_ratio must be in (0, 1), got {max_ratio!r}")
    if scope not in SCOPES:
        raise ConfigError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if criterion not in SCORE_KINDS:
        raise ConfigError(f"unknown channel criterion {criterion!r}; choose one of {', '.join(SCORE_KINDS)}")


OVERSHOOT = 0.05
"""A plan keeping more than this fraction of the original MACs below ``macs_target`` is reported."""


def _count_plan_macs(meta: tuple[nn.Module, tuple[Any, ...]], plan: PruningPlan) -> int | None:
    """MACs of the meta copy with ``plan`` applied, or None when that forward fails."""
    try:
        return count_macs(remove_channels(copy.deepcopy(meta[0]), plan), meta[1])
    except Exception:  # noqa: BLE001 - a shape hard-coded in forward()
        return None


def plan_channels(
    groupset: GroupSet,
    model: nn.Module,
    *,
    sparsity: float | None = None,
    macs_target: float | None = None,
    round_to: RoundTo = 1,
    max_ratio: float = 0.9,
    scope: str = "global",
    criterion: str = "l1",
    example_inputs: Sequence[Any] | None = None,
    seed: int = 0,
    channel_scores: Callable[[ChannelGroup], torch.Tensor] | None = None,
    latency_aware: bool = False,
    latency_costs: LatencyCosts | None = None,
) -> PruningPlan:
    """Choose the channels to keep in every prunable group; return a bound :class:`PruningPlan`.

    ``sparsity`` is the fraction of prunable channels to remove; ``macs_target`` the fraction of
    the original MACs to keep (exactly one of them). When a target cannot be reached (every group
    at ``max_ratio``, or too much is blocked) the plan prunes as far as allowed and says so in
    ``notes``; ``macs_after / macs_before`` is what was achieved. ``latency_aware`` ranks channels
    by importance per estimated time per MAC (global scope; needs ``example_inputs``; see the
    module docstring), weighing MACs and activation elements with ``latency_costs`` (the built-in
    constants when None; ``slimmer bench --calibrate`` measures them). ``round_to`` is a fixed
    multiple or ``"relative"`` (a multiple per group from its width, :mod:`slimmer.structures.rounding`).
    """
    if channel_scores is not None:  # scores from a weight criterion (SNIP, SynFlow, ...), summed per group
        _validate(sparsity, macs_target, round_to, max_ratio, scope, "l1", example_inputs)
    else:
        _validate(sparsity, macs_target, round_to, max_ratio, scope, criterion, example_inputs)
    if latency_aware and example_inputs is None:
        raise ConfigError("latency-aware channel ranking needs example_inputs to estimate latency")
    notes: list[str] = []
    groups: list[ChannelGroup] = []
    order: dict[str, list[int]] = {}  # channel indices, most important first
    normalized: list[tuple[float, int, int]] = []
    parameters = dict(model.named_parameters(remove_duplicate=False))
    for group in groupset.prunable:
        try:
            scores = (
                channel_scores(group) if channel_scores else group_scores(group, model, criterion, seed, parameters)
            )
        except ConfigError as error:
            notes.append(f"group {group.id} kept whole: {error}")
            continue
        g = len(groups)
        groups.append(group)
        order[group.id] = sorted(range(group.channels), key=lambda j, s=scores: (-float(s[j]), j))
        mean = float(scores.mean()) or 1.0
        normalized.extend((float(scores[j]) / mean, g, j) for j in range(group.channels))
    # The copy every count runs on: meta when the forward runs there, else a real copy (Hugging Face models
    # read mask values with .item()); the latency table records its shapes from the same copy.
    meta: tuple[nn.Module, tuple[Any, ...]] | None = None
    if example_inputs is not None:
        meta = counting_copy(model, example_inputs)
    if latency_aware:
        assert meta is not None  # latency_aware without example_inputs was refused above
        table = LatencyByWeight(*meta, costs=latency_costs or BUILT_IN)
        costs = table.relative_cost(groups)
        normalized = [(value / costs[g] ** LATENCY_EXPONENT, g, j) for value, g, j in normalized]
        notes.append("channels ranked by score per estimated time per MAC (latency-aware)")
    normalized.sort()
    pruned_in_group: list[list[int]] = [[] for _ in groups]  # cumulative rank positions per group
    for rank, (_, g, _) in enumerate(normalized):
        pruned_in_group[g].append(rank)

    steps_in_units = [unit_step(group, multiple_for(group, round_to)) for group in groups]

    def keeps_for(counts: list[int]) -> list[int]:
        """Units each group keeps when ``counts`` are asked off it (floors and rounding applied)."""
        return [
            _keep_count(group.channels, c, step, max_ratio)
            for group, c, step in zip(groups, counts, steps_in_units, strict=True)
        ]

    def plan_for(keeps: list[int]) -> PruningPlan:
        planned = [
            PlannedGroup(group.id, group.signature, group.channels, sorted(order[group.id][:keep]))
            for group, keep in zip(groups, keeps, strict=True)
        ]
        plan = PruningPlan(
            planned,
            criterion=criterion,
            scope=scope,
            sparsity=sparsity,
            macs_target=macs_target,
            round_to=round_to,
            seed=seed,
            notes=list(notes),
        )
        return plan.bind(GroupSet(groups))

    steps = 24
    excluded: set[int] = set()  # groups whose removal breaks the forward (seen on the meta copy)
    if scope == "global":
        space = len(normalized)

        def raw_counts(k: int) -> list[int]:
            return [bisect.bisect_left(ranks, k) for ranks in pruned_in_group]
    else:
        space = steps

        def raw_counts(k: int) -> list[int]:
            ratio = max_ratio * k / steps
            return [math.floor(ratio * g.channels + 1e-9) for g in groups]

    def keeps_at(k: int) -> list[int]:
        return keeps_for([0 if g in excluded else c for g, c in enumerate(raw_counts(k))])

    macs_before = None
    if meta is not None:
        by_weight = MacsByWeight(*meta)
        macs_before = by_weight.total

    counted_macs: dict[tuple[int, ...], int | None] = {}  # keeps -> MACs (a count is a meta forward)

    def macs_of(keeps: list[int]) -> int | None:
        """MACs with each group keeping ``keeps`` units, or None when that forward fails."""
        if meta is None:
            return None
        key = tuple(keeps)
        if key not in counted_macs:  # None: a shape hard-coded in forward(); found and excluded below
            counted_macs[key] = _count_plan_macs(meta, plan_for(keeps))
        return counted_macs[key]

    if macs_target is not None and not macs_before:
        raise ConfigError("macs_target needs a model whose MACs can be counted, and this one counts 0")
    breaks_searched = False

    def counted_or_search(keeps: list[int]) -> int | None:
        """``macs_of``, raising :class:`ForwardBreaks` the first time a counted plan's forward fails."""
        macs = macs_of(keeps)
        if macs is None and not breaks_searched:
            raise ForwardBreaks(keeps)
        return macs

    sizes = [group.channels for group in groups]

    def choose() -> list[int]:
        """Units each group keeps: the bisection to the target, then the refill."""
        if macs_target is not None:
            goal = macs_target * (macs_before or 0)
            by_order = removed_by_order(groups, order, by_weight)

            def fits(keeps: list[int]) -> bool:
                return by_weight.estimate_counts(removed_counts(by_order, keeps)) <= goal

            def counted(keeps: list[int]) -> bool:
                macs = counted_or_search(keeps)
                return macs is not None and macs <= goal

            k = smallest_passing(space, lambda k: fits(keeps_at(k)))
            if not counted(keeps_at(k)):  # ops the estimate holds constant: continue on real counts
                k += smallest_passing(space - k, lambda extra: counted(keeps_at(k + extra)))
            keeps = keeps_at(k)
        else:
            wanted = sparsity * sum(sizes) - 1e-9

            def fits(keeps: list[int]) -> bool:
                return sum(sizes) - sum(keeps) >= wanted

            if scope == "layer":
                keeps = keeps_for(
                    [0 if g in excluded else math.floor(sparsity * n + 1e-9) for g, n in enumerate(sizes)]
                )
            else:
                keeps = keeps_at(smallest_passing(space, lambda k: fits(keeps_at(k))))
        if fits(keeps):  # rounding stepped past the target: give back what still fits
            if scope == "global":
                key = [[0.0] * n for n in sizes]
                for value, g, j in normalized:
                    key[g][j] = value

                def priority(g: int, keep: int) -> float:  # the most important channels come back first
                    chosen = order[groups[g].id][keep : keep + steps_in_units[g]]
                    return -sum(key[g][j] for j in chosen) / len(chosen)
            else:

                def priority(g: int, keep: int) -> float:  # the most cut layers come back first
                    return keep / sizes[g]

            refilled = refill(keeps, sizes, steps_in_units, fits, priority)
            if macs_target is None or counted(refilled):
                keeps = refilled
        return keeps

    # counting_copy returns a model whose forward already ran, so only removals can break it. The groups
    # whose removal does are searched for only when a planned forward fails (a size written as a literal
    # in forward()), and only those models pay for it: each group alone at the failing plan's count (a
    # size that must divide evenly breaks at some counts only), else each alone at its largest removal.
    # Every round keeps at least one more group whole, so this ends.
    while True:
        try:
            keeps = choose()
            if meta is not None:
                counted_or_search(keeps)
            break
        except ForwardBreaks as failed:
            found = breaking_groups(groups, excluded, failed.keeps, keeps_for, macs_of)
            for g in found:
                excluded.add(g)
                notes.append(f"group {groups[g].id} kept whole: removing its channels breaks the forward")
            if not found:  # no single group explains it: plan without raising, and say so below
                breaks_searched = True
    plan = plan_for(keeps)
    plan.macs_before = macs_before
    kept_whole = f", {len(excluded)} kept whole because removing their channels breaks the forward" if excluded else ""
    if meta is not None:
        plan.macs_after = macs_of(keeps)
    if plan.macs_after is None and meta is not None:
        plan.notes.append("MACs after pruning could not be counted: the forward fails on a meta copy")
    elif macs_target is not None and plan.macs_after > macs_target * macs_before:
        plan.notes.append(
            f"MACs target {macs_target:g} not reached: kept {plan.macs_after / macs_before:.3f} "
            f"(max_ratio {max_ratio:g}, {len(groupset.blocked)} blocked groups{kept_whole})"
        )
    elif macs_target is not None and plan.macs_after < (macs_target - OVERSHOOT) * macs_before:
        plan.notes.append(
            f"MACs target {macs_target:g} overshot: kept {plan.macs_after / macs_before:.3f}, because the kept "
            f"channel counts move in coarse steps (round_to {round_to}"
            + (", every layer by the same ratio" if scope == "layer" else "")
            + "); a finer --round-to"
            + (" or --scope global" if scope == "layer" else "")
            + " lands closer"
        )
    if sparsity is not None and plan.channels_pruned < sparsity * plan.channels_total - 1e-9:
        plan.notes.append(
            f"channel sparsity {sparsity:g} not reached: removed "
            f"{plan.channels_pruned}/{plan.channels_total} prunable channels{kept_whole}"
            + (" (--scope global lets the other layers make up for them)" if excluded and scope == "layer" else "")
        )
    return plan
