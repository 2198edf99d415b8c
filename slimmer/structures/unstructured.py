"""Unstructured pruning: per-weight masks over every weight matrix of the model.

In scope (:func:`prunable_weights`): the weights of Conv (1-3d, transposed) and Linear layers, of
recurrent layers (``nn.LSTM``/``GRU``/``RNN`` ``weight_ih_l*``, ``weight_hh_l*``, ``weight_hr_l*``)
and the in-projections of ``nn.MultiheadAttention``; :func:`unstructured_scope` adds bare
``nn.Parameter`` matrices that ``forward`` multiplies with (``x @ self.w``) and lists what stays
out (embeddings, positional tables, biases and norms) with its share of the parameters, so a
sparsity is always stated over what was in scope.

Masks are plain boolean tensors keyed by parameter name (no hooks or hidden attributes on the
module). ``apply`` zeroes the pruned weights in place; a fine-tuning loop keeps them at zero by
calling ``apply`` again after each optimizer step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)


RECURRENT_WEIGHT = re.compile(r"weight_(ih|hh|hr)_l\d+(_reverse)?")
ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def _module_weights(module: nn.Module) -> list[str]:
    """Attribute names of ``module``'s own weight matrices that unstructured pruning covers."""
    if isinstance(module, PRUNABLE_TYPES):
        return ["weight"]
    if isinstance(module, nn.RNNBase):
        return [n for n in module._parameters if RECURRENT_WEIGHT.fullmatch(n)]
    if isinstance(module, nn.MultiheadAttention):
        return [n for n in ATTENTION_WEIGHTS if module._parameters.get(n) is not None]
    return []


def prunable_weights(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """``{"layer.weight": param}`` for every weight matrix of a known layer (see the module docstring);
    biases and norms excluded. ``exclude`` names modules to leave out; a shared weight is listed once."""
    skip = set(exclude)
    found: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        if mod_name in skip:
            continue
        for attr in _module_weights(module):
            weight = module._parameters.get(attr)
            if not isinstance(weight, nn.Parameter) or id(weight) in seen:
                continue
            seen.add(id(weight))
            found[f"{mod_name}.{attr}" if mod_name else attr] = weight
    return found


@dataclass
class MaskSet:
    """Boolean keep-masks by parameter name, with what pruning achieved."""

    masks: dict[str, torch.Tensor]
    warnings: list[str] = field(default_factory=list)

    def apply(self, model: nn.Module) -> None:
        """Zero every pruned weight in place (idempotent)."""
        params = dict(model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for name, mask in self.masks.items():
                p = params[name]
                p.mul_(mask.to(device=p.device, dtype=p.dtype))

    def per_layer_sparsity(self) -> dict[str, float]:
        return {name: 1.0 - float(m.sum()) / m.numel() for name, m in self.masks.items()}

    @property
    def total(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    @property
    def pruned(self) -> int:
        return sum(m.numel() - int(m.sum()) for m in self.masks.values())

    @property
    def sparsity(self) -> float:
        return self.pruned / self.total if self.total else 0.0


def _prune_lowest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask over ``flat`` that prunes exactly the ``k`` lowest scores (ties broken by position)."""
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k <= 0:
        return keep
    if k >= flat.numel():
        return torch.zeros_like(keep)
    order = torch.argsort(flat, stable=True)
    keep[order[:k]] = False
    return keep


def largest_mask(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep-mask of exactly the ``keep`` largest-magnitude entries of ``weight`` (ties: the earlier is
    kept), on the weight's device (``--regrow`` calls it for every layer at every step)."""
    flat = weight.detach().abs().flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep > 0:
        mask[torch.argsort(flat, descending=True, stable=True)[:keep]] = True
    return mask.view(weight.shape)


def unstructured_masks(
    scores: dict[str, torch.Tensor], sparsity: float, *, scope: str = "global", min_keep: int = 1
) -> MaskSet:
    """Prune the fraction ``sparsity`` of all scored weights: one global ranking, or per tensor.

    Exactly ``int(round(sparsity·N))`` weights are pruned (ties at the threshold are broken by
    position, so the requested fraction is met). With ``min_keep`` ≥ 1, a tensor the global ranking
    would empty keeps its ``min_keep`` best weights, and a warning says so: an emptied layer
    disconnects the network (layer collapse).
    """
    names = sorted(scores)
    warnings: list[str] = []
    masks: dict[str, torch.Tensor] = {}
    if scope == "layer":
        for name in names:
            s = scores[name].flatten().float()
            masks[name] = _prune_lowest(s, int(round(sparsity * s.numel()))).view(scores[name].shape)
    else:
        flat = torch.cat([scores[n].flatten().float() for n in names])
        keep = _prune_lowest(flat, int(round(sparsity * flat.numel())))
        offset = 0
        for name in names:
            n = scores[name].numel()
            masks[name] = keep[offset : offset + n].view(scores[name].shape)
            offset += n
    if min_keep > 0:
        for name in names:
            m = masks[name]
            if int(m.sum()) < min(min_keep, m.numel()):
                best = torch.topk(scores[name].flatten().float(), min(min_keep, m.numel())).indices
                flat_mask = m.flatten().clone()
                flat_mask[best] = True
                masks[name] = flat_mask.view(m.shape)
                warnings.append(
                    f"{name}: the ranking would have pruned every weight (layer collapse); kept its "
                    f"{min_keep} highest-scoring weight(s)"
                )
    return MaskSet(masks=masks, warnings=warnings)
