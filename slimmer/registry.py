"""One small registry used for criteria, structures, architectures and graph rules."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from slimmer.errors import ConfigError

T = TypeVar("T")


def close_matches(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """Names among ``candidates`` that look like ``name`` (case-insensitive)."""
    lowered = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[f] for f in found]


def did_you_mean(name: str, candidates: list[str]) -> str:
    """A ' Did you mean ...?' suffix, or '' when nothing is close."""
    matches = close_matches(name, candidates)
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


class Registry(Generic[T]):
    """Name → object. Registering a name twice raises; an unknown name raises with close matches."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        def wrap(item: T) -> T:
            return self.register(name, item)

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise ConfigError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, list(self._items))} Known: {known}."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
