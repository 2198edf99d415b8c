"""SynFlow: iterative synaptic flow pruning (Tanaka, Kunin, Yamins, Ganguli, "Pruning neural
networks without any data by iteratively conserving synaptic flow", NeurIPS 2020).

Data-free. With every parameter replaced by its absolute value, ``R = 1ᵀ(∏|W|)1`` is the sum of
the network's outputs on an all-ones input, and a weight scores ``|θ ⊙ ∂R/∂θ|``. Scoring is
repeated for ``n`` rounds (``ctx.extra["synflow_rounds"]``, default 100) on the exponential
schedule ``d_k = d^(k/n)``, with the mask applied between rounds, which is what avoids layer
collapse. It therefore needs the target sparsity ``ctx.extra["sparsity"]`` (``d = 1 − sparsity``)
and the model input shape ``ctx.extra["input_shape"]`` (batch first); ``ctx.extra["scope"]``
("global", the default, or "layer") says how each round's mask is cut.

Returned scores reproduce the iterative mask under slimmer's threshold (prune the lowest
``round(sparsity·N)``): survivors score ``1 + S/max S`` (their last-round scores, offset above
every pruned weight) and a weight pruned in round ``k`` scores ``(k−1)/n`` < 1, so a later-pruned
weight ranks above an earlier one.

Implementation choices: the work is done on a float64 deep copy in eval mode (the official code
runs float32 and can overflow), so the caller's signs, BatchNorm statistics and ``.grad`` fields
are never touched. Each eval-mode BatchNorm is linearized as if folded into an affine map first
(scale ``|γ|/σ``, bias ``|β − γμ/σ|``): for a fresh BatchNorm (μ=0, σ²=1, β=0) this equals the
official ``abs`` of every tensor, and on a trained model it avoids subtracting ``|μ|`` (the
pitfall of taking the absolute value of running means).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from slimmer.criteria._scoring import model_device, parameters_by_name
from slimmer.criteria.base import ScoreContext, register_criterion
from slimmer.errors import ConfigError, InputError
from slimmer.outputs import logits_of

DEFAULT_ROUNDS = 100


def linearize(net: nn.Module) -> None:
    """Make ``net`` (a float64 copy in eval mode) its absolute-valued version, in place."""
    keep_sign: set[int] = set()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                std = (m.running_var + m.eps).sqrt()
                gamma = m.weight if m.affine else torch.ones_like(std)
                beta = m.bias if m.affine else torch.zeros_like(std)
                folded_bias = (beta - gamma * m.running_mean / std).abs()
                if m.affine:
                    m.weight.abs_()
                    m.bias.copy_(folded_bias)
                    m.running_mean.zero_()
                else:  # (x − μ')/σ with μ' = −|b'|σ gives x/σ + |b'|
                    m.running_mean.copy_(-folded_bias * std)
                    keep_sign.add(id(m.running_mean))
        for p in net.parameters():
            p.abs_()
        for b in net.buffers():
            if id(b) not in keep_sign and (b.is_floating_point() or b.dtype in (torch.int32, torch.int64)):
                b.abs_()


def synflow_saliency(model: nn.Module, names: list[str], input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """One round of SynFlow, unmasked: ``|θ ⊙ ∂R/∂θ|`` (float64) on a linearized float64 copy."""
    net = copy.deepcopy(model).double().eval()
    linearize(net)
    params = parameters_by_name(net, names, "synflow")
    ones = torch.ones((1, *tuple(input_shape)[1:]), dtype=torch.float64, device=model_device(net))
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    grads = torch.autograd.grad(logits_of(net(ones)).sum(), list(params.values()), allow_unused=True)
    return {
        n: (p.detach() * (torch.zeros_like(p) if g is None else g)).abs()
        for (n, p), g in zip(params.items(), grads, strict=True)
    }


def _prune_count(density: float, n: int) -> int:
    return n - int(round(density * n))


def _layer_count(sparsity: float, density: float, n: int, last: bool) -> int:
    return int(round(sparsity * n)) if last else _prune_count(density, n)


def _cut(scores: list[torch.Tensor], keep: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """New keep-masks pruning the ``count`` lowest scores; already-pruned weights go first."""
    ranked = [torch.where(k, s, torch.full_like(s, -1.0)) for s, k in zip(scores, keep, strict=True)]
    flat = torch.cat([r.flatten() for r in ranked])
    new = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    new[torch.argsort(flat, stable=True)[:count]] = False
    out, offset = [], 0
    for s in scores:
        out.append(new[offset : offset + s.numel()].view(s.shape))
        offset += s.numel()
    return out


@register_criterion("synflow", "none", "SynFlow, data-free, 100 rounds (Tanaka et al., NeurIPS 2020)")
def score_synflow(weights: dict[str, torch.Tensor], ctx: ScoreContext) -> dict[str, torch.Tensor]:
    sparsity = ctx.extra.get("sparsity")
    input_shape = ctx.extra.get("input_shape")
    rounds = ctx.extra.get("synflow_rounds", DEFAULT_ROUNDS)
    scope = ctx.extra.get("scope", "global")
    if not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"--criterion synflow needs the target sparsity in [0, 1), got {sparsity!r}")
    if input_shape is None or len(input_shape) < 2:
        raise ConfigError(
            "--criterion synflow feeds an all-ones float input: it needs a model with one float input "
            f"of a known shape (batch first), got {input_shape!r}"
        )
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"synflow_rounds must be an integer >= 1, got {rounds!r}")
    if scope not in ("global", "layer"):
        raise ConfigError(f"unknown scope {scope!r}; choose global or layer")

    names = sorted(weights)
    net = copy.deepcopy(ctx.model).double().eval()
    linearize(net)
    params = [parameters_by_name(net, names, "synflow")[n] for n in names]
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    original = [p.detach().clone() for p in params]
    ones = torch.ones((1, *tuple(input_shape)[1:]), dtype=torch.float64, device=model_device(net))
    keep = [torch.ones_like(p, dtype=torch.bool) for p in params]
    pruned_in = [torch.zeros_like(p, dtype=torch.int64) for p in params]
    scores: list[torch.Tensor] = []
    for k in range(1, rounds + 1):
        with torch.no_grad():
            for p, w, m in zip(params, original, keep, strict=True):
                p.copy_(w * m)
        out = logits_of(net(ones))
        total = out.sum()
        if not torch.isfinite(total):
            raise InputError(
                "synflow: the path product of |W| overflows float64 for this model",
                hint="rescale the weights or choose another criterion",
            )
        grads = torch.autograd.grad(total, params, allow_unused=True)
        scores = [
            (p.detach() * (torch.zeros_like(p) if g is None else g)).abs() for p, g in zip(params, grads, strict=True)
        ]
        density = (1.0 - sparsity) ** (k / rounds)
        if scope == "global":
            n = sum(s.numel() for s in scores)
            count = int(round(sparsity * n)) if k == rounds else _prune_count(density, n)
            new_keep = _cut(scores, keep, max(count, sum(int((~m).sum()) for m in keep)))
        else:
            new_keep = [
                _cut([s], [m], max(_layer_count(sparsity, density, s.numel(), k == rounds), int((~m).sum())))[0]
                for s, m in zip(scores, keep, strict=True)
            ]
        for m, new, when in zip(keep, new_keep, pruned_in, strict=True):
            when[m & ~new] = k
        keep = new_keep
    result: dict[str, torch.Tensor] = {}
    top = max((float(s[m].max()) for s, m in zip(scores, keep, strict=True) if m.any()), default=0.0) or 1.0
    for n, s, m, when in zip(names, scores, keep, pruned_in, strict=True):
        final = torch.where(m, 1.0 + s / top, (when - 1).double() / rounds)
        result[n] = final.float().view(weights[n].shape)
    return result
