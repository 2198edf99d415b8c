"""Unstructured pruning: per-weight masks over the weights of Conv and Linear layers.

Masks are plain boolean tensors keyed by parameter name (no hooks or hidden attributes on the
module). ``apply`` zeroes the pruned weights in place; a fine-tuning loop keeps them at zero by
calling ``apply`` again after each optimizer step.
"""

from __future__ import annotations

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


def prunable_weights(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """``{"layer.weight": param}`` for every Conv/Linear weight (biases and norms excluded)."""
    skip = set(exclude)
    found: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES) and isinstance(getattr(module, "weight", None), nn.Parameter):
            if mod_name in skip or id(module.weight) in seen:
                continue
            seen.add(id(module.weight))
            found[f"{mod_name}.weight" if mod_name else "weight"] = module.weight
    return found


@dataclass
class MaskSet:
    """Boolean keep-masks by parameter name, with what pruning achieved."""

    masks: dict[str, torch.Tensor]
    warnings: list[str] = field(default_factory=list)

    def apply(self, model: nn.Module) -> None:
        """Zero every pruned weight in place (idempotent)."""
        params = dict(model.named_parameters())
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
