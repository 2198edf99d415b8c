"""Head importance from data: the gradient of the loss with respect to a gate on each head
(Michel, Levy and Neubig, "Are Sixteen Heads Really Better than One?", NeurIPS 2019).

Every channel of a prunable channel group gets a gate ξ = 1 that multiplies what the channel
feeds to its consumers — for an attention head, the head's slice of the context vector entering
the output projection; for a feed-forward channel, its input column of the second Linear (the
same gate generalises from heads to any channel: Molchanov et al., CVPR 2019, activation Taylor).
The gates sit in forward pre-hooks on the consuming Linear/Conv layers; gates of one channel in
several consumers are one shared tensor, so its gradient sums over them.

- With labels, the importance of channel h is Michel et al.'s ``I_h = E_x |∂L/∂ξ_h|`` with ``L``
  the cross-entropy, accumulated over the scored batches.
- Without labels (text or other data for an embedding model), the loss is the distillation loss to
  the original, whose gradient is zero at the original itself. Its second-order (Gauss–Newton)
  estimate when head h is removed (δξ = −e_h) is ``‖∂f/∂ξ_h‖²``, ``f`` the mean-pooled embedding
  (or the logits): estimated without the Jacobian as ``E_v (∂⟨v, f⟩/∂ξ_h)²`` with ``v ~ N(0, I)``
  drawn from the seed (Hutchinson's trick), one probe per batch.

A channel whose output is exactly zero (a dead head) gets importance 0 in both cases.

For channel pruning (the groups come from ``ctx.extra["groups"]``, else are captured on the
example inputs). The scores are laid on one weight of each group that no other prunable group
touches (a "carrier"), spread evenly over the channel's slice, every other weight scoring 0, so
:func:`slimmer.criteria.channel.channel_scores_from` sums them back to exactly ``I_h``. The
caller's model is not modified (hooks removed, modes restored).
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from slimmer.criteria._scoring import eval_with_grads, forward, max_batches, model_device, require_batches
from slimmer.criteria.base import ScoreContext, register_criterion
from slimmer.errors import ConfigError
from slimmer.train.embedding import mean_pool

NAME = "head-importance"
_GATED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _gate_pre_hook(entries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], channel_dim: int):
    """A pre-hook multiplying the input's ``channel_dim`` positions ``cols`` by ``gate[channels]``."""

    def hook(module: nn.Module, inputs: tuple) -> tuple:
        x = inputs[0]
        width = x.shape[channel_dim]
        scale = torch.ones(width, dtype=x.dtype, device=x.device)
        for gate, cols, channels in entries:
            scale = scale.index_put((cols.to(x.device),), gate[channels.to(gate.device)].to(x.dtype))
        shape = [1] * x.ndim
        shape[channel_dim] = width
        return (x * scale.view(shape), *inputs[1:])

    return hook


def _groups(ctx: ScoreContext):
    """The model's channel groups, captured on the example inputs (or zeros of the input shape)."""
    from slimmer.graph import build_groups

    example = ctx.extra.get("example_inputs")
    if example is None and ctx.extra.get("input_shape") is not None:
        example = (torch.zeros(tuple(ctx.extra["input_shape"]), device=model_device(ctx.model)),)
    if example is None:
        raise ConfigError(f"--criterion {NAME} needs the model's example inputs to find its heads and channels")
    return build_groups(ctx.model, tuple(example))


def _carriers(groups: list, scored: set[str]) -> dict[str, object]:
    """For each group, a member among the ``scored`` tensors that no other group touches (or None)."""
    users: dict[str, set[str]] = defaultdict(set)
    for g in groups:
        for m in g.members:
            users[m.name].add(g.id)
    return {g.id: next((m for m in g.members if m.name in scored and users[m.name] == {g.id}), None) for g in groups}


def _spread(member, values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor of ``shape`` whose slice of channel j along ``member.dim`` sums to ``values[j]``."""
    out = torch.zeros(shape, dtype=torch.float64)
    moved = out.movedim(member.dim, 0)
    per_position = moved[0].numel()
    for j, idx in enumerate(member.indices):
        if idx:
            moved[list(idx)] = float(values[j]) / (len(idx) * per_position)
    return out


def _probe_loss(out: torch.Tensor, x: torch.Tensor, ctx: ScoreContext, generator: torch.Generator) -> torch.Tensor:
    """⟨v, f⟩ with ``f`` the mean-pooled embedding (or the logits) and a fresh Gaussian ``v``."""
    feed = ctx.extra.get("feed")
    mask = feed.mask(x) if feed is not None else None
    f = mean_pool(out.float(), mask) if out.ndim == 3 else out.float().flatten(1)
    v = torch.randn(f.shape, generator=generator).to(f.device)
    return (f * v).sum()


@register_criterion(NAME, "grads", "head importance |∂L/∂gate| per head or channel (Michel et al., 2019)")
def score_head_importance(weights: dict[str, torch.Tensor], ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """Scores per channel of every prunable group, laid on each group's carrier tensor (see module
    docstring). Raises :class:`ConfigError` without channel groups or data, or when no group has a
    Linear/Conv consumer to gate."""
    batches = require_batches(ctx, NAME)
    model = ctx.model
    groupset = ctx.extra.get("groups") or _groups(ctx)
    modules = dict(model.named_modules())
    groups = [g for g in groupset.prunable]
    gates: dict[str, torch.Tensor] = {}
    per_module: dict[str, list] = defaultdict(list)
    device = model_device(model)
    for g in groups:
        for m in g.members:
            layer = modules.get(m.module)
            if m.dim != 1 or not m.module or not isinstance(layer, _GATED) or m.name != f"{m.module}.weight":
                continue
            gate = gates.setdefault(g.id, torch.ones(g.channels, device=device, requires_grad=True))
            cols = torch.tensor([i for idx in m.indices for i in idx], dtype=torch.long)
            chans = torch.tensor([j for j, idx in enumerate(m.indices) for _ in idx], dtype=torch.long)
            per_module[m.module].append((gate, cols, chans))
    if not gates:
        raise ConfigError(f"--criterion {NAME}: no prunable group feeds a Linear or Conv layer whose input is gated")
    carriers = _carriers(groups, set(weights))
    order = sorted(gates)
    importance = {gid: torch.zeros(gates[gid].shape[0], dtype=torch.float64) for gid in order}
    generator = ctx.generator()
    handles = []
    for path, entries in per_module.items():  # a Linear reads features on its last dim, a Conv on dim 1
        channel_dim = -1 if isinstance(modules[path], nn.Linear) else 1
        handles.append(modules[path].register_forward_pre_hook(_gate_pre_hook(entries, channel_dim)))
    try:
        with eval_with_grads(model, []):
            count = 0
            for x, y in batches:
                if count >= max_batches(ctx):
                    break
                x = x.to(device)
                out = forward(model, x, ctx)
                labelled = y is not None and out.ndim == 2
                if labelled:
                    loss = F.cross_entropy(out.float(), y.to(device).long())  # type: ignore[union-attr]
                else:
                    loss = _probe_loss(out, x, ctx, generator)
                grads = torch.autograd.grad(loss, [gates[gid] for gid in order], allow_unused=True)
                for gid, grad in zip(order, grads, strict=True):
                    if grad is not None:
                        g64 = grad.detach().double().cpu()
                        importance[gid] += g64.abs() if labelled else g64.square()
                count += 1
            if count == 0:
                raise ConfigError(f"--criterion {NAME}: --data gave no batches")
    finally:
        for handle in handles:
            handle.remove()
    scores = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
    for gid in order:
        carrier = carriers[gid]
        if carrier is not None:
            scores[carrier.name] = _spread(carrier, importance[gid], tuple(weights[carrier.name].shape)).float()
    return scores
