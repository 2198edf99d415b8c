"""What every stage config shares (:mod:`slimmer.stage_config`): the base class that builds a stage's
config from :class:`~slimmer.config.CompressConfig` by field name, and the range checks they use."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, TypeVar

from slimmer.errors import ConfigError

SCOPES = ("global", "layer")
T = TypeVar("T", bound="StageConfig")


def check_fraction(name: str, value: float, *, low_open: bool, high_open: bool) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number in the interval named."""
    bad = not isinstance(value, (int, float)) or not math.isfinite(value)
    if not bad:
        bad = (value <= 0 if low_open else value < 0) or (value >= 1 if high_open else value > 1)
    if bad:
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ConfigError(f"{name} must be a number in {interval}, got {value!r}")


def check_finite_nonnegative(name: str, value: float) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number ≥ 0."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number ≥ 0, got {value!r}")


class StageConfig:
    """Base of the stage configs: built from a :class:`~slimmer.config.CompressConfig` by field name."""

    @classmethod
    def of(cls: type[T], config: Any) -> T:
        """This stage's config from ``config`` (any object with the same attribute names)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})  # type: ignore[arg-type]
