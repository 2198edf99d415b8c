"""The names every registry-backed option accepts: one source for validation, ``--help`` and tests.

Each function reads its registry at call time, so a method, criterion, schedule or regularizer
registered later is offered by the CLI without another edit.
"""

from __future__ import annotations

CHANNEL_ONLY_CRITERIA = ("l1", "l2")
"""Channel criteria that are not weight criteria: the L1 / L2 norm of each channel's weights."""


def methods() -> list[str]:
    """``--method``: the registered pruning method handlers (:data:`slimmer.prune.METHODS`)."""
    from slimmer.prune import METHODS

    return METHODS.names()


def criteria() -> list[str]:
    """``--criterion``: every registered weight criterion, and the channel-only norms."""
    from slimmer.criteria import CRITERIA

    return sorted({*CRITERIA.names(), *CHANNEL_ONLY_CRITERIA})


def schedules() -> list[str]:
    """``--schedule``: the registered pruning schedules."""
    from slimmer.schedules import SCHEDULES

    return SCHEDULES.names()


def regularizers() -> list[str]:
    """``--regularizer``: the registered regularized phases."""
    from slimmer.train.regularizers import REGULARIZERS

    return REGULARIZERS.names()


def exporters() -> list[str]:
    """``--exporter``: the ONNX exporters."""
    from slimmer.export.onnx import EXPORTERS

    return list(EXPORTERS)


def optimizers() -> list[str]:
    """``--optimizer``: the fine-tuning optimizers."""
    from slimmer.train.finetune import OPTIMIZERS

    return list(OPTIMIZERS)


def scopes() -> list[str]:
    from slimmer.config import SCOPES

    return list(SCOPES)


REGISTRY_OPTIONS = {
    "--method": methods,
    "--criterion": criteria,
    "--schedule": schedules,
    "--regularizer": regularizers,
    "--exporter": exporters,
    "--optimizer": optimizers,
    "--scope": scopes,
}
"""Option → the function listing its names (the CLI's help and the contract test read this)."""
