"""``PruningPlan``: the serializable result of channel pruning (group id → kept channels).

A plan names groups by their id and by the (tensor name, dim) pairs of their members, which
depend only on the architecture; so a plan saved as JSON can be replayed on a freshly built
model of the same architecture. Before masking or surgery a plan is *bound* to the model's
:class:`~slimmer.graph.groups.GroupSet`, which supplies the index maps and checks that the
architecture matches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from slimmer.errors import ConfigError, InputError
from slimmer.graph.groups import ChannelGroup, GroupSet

PLAN_VERSION = 1


@dataclass
class PlannedGroup:
    """Which channels of one group are kept (indices into the group's channel order)."""

    id: str
    members: list[tuple[str, int]]
    channels: int
    kept: list[int]

    @property
    def pruned(self) -> list[int]:
        kept = set(self.kept)
        return [j for j in range(self.channels) if j not in kept]


@dataclass
class PruningPlan:
    """Kept channels per group plus how they were chosen (criterion, targets, MACs)."""

    groups: list[PlannedGroup]
    criterion: str = "l1"
    scope: str = "global"
    sparsity: float | None = None
    macs_target: float | None = None
    round_to: int | str = 1  # a fixed multiple or "relative" (slimmer/structures/rounding.py)
    seed: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    notes: list[str] = field(default_factory=list)
    _bound: dict[str, ChannelGroup] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ binding
    def bind(self, groupset: GroupSet) -> PruningPlan:
        """Attach the model's groups; raises :class:`InputError` if the architecture differs."""
        by_id = {g.id: g for g in groupset.groups}
        bound = {}
        for planned in self.groups:
            group = by_id.get(planned.id)
            if group is None:
                raise InputError(
                    f"the pruning plan names group {planned.id!r}, which this model does not have",
                    hint="a plan can only be replayed on the architecture it was made for",
                )
            if [tuple(m) for m in planned.members] != group.signature or planned.channels != group.channels:
                raise InputError(f"group {planned.id!r} of the pruning plan does not match this model")
            if planned.pruned and group.blocked_by is not None:
                raise InputError(f"the plan prunes group {planned.id!r}, which is blocked: {group.blocked_by}")
            bound[planned.id] = group
        self._bound = bound
        return self

    @property
    def is_bound(self) -> bool:
        return len(self._bound) == len(self.groups)

    def bound_group(self, group_id: str) -> ChannelGroup:
        if not self.is_bound:
            raise ConfigError("the pruning plan is not bound to a model; call plan.bind(build_groups(...))")
        return self._bound[group_id]

    def removals(self) -> dict[str, dict[int, set[int]]]:
        """Tensor name → dim → indices removed, over every group of the plan."""
        out: dict[str, dict[int, set[int]]] = {}
        for planned in self.groups:
            pruned = planned.pruned
            if not pruned:
                continue
            for member in self.bound_group(planned.id).members:
                target = out.setdefault(member.name, {}).setdefault(member.dim, set())
                for j in pruned:
                    target.update(member.indices[j])
        return out

    def restricted(self, group_ids: set[str]) -> PruningPlan:
        """A copy pruning only ``group_ids`` (every other group keeps all its channels)."""
        groups = [
            PlannedGroup(
                g.id,
                list(g.members),
                g.channels,
                list(g.kept) if g.id in group_ids else list(range(g.channels)),
            )
            for g in self.groups
        ]
        copy = PruningPlan(groups, **{k: v for k, v in self._fields().items() if k != "groups"})
        copy._bound = dict(self._bound)
        return copy

    # ------------------------------------------------------------------ summaries
    @property
    def channels_total(self) -> int:
        return sum(g.channels for g in self.groups)

    @property
    def channels_pruned(self) -> int:
        return sum(g.channels - len(g.kept) for g in self.groups)

    # ------------------------------------------------------------------ JSON
    def _fields(self) -> dict[str, Any]:
        return {
            "groups": self.groups,
            "criterion": self.criterion,
            "scope": self.scope,
            "sparsity": self.sparsity,
            "macs_target": self.macs_target,
            "round_to": self.round_to,
            "seed": self.seed,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "notes": list(self.notes),
        }

    def to_dict(self) -> dict[str, Any]:
        data = self._fields()
        data["groups"] = [
            {
                "id": g.id,
                "members": [list(m) for m in g.members],
                "channels": g.channels,
                "kept": list(g.kept),
            }
            for g in self.groups
        ]
        return {"version": PLAN_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        if data.get("version") != PLAN_VERSION:
            raise InputError(f"unsupported pruning plan version {data.get('version')!r} (expected {PLAN_VERSION})")
        try:
            groups = [
                PlannedGroup(
                    str(g["id"]),
                    [(str(n), int(d)) for n, d in g["members"]],
                    int(g["channels"]),
                    [int(k) for k in g["kept"]],
                )
                for g in data["groups"]
            ]
            for g in groups:
                if not g.kept or any(not 0 <= k < g.channels for k in g.kept) or len(set(g.kept)) != len(g.kept):
                    raise ValueError(f"group {g.id!r} keeps invalid channels")
            fields = {k: data[k] for k in cls._scalar_keys() if k in data}
            return cls(groups, notes=[str(n) for n in data.get("notes", [])], **fields)
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"malformed pruning plan: {error}") from error

    @staticmethod
    def _scalar_keys() -> tuple[str, ...]:
        return (
            "criterion",
            "scope",
            "sparsity",
            "macs_target",
            "round_to",
            "seed",
            "macs_before",
            "macs_after",
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"the pruning plan is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise InputError("the pruning plan must be a JSON object")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def removed_per_layer(plan: PruningPlan, model: nn.Module) -> dict[str, float]:
    """Fraction of each changed layer's weight that the plan removes, keyed by the weight's name.

    A layer is changed when the plan slices its ``weight`` (producer rows, consumer columns, a
    norm's or PReLU's per-channel values) or a parameter of its own that is not a bias (a
    LayerScale ``gamma``). For a conv losing half its output rows and a quarter of its input
    columns the fraction is ``1 - 0.5 * 0.75``. Layers the plan leaves whole are not listed.
    """
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    out: dict[str, float] = {}
    for name, dims in sorted(plan.removals().items()):
        if name not in shapes or name.rsplit(".", 1)[-1] == "bias":
            continue
        kept = 1.0
        for dim, removed in dims.items():
            kept *= (shapes[name][dim] - len(removed)) / shapes[name][dim]
        out[name] = 1.0 - kept
    return out
