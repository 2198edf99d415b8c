"""GraSP: gradient signal preservation (Wang, Zhang, Grosse, "Picking Winning Tickets Before
Training by Preserving Gradient Flow", ICLR 2020).

GraSP removes the weights whose removal least reduces (or most increases) the gradient norm
‖g‖² after pruning. With ``H`` the Hessian of the loss, the paper scores ``S(−θ) = −θ ⊙ Hg`` and
removes the **highest** ``S``.

**Sign convention.** slimmer's structures prune the *lowest* score, so this criterion returns the
negation of the paper's score, ``θ ⊙ Hg`` (normalized by ``|Σ θ⊙Hg| + 1e-10`` as the official
code does, which keeps the ranking): the weights with the most negative ``θ ⊙ Hg`` (the highest
``−θ ⊙ Hg``) are pruned first. Scores are signed; never take their absolute value.

``Hg`` comes from a double backward as in the official ``pruner/GraSP.py``: ``g`` is the gradient
on a class-balanced batch (``ctx.extra["samples_per_class"]``, default 10, from at most
``ctx.extra["max_batches"]`` batches) at temperature ``T`` (``ctx.extra["grasp_temperature"]``,
default 200), split in two halves, and ``Hg`` is accumulated by back-propagating
``g_stop · g_h`` for each half. Unlabelled batches use the model's argmax as labels.

Deviations from the official code, both for use on trained networks: BatchNorm runs in eval mode
(the SynFlow harness does the same; the official code uses train mode), and Linear weights are not
re-initialized. All work is done on a deep copy; the caller's model is never changed.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from slimmer.criteria._scoring import forward, labelled_batches, parameters_by_name
from slimmer.criteria.base import ScoreContext, register_criterion
from slimmer.errors import ConfigError

DEFAULT_SAMPLES_PER_CLASS = 10
DEFAULT_TEMPERATURE = 200.0


def class_balanced_batch(
    ctx: ScoreContext, net: nn.Module, samples_per_class: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``samples_per_class`` samples of every class, grouped by class (as the official code).

    Classes the batches do not reach in ``max_batches`` batches contribute what was found.
    """
    per_class: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    num_classes: int | None = None
    for x, y in labelled_batches(ctx, "grasp", net):
        if num_classes is None:
            with torch.no_grad():
                num_classes = int(forward(net, x[:1], ctx).shape[1])
        for label in range(num_classes):
            have = sum(len(part[0]) for part in per_class.get(label, []))
            if have >= samples_per_class:
                continue
            pick = (y == label).nonzero().flatten()[: samples_per_class - have]
            if len(pick):
                per_class.setdefault(label, []).append((x[pick], y[pick]))
        if all(sum(len(p[0]) for p in per_class.get(c, [])) >= samples_per_class for c in range(num_classes)):
            break
    parts = [part for label in sorted(per_class) for part in per_class[label]]
    if sum(len(p[0]) for p in parts) < 2:
        raise ConfigError("--criterion grasp needs at least 2 samples in --data")
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@register_criterion("grasp", "grads", "GraSP θ⊙Hg, signed; lowest pruned first (Wang et al., ICLR 2020)")
def score_grasp(weights: dict[str, torch.Tensor], ctx: ScoreContext) -> dict[str, torch.Tensor]:
    samples_per_class = int(ctx.extra.get("samples_per_class", DEFAULT_SAMPLES_PER_CLASS))
    temperature = float(ctx.extra.get("grasp_temperature", DEFAULT_TEMPERATURE))
    if samples_per_class < 1 or temperature <= 0:
        raise ConfigError(
            f"grasp needs samples_per_class >= 1 and a positive temperature, got "
            f"{samples_per_class!r} and {temperature!r}"
        )
    names = sorted(weights)
    net = copy.deepcopy(ctx.model).eval()
    for p in net.parameters():
        p.requires_grad_(True)
        p.grad = None
    params = [parameters_by_name(net, names, "grasp")[n] for n in names]
    x, y = class_balanced_batch(ctx, net, samples_per_class)
    half = len(x) // 2
    halves = [(x[:half], y[:half]), (x[half:], y[half:])]

    def grads(xh: torch.Tensor, yh: torch.Tensor, create_graph: bool) -> list[torch.Tensor | None]:
        loss = F.cross_entropy(forward(net, xh, ctx) / temperature, yh)
        return list(torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True))

    g_stop = [torch.zeros_like(p) for p in params]
    for xh, yh in halves:
        for acc, g in zip(g_stop, grads(xh, yh, False), strict=True):
            if g is not None:
                acc += g.detach()
    for xh, yh in halves:
        g_h = grads(xh, yh, True)
        z = sum((gs * g).sum() for gs, g in zip(g_stop, g_h, strict=True) if g is not None)
        if isinstance(z, torch.Tensor) and z.requires_grad:
            z.backward()  # p.grad accumulates H·g over both halves
    theta_hg = {
        n: (p.detach() * (p.grad if p.grad is not None else torch.zeros_like(p))).double()
        for n, p in zip(names, params, strict=True)
    }
    norm = abs(float(sum(float(s.sum()) for s in theta_hg.values()))) + 1e-10
    return {n: (s / norm).float() for n, s in theta_hg.items()}
