"""Importance criteria, registered by name. Importing this package registers the built-in ones."""

from slimmer.criteria import (  # noqa: F401  (registration)
    bn_scale,
    grasp,
    head_importance,
    lamp,
    magnitude,
    random,
    snip,
    synflow,
    taylor,
)
from slimmer.criteria.base import CRITERIA, Criterion, ScoreContext, get_criterion

__all__ = ["CRITERIA", "Criterion", "ScoreContext", "get_criterion"]
