"""Physical channel removal: slice every member of a pruned group and fix module attributes.

**The masked original** (:func:`mask_model`) is the model with every parameter/buffer slice of
every pruned channel set to zero: the producing weight rows and biases, the BN/GN affine
parameters and running statistics, and every consumer's input columns. The channel rules
(:mod:`slimmer.graph.rules`) only let a channel mix with others inside a weight that is one of
its group's members, so whatever value a masked channel still carries (a BN's beta, sigmoid(0),
a residual branch) is multiplied by zeroed columns before it reaches anything else. Hence the
physically pruned model computes exactly what the masked original computes, up to float
summation order. :func:`shrink` checks this on the example inputs and rolls back any group whose
removal breaks the forward or the equality (e.g. a shape hard-coded in user code).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from slimmer.graph.attention import update_head_attributes
from slimmer.graph.groups import build_groups
from slimmer.inputs import fresh
from slimmer.structures.plan import PruningPlan


@dataclass
class SurgeryResult:
    """What :func:`shrink` did: the plan really applied, groups rolled back and why, the check."""

    plan: PruningPlan
    rolled_back: dict[str, str] = field(default_factory=dict)
    max_abs_diff: float = 0.0
    output_scale: float = 0.0
    params_before: int = 0
    params_after: int = 0


def _tensor_aliases(model: nn.Module) -> dict[int, list[str]]:
    aliases: dict[int, list[str]] = {}
    for name, tensor in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        aliases.setdefault(id(tensor), []).append(name)
    return aliases


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def _get(model: nn.Module, name: str) -> torch.Tensor:
    module, attr = _owner(model, name)
    return getattr(module, attr)


Slice = tuple[str, torch.Tensor, int, torch.Tensor, torch.Tensor]
"""One masked slice: tensor name, the tensor, dimension, channel indices (int64) and their values."""


@torch.no_grad()
def slice_values(model: nn.Module, plan: PruningPlan) -> tuple[Slice, ...]:
    """The values of every tensor slice :func:`mask_model` zeroes for ``plan`` (the removed fraction of
    the touched tensors, copied): what puts a group surgery rolls back to its weights before masking.
    Take them before masking and pass them to :func:`shrink` as ``masked_values``."""
    taken: list[Slice] = []
    for name, dims in plan.removals().items():
        tensor = _get(model, name)
        for dim, removed in dims.items():
            index = torch.tensor(sorted(removed), dtype=torch.long, device=tensor.device)
            taken.append((name, tensor, dim, index, tensor.detach().index_select(dim, index)))
    return tuple(taken)


@torch.no_grad()
def mask_model(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Zero, in place, every tensor slice of every pruned channel (the masked original)."""
    for name, dims in plan.removals().items():
        tensor = _get(model, name)
        for dim, indices in dims.items():
            index = torch.tensor(sorted(indices), dtype=torch.long, device=tensor.device)
            tensor.index_fill_(dim, index, 0)
    return model


def _update_attributes(module: nn.Module, old: dict[str, Any]) -> None:
    """Make a module's static attributes agree with its sliced tensors."""
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            if old["groups"] > 1:
                module.groups = weight.shape[0] // (old["in_channels"] // old["groups"])
            module.in_channels, module.out_channels = weight.shape[0], weight.shape[1] * module.groups
        else:
            if old["groups"] > 1:
                module.groups = weight.shape[0] // (old["out_channels"] // old["groups"])
            module.out_channels, module.in_channels = weight.shape[0], weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape[0], weight.shape[1]
    elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        stats = weight if weight is not None else module.running_mean
        module.num_features = stats.shape[0]
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = weight.shape[0]
        module.num_groups = module.num_channels // (old["num_channels"] // old["num_groups"])
    elif isinstance(module, nn.LayerNorm) and weight is not None:
        module.normalized_shape = tuple(weight.shape)
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = weight.shape[0], weight.shape[1]
    elif isinstance(module, nn.PReLU):
        module.num_parameters = weight.numel()
    elif type(module).__name__ == "Conv1D" and hasattr(module, "nf") and weight is not None and weight.dim() == 2:
        module.nx, module.nf = weight.shape  # transformers' GPT-2 Conv1D: a Linear storing weight as [in, out]


_ATTRIBUTES = ("in_channels", "out_channels", "groups", "num_channels", "num_groups")


def _without(tensor: torch.Tensor, dims: dict[int, set[int]]) -> torch.Tensor:
    """``tensor`` without the indices ``dims[d]`` of each dimension ``d``."""
    for dim, removed in sorted(dims.items()):
        keep = [i for i in range(tensor.shape[dim]) if i not in removed]
        tensor = tensor.index_select(dim, torch.tensor(keep, dtype=torch.long, device=tensor.device))
    return tensor


@torch.no_grad()
def remove_channels(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Slice every member of every pruned group in place; no checking (see :func:`shrink`)."""
    aliases = _tensor_aliases(model)
    touched: dict[str, dict[str, Any]] = {}
    for name, dims in plan.removals().items():
        tensor = _get(model, name)
        new = _without(tensor.detach(), dims).clone()
        parameter = nn.Parameter(new, requires_grad=tensor.requires_grad)  # one object: a tie stays a tie
        for alias in aliases.get(id(tensor), [name]):
            module, attr = _owner(model, alias)
            path = alias.rpartition(".")[0]
            touched.setdefault(path, {k: getattr(module, k) for k in _ATTRIBUTES if hasattr(module, k)})
            if attr in module._parameters:
                module._parameters[attr] = parameter
            else:
                module._buffers[attr] = new
    for path, old in touched.items():
        _update_attributes(model.get_submodule(path) if path else model, old)
    update_head_attributes(model, plan)
    return model


def _outputs(model: nn.Module, example_inputs: Sequence[Any]) -> list[torch.Tensor]:
    with torch.no_grad():
        result = model(*fresh(example_inputs))  # the masked and the pruned model read the same inputs
    return [t for t in tree_leaves(result) if isinstance(t, torch.Tensor)]


def _compare(pruned: list[torch.Tensor], reference: list[torch.Tensor], rtol: float) -> tuple[float, float, str | None]:
    """(max abs diff, output scale, failure reason or None)."""
    if len(pruned) != len(reference):
        return float("inf"), 0.0, f"{len(pruned)} outputs instead of {len(reference)}"
    scale, diff = 0.0, 0.0
    for p, r in zip(pruned, reference, strict=True):
        if p.shape != r.shape:
            return float("inf"), 0.0, f"output shape {tuple(p.shape)} instead of {tuple(r.shape)}"
        if not p.is_floating_point():
            if not torch.equal(p, r):
                return float("inf"), 0.0, "integer outputs differ"
            continue
        if not torch.equal(torch.isfinite(p), torch.isfinite(r)):
            return float("inf"), 0.0, "non-finite outputs differ"
        finite = torch.isfinite(r)
        if finite.any():
            scale = max(scale, r[finite].abs().max().item())
            diff = max(diff, (p[finite].double() - r[finite].double()).abs().max().item())
    if diff > rtol * max(scale, 1e-6):
        return diff, scale, f"max abs diff {diff:.3g} exceeds {rtol:g} x output scale {scale:.3g}"
    return diff, scale, None


class _RestorePoint:
    """What undoes masking and removal without a copy of the model.

    Removal puts new tensors into a module and never writes into the old ones, so each module's
    attribute dict (its parameter, buffer and submodule dicts copied, the tensors shared) undoes it;
    masking zeroes slices in place, so the values of those slices are kept (the removed fraction of
    the touched tensors, not the whole model). ``masked_values`` (from :func:`slice_values`, taken
    before the model was masked) are used instead when they are the plan's slices of the model's
    current tensors: then a restore also undoes that earlier masking.
    """

    _DICTS = ("_parameters", "_buffers", "_modules")

    def __init__(self, model: nn.Module, plan: PruningPlan, masked_values: tuple[Slice, ...] | None = None) -> None:
        self.modules = [(module, self._copy(module.__dict__)) for module in model.modules()]
        if masked_values is None or not _same_slices(model, plan, masked_values):
            masked_values = slice_values(model, plan)  # none given, or the tensors or the plan changed since
        self.slices = masked_values

    @classmethod
    def _copy(cls, attributes: dict[str, Any]) -> dict[str, Any]:
        return {k: dict(v) if k in cls._DICTS else v for k, v in attributes.items()}

    @torch.no_grad()
    def restore(self) -> None:
        """Put every module's tensors and attributes back, and the masked slices' values."""
        for module, saved in self.modules:
            module.__dict__.clear()  # an attribute surgery added (over a class attribute) goes too
            module.__dict__.update(self._copy(saved))
        for _, tensor, dim, index, values in self.slices:
            tensor.index_copy_(dim, index, values)


def _same_slices(model: nn.Module, plan: PruningPlan, taken: tuple[Slice, ...]) -> bool:
    """Whether ``taken`` holds exactly ``plan``'s slices of ``model``'s current tensors."""
    wanted = [(name, dim, sorted(removed)) for name, dims in plan.removals().items() for dim, removed in dims.items()]
    if len(wanted) != len(taken):
        return False
    return all(
        name == t_name and dim == t_dim and t_tensor is _get(model, name) and t_index.tolist() == removed
        for (name, dim, removed), (t_name, t_tensor, t_dim, t_index, _) in zip(wanted, taken, strict=True)
    )


def _attempt(
    model: nn.Module, plan: PruningPlan, example_inputs: Sequence[Any], rtol: float
) -> tuple[float, float, str | None]:
    """Remove ``plan``'s channels from ``model`` (the original, unpruned) and compare with the masked
    original, which is ``model`` itself masked in place first: the masked slices are the ones removed,
    so no second copy of the model is needed."""
    reference = _outputs(mask_model(model, plan), example_inputs)
    try:
        remove_channels(model, plan)
        pruned = _outputs(model, example_inputs)
    except Exception as error:  # any failure of the user's forward means: roll this back
        return float("inf"), 0.0, f"forward failed after removal: {type(error).__name__}: {error}"[:300]
    return _compare(pruned, reference, rtol)


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shrink(
    model: nn.Module,
    plan: PruningPlan,
    example_inputs: Sequence[Any],
    *,
    rtol: float = 1e-5,
    masked_values: tuple[Slice, ...] | None = None,
) -> SurgeryResult:
    """Physically remove the plan's channels from ``model`` (in place) and check the result.

    The pruned model is run on ``example_inputs`` and compared with the masked original
    (:func:`mask_model` of the same plan). If the whole plan fails, groups are retried one by one
    on top of the ones that passed; a group whose removal breaks the forward or the equality is
    rolled back and reported in ``rolled_back``. The model is never left broken.

    ``masked_values`` are the slices' values from before ``model`` was masked with ``plan``
    (:func:`slice_values`): a rolled-back group then gets its weights back, so "kept whole" holds. Without
    them a group masked before the call stays zeroed when it is rolled back.
    """
    was_training = model.training
    model.eval()
    try:
        if not plan.is_bound:
            plan.bind(build_groups(model, example_inputs))
        before = _param_count(model)
        restore_point = _RestorePoint(model, plan, masked_values)
        diff, scale, failure = _attempt(model, plan, example_inputs, rtol)
        rolled_back: dict[str, str] = {}
        applied = plan
        if failure is not None:
            restore_point.restore()
            accepted: set[str] = set()
            for planned in plan.groups:
                if not planned.pruned:
                    continue
                trial = plan.restricted(accepted | {planned.id})
                d, s, reason = _attempt(model, trial, example_inputs, rtol)
                restore_point.restore()
                if reason is None:
                    accepted.add(planned.id)
                else:
                    rolled_back[planned.id] = reason
            applied = plan.restricted(accepted)
            applied.notes.extend(f"group {gid} rolled back: {why}" for gid, why in rolled_back.items())
            diff, scale, failure = _attempt(model, applied, example_inputs, rtol)
            if failure is not None:  # cannot happen unless the forward is non-deterministic
                restore_point.restore()
                raise RuntimeError(f"surgery check failed after rollback: {failure}")
        return SurgeryResult(applied, rolled_back, diff, scale, before, _param_count(model))
    finally:
        model.train(was_training)
