"""Importance criteria, registered by name. Importing this package registers the built-in ones."""

from slimmer.criteria.base import CRITERIA, Criterion, ScoreContext, get_criterion
from slimmer.criteria import magnitude, lamp, random  # noqa: F401  (registration)

__all__ = ["CRITERIA", "Criterion", "ScoreContext", "get_criterion"]
