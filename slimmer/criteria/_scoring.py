"""Shared plumbing for the data criteria: the ``--data`` check, labelled batches, eval-mode gradients.

Private to :mod:`slimmer.criteria`. Gradients are taken with :func:`torch.autograd.grad`, so the
caller's ``.grad`` fields, BatchNorm statistics and train/eval flags are left as they were.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from slimmer.criteria.base import ScoreContext
from slimmer.errors import ConfigError
from slimmer.inputs import fresh
from slimmer.outputs import logits_of

DEFAULT_MAX_BATCHES = 10
"""Batches a data criterion reads from ``ctx.batches`` unless ``ctx.extra["max_batches"]`` says otherwise."""

Batch = tuple[torch.Tensor, torch.Tensor | None]


def require_batches(ctx: ScoreContext, name: str) -> Iterable[Batch]:
    """``ctx.batches``, or a :class:`ConfigError` naming the criterion when there are none."""
    if ctx.batches is None:
        raise ConfigError(
            f"--criterion {name} needs --data", hint="pass --data with samples of the training distribution"
        )
    return ctx.batches


def max_batches(ctx: ScoreContext) -> int:
    limit = ctx.extra.get("max_batches", DEFAULT_MAX_BATCHES)
    if not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"max_batches must be an integer >= 1, got {limit!r}")
    return limit


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


@contextmanager
def eval_with_grads(model: nn.Module, params: Iterable[nn.Parameter]) -> Iterator[None]:
    """BatchNorm and dropout in eval mode, ``params`` differentiable; both restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in params]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def forward(model: nn.Module, x: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """The logits leaf of ``model`` on a data batch ``x`` (unpacked by ``ctx.extra["feed"]``, the
    dataset's :attr:`~slimmer.train.data.Dataset.feed`, when the data packs several inputs)."""
    feed = ctx.extra.get("feed")
    out = model(*fresh(feed(x) if feed is not None else x))  # x may be a view of the data: never modified
    return logits_of(out, ctx.extra.get("output_name"))


def labelled_batches(ctx: ScoreContext, name: str, model: nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Up to :func:`max_batches` batches on the model's device. A batch without labels is labelled
    with the model's own prediction (argmax), so the loss measures sensitivity around what the
    model currently outputs. Raises :class:`ConfigError` for a model without class logits."""
    batches = require_batches(ctx, name)
    limit = max_batches(ctx)
    device = model_device(model)
    count = 0
    for x, y in batches:
        if count >= limit:
            break
        x = x.to(device)
        if y is None:
            with torch.no_grad():
                logits = forward(model, x, ctx)
            if logits.ndim != 2:
                raise ConfigError(
                    f"--criterion {name} needs labels or (batch, classes) logits; the model gives "
                    f"{tuple(logits.shape)} (hidden states)",
                    hint="use --criterion head-importance (it distils without labels), magnitude or l2",
                )
            y = logits.argmax(1)
        yield x, y.to(device).long()
        count += 1
    if count == 0:
        raise ConfigError(f"--criterion {name}: --data gave no batches")


def weight_grads_per_batch(
    ctx: ScoreContext, name: str, weights: dict[str, torch.Tensor]
) -> Iterator[dict[str, torch.Tensor]]:
    """∂CE/∂W for each batch (model in eval mode), keyed like ``weights``."""
    names = sorted(weights)
    params = [weights[n] for n in names]
    model = ctx.model
    with eval_with_grads(model, params):  # type: ignore[arg-type]
        for x, y in labelled_batches(ctx, name, model):
            loss = F.cross_entropy(forward(model, x, ctx), y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            yield {
                n: (torch.zeros_like(p) if g is None else g).detach()
                for n, p, g in zip(names, params, grads, strict=True)
            }


def parameters_by_name(model: nn.Module, names: Iterable[str], criterion: str) -> dict[str, nn.Parameter]:
    """The parameters of ``model`` (e.g. a deep copy) called ``names``; a missing one is an error."""
    found = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigError(f"--criterion {criterion}: the model has no parameter {', '.join(missing)}")
    return {n: found[n] for n in names}
