"""What unstructured pruning covers, found on the model itself, and what it leaves out.

:func:`~slimmer.structures.unstructured.prunable_weights` knows layers by type. A model may also
hold its weight matrices as bare ``nn.Parameter``s and multiply with them in ``forward``
(``x @ self.w``, ``torch.einsum(..., self.w)``, ``F.linear(x, self.w)``): one forward on the
example input under a :class:`~torch.overrides.TorchFunctionMode` records every parameter that
reaches a matrix product, directly or through a view (``self.w.t()``). Everything else stays out
and is listed with its share of the parameters, so the achieved sparsity is stated over the scope.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

from slimmer.structures.unstructured import prunable_weights

_PRODUCTS = {
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.Tensor.__rmatmul__,
    torch.mm,
    torch.Tensor.mm,
    torch.bmm,
    torch.Tensor.bmm,
    torch.addmm,
    torch.baddbmm,
    torch.einsum,
    torch.tensordot,
    F.linear,
    F.bilinear,
}
MAX_LISTED = 8


class _ProductRecorder(TorchFunctionMode):
    """Records which of the given parameters (by id) are operands of a matrix product."""

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self.names = names
        self.used: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        if func in _PRODUCTS:
            for value in tree_leaves((args, kwargs)):
                if isinstance(value, torch.Tensor):
                    base = value._base if value._base is not None else value
                    name = self.names.get(id(base)) or self.names.get(id(value))
                    if name is not None:
                        self.used.add(name)
        return func(*args, **kwargs)


def matmul_parameters(model: nn.Module, example_inputs: Sequence[Any]) -> set[str]:
    """Names of the model's parameters that ``forward`` passes to a matrix product (one eval forward
    under ``torch.no_grad``; the training flag is restored). Empty when the forward fails."""
    names = {id(p): n for n, p in model.named_parameters()}
    recorder = _ProductRecorder(names)
    device = next(iter(model.parameters()), torch.empty(0)).device  # the inputs go where the model is
    inputs = tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, tuple(example_inputs))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recorder:
            model(*inputs)
    except Exception:  # noqa: BLE001 - a model the recorder cannot run keeps the type-based scope
        return set()
    finally:
        model.train(was_training)
    return recorder.used


@dataclass
class UnstructuredScope:
    """The weights unstructured pruning ranks, and what it leaves out (parameter counts)."""

    weights: dict[str, nn.Parameter]
    params_total: int
    excluded: dict[str, int] = field(default_factory=dict)  # matrices (>= 2-D) left out: name -> numel
    vectors: int = 0  # 1-D parameters (biases, norm scales, ...), always left out

    @property
    def in_scope(self) -> int:
        return sum(w.numel() for w in self.weights.values())

    def as_dict(self) -> dict[str, Any]:
        total = max(1, self.params_total)
        return {
            "weights": len(self.weights),
            "params_in_scope": self.in_scope,
            "params_total": self.params_total,
            "share_in_scope": self.in_scope / total,
            "excluded_matrices": dict(self.excluded),
            "excluded_matrices_share": sum(self.excluded.values()) / total,
            "vectors_share": self.vectors / total,
        }

    def note(self, sparsity: float) -> str | None:
        """A one-line warning when matrices were left out, or None."""
        if not self.excluded:
            return None
        total = max(1, self.params_total)
        listed = sorted(self.excluded.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{n} ({v / total:.1%})" for n, v in listed[:MAX_LISTED])
        more = f" and {len(listed) - MAX_LISTED} more" if len(listed) > MAX_LISTED else ""
        return (
            f"sparsity {sparsity:.4f} is over the {self.in_scope:,} weights in scope ({self.in_scope / total:.1%} of "
            f"the parameters); left out: {shown}{more} (not used as a matrix by any layer or matmul)"
        )


def unstructured_scope(model: nn.Module, example_inputs: Sequence[Any] | None = None) -> UnstructuredScope:
    """Layer weights by type, plus (with ``example_inputs``) bare parameters used in a matrix product.

    Shared parameters count once. Raises nothing: a forward that fails only loses the bare ones.
    """
    weights = dict(prunable_weights(model))
    taken = {id(w) for w in weights.values()}
    used = matmul_parameters(model, example_inputs) if example_inputs is not None else set()
    excluded: dict[str, int] = {}
    vectors = total = 0
    for name, p in model.named_parameters():  # deduplicated by torch
        total += p.numel()
        if id(p) in taken:
            continue
        if p.ndim >= 2 and name in used:
            weights[name] = p
            taken.add(id(p))
        elif p.ndim >= 2:
            excluded[name] = p.numel()
        else:
            vectors += p.numel()
    return UnstructuredScope(weights, total, excluded, vectors)
