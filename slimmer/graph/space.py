"""The channel space: which tensor indices must disappear together.

Every index of every dimension of every tensor in the captured graph is an *atom*. Op rules
(:mod:`slimmer.graph.rules`) say which atoms of an op's inputs and outputs are the same channel
(``unify``), which output atoms are new channels made by a weight (``produce``), and which atoms
cannot be removed and why (``barrier``). After the walk, each union-find class that contains a
produced atom is one removable channel; its members are the parameter slices that hold it.

Why atoms and not layers: cat, split, flatten, permute and channel shuffle all move channels
to other positions or dimensions; tracking indices makes every such offset exact by
construction, and a single rule per op is enough.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from torch import fx

Labels = list[np.ndarray]
"""One int64 array of atom ids per dimension of a tensor."""


class ChannelSpace:
    """Union-find over atoms, with per-atom barrier reasons and producer marks."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self.reasons: dict[int, set[str]] = {}
        self.producers: set[int] = set()

    def __len__(self) -> int:
        return len(self._parent)

    def fresh(self, size: int) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + size))
        return np.arange(start, start + size, dtype=np.int64)

    def fresh_labels(self, shape: Sequence[int]) -> Labels:
        return [self.fresh(int(s)) for s in shape]

    def find(self, atom: int) -> int:
        parent = self._parent
        while parent[atom] != atom:
            parent[atom] = parent[parent[atom]]
            atom = parent[atom]
        return atom

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                ra, rb = rb, ra
            self._parent[ra] = rb

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        """Make ``a[i]`` and ``b[i]`` the same channel for every i (arrays of equal length)."""
        if a.shape != b.shape:
            raise ValueError(f"cannot unify channel arrays of shapes {a.shape} and {b.shape}")
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            self.union(x, y)

    def unify_all(self, atoms: Iterable[int]) -> None:
        """Make all ``atoms`` one channel."""
        atoms = list(atoms)
        for other in atoms[1:]:
            self.union(atoms[0], other)

    def barrier(self, atoms: np.ndarray | Iterable[np.ndarray], reason: str) -> None:
        """Record that the channels holding these atoms cannot be removed, and why."""
        arrays = [atoms] if isinstance(atoms, np.ndarray) else list(atoms)
        for array in arrays:
            for atom in array.tolist():
                self.reasons.setdefault(atom, set()).add(reason)

    def produce(self, atoms: np.ndarray) -> None:
        """Mark atoms as channels created by a weight (the only channels worth removing)."""
        self.producers.update(atoms.tolist())

    def is_live(self, atoms: np.ndarray) -> bool:
        """Whether any of these atoms is (so far) in a class holding a produced channel."""
        if not self.producers:
            return False
        roots = {self.find(a) for a in atoms.tolist()}
        return any(self.find(p) in roots for p in self.producers)

    def live_roots(self) -> set[int]:
        return {self.find(p) for p in self.producers}

    def root_table(self) -> np.ndarray:
        """The root of every atom, as an int64 array indexed by atom id (a snapshot: later unions
        do not update it). Pointer jumping over the whole parent array, so the cost is a few numpy
        passes instead of one Python ``find`` per atom."""
        table = np.asarray(self._parent, dtype=np.int64)
        while True:
            jumped = table[table]
            if np.array_equal(jumped, table):
                return table
            table = jumped

    def reasons_by_root(self) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        for atom, reasons in self.reasons.items():
            out.setdefault(self.find(atom), set()).update(reasons)
        return out


class RuleContext:
    """What a rule sees: its node, the labels of its inputs, and the channel space."""

    def __init__(
        self,
        space: ChannelSpace,
        node: fx.Node,
        labels: dict[str, Any],
        where: str,
        state_placeholders: set[str],
    ) -> None:
        self.space = space
        self.node = node
        self.where = where
        self.state_placeholders = state_placeholders
        self._labels = labels

    @property
    def op(self) -> str:
        from slimmer.graph.capture import op_name

        return op_name(self.node)

    def labels(self, arg: Any) -> Labels | None:
        """Labels of a tensor argument, or None for scalars, lists of ints and None."""
        if isinstance(arg, fx.Node):
            value = self._labels.get(arg.name)
            if isinstance(value, list) and (not value or isinstance(value[0], np.ndarray)):
                return value
        return None

    def any_labels(self, arg: Any) -> Any:
        """Raw labels of a node argument (a tuple output is a list of Labels)."""
        return self._labels.get(arg.name) if isinstance(arg, fx.Node) else None

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        if len(self.node.args) > index:
            return self.node.args[index]
        return self.node.kwargs.get(name, default)

    def shape(self, arg: Any = None) -> tuple[int, ...]:
        """The static shape of ``arg`` (default: this node's single tensor output)."""
        node = self.node if arg is None else arg
        value = node.meta.get("val")
        return tuple(int(s) for s in value.shape)

    def out_shapes(self) -> list[tuple[int, ...]]:
        value = self.node.meta.get("val")
        if isinstance(value, (list, tuple)):
            return [tuple(int(s) for s in v.shape) for v in value]
        return [tuple(int(s) for s in value.shape)]

    def fresh(self, shape: Sequence[int] | None = None) -> Labels:
        return self.space.fresh_labels(self.shape() if shape is None else shape)

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        self.space.unify(a, b)

    def barrier(self, atoms: np.ndarray | Iterable[np.ndarray], what: str) -> None:
        self.space.barrier(atoms, f"{what} ({self.op} at {self.where})")

    def tensor_args(self) -> list[Labels]:
        """Labels of every tensor among the node's args and kwargs, nested lists included."""
        found: list[Labels] = []

        def visit(value: Any) -> None:
            if isinstance(value, fx.Node):
                raw = self._labels.get(value.name)
                if isinstance(raw, list) and raw and isinstance(raw[0], list):
                    found.extend(raw)
                elif isinstance(raw, list):
                    found.append(raw)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    visit(item)
            elif isinstance(value, dict):
                for item in value.values():
                    visit(item)

        visit(self.node.args)
        visit(self.node.kwargs)
        return found
