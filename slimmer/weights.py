"""Weights into a module: strict loading with a useful mismatch message, the architecture built
without random initialization when the checkpoint supplies every tensor, and the checks every
loaded model passes (no meta, sparse, quantized, NaN or Inf tensors).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from slimmer.errors import InputError
from slimmer.zoo import Architecture


def build_with_weights(architecture: Architecture, state: dict[str, torch.Tensor]) -> tuple[nn.Module, list[str]]:
    """``architecture`` built and strictly loaded with ``state``; returns the module and notes.

    The module is first built with its parameters and persistent buffers on the ``meta`` device
    (:func:`parameters_on_meta`) and takes the checkpoint's tensors as its own
    (``load_state_dict(assign=True)``): no random initialization runs (seconds for a large model)
    and no second copy of the weights exists while loading. When that cannot be done (the builder
    reads parameter values, parameters are shared between layers), it is built normally and the
    weights are copied in. The result is the same either way. Raises :class:`InputError` (exit 3)
    when the checkpoint does not match.
    """
    try:
        with parameters_on_meta():
            empty = architecture.build()
    except Exception:  # noqa: BLE001 - a builder that reads its weights: build it normally
        empty = None
    if isinstance(empty, nn.Module) and not _shares_parameters(empty):
        notes = load_into(empty, state, architecture.name, assign=True)
        if not any(t.is_meta for t in _tensors(empty)):
            return empty, notes
    model = architecture.build()
    return model, load_into(model, state, architecture.name)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Within this block, every parameter and persistent buffer a module registers is moved to the
    ``meta`` device (shape and dtype, no storage), so initializing it costs nothing. Other tensors
    (what a builder computes its layer widths with, non-persistent buffers) stay real. A parameter
    that is already on ``meta`` (one layer's weight given to another) is kept as is, so ties stay
    visible."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def on_meta_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register_parameter(module, name, param)
        if param is not None and not param.is_meta and type(param) is nn.Parameter:
            module._parameters[name] = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)

    def on_meta_buffer(module: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        register_buffer(module, name, tensor, persistent)
        if tensor is not None and persistent and not tensor.is_meta:
            module._buffers[name] = tensor.detach().to("meta")

    nn.Module.register_parameter = on_meta_parameter  # type: ignore[method-assign]
    nn.Module.register_buffer = on_meta_buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _shares_parameters(model: nn.Module) -> bool:
    """Whether one parameter is registered under two names (tied weights): assigning the checkpoint's
    tensors would untie them."""
    return len(list(model.named_parameters(remove_duplicate=False))) != len(list(model.named_parameters()))


def load_into(model: nn.Module, state: dict[str, torch.Tensor], arch_name: str, *, assign: bool = False) -> list[str]:
    """Strictly load ``state`` into ``model``; a mismatch lists the first missing and unexpected keys.

    BatchNorm ``num_batches_tracked`` counters may be absent (old or converted checkpoints), as
    ``load_state_dict(strict=True)`` itself allows; the returned notes say so. With ``assign`` the
    module takes ``state``'s tensors instead of copying them (a module built on the meta device);
    BatchNorm's own loader fills an absent counter with 0.
    """
    check_tensors(state)
    state, tied = _fill_tied(model, state)
    own = model.state_dict()
    counters = [k for k in own if k not in state and k.endswith("num_batches_tracked")]
    missing = [k for k in own if k not in state and k not in counters]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:5])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (first: {'; '.join(shapes[:3])})")
        raise InputError(
            f"the checkpoint does not match --arch {arch_name}: " + "; ".join(parts),
            hint="check that --arch names the architecture these weights were trained with",
        )
    model.load_state_dict(state, strict=True, assign=assign)
    notes = []
    if counters:
        notes.append(
            f"{len(counters)} BatchNorm num_batches_tracked counters were absent from the checkpoint (not needed)"
        )
    if tied:
        notes.append(f"{', '.join(tied[:3])}: a tied weight the checkpoint stores once, taken from the name it shares")
    return notes


def _fill_tied(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` with every name of a tied tensor (one tensor registered under several names, such as
    an embedding shared with the output projection) that it lacks taken from a name it holds, as
    ``safetensors.torch.save_model`` stores shared tensors once; and the names filled."""
    names: dict[int, list[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(tensor), []).append(name)
    filled: dict[str, torch.Tensor] = {}
    for aliases in names.values():
        present = [n for n in aliases if n in state]
        if len(aliases) > 1 and present:
            filled.update({n: state[present[0]] for n in aliases if n not in state})
    return ({**state, **filled}, sorted(filled)) if filled else (state, [])


def check_finite(model: nn.Module) -> None:
    """Refuse NaN/Inf in a learned parameter, and NaN in a floating buffer, naming the tensor.

    ±Inf in a buffer is a constant (e.g. a causal attention mask of -inf) and is accepted.
    """
    check_tensors(dict(model.named_parameters()) | dict(model.named_buffers()))
    for name, t in model.named_parameters():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise InputError(f"tensor {name!r} holds {bad} NaN/Inf values; refusing to prune a broken checkpoint")
    for name, t in model.named_buffers():
        if t.is_floating_point() and bool(torch.isnan(t).any()):
            bad = int(torch.isnan(t).sum())
            raise InputError(f"buffer {name!r} holds {bad} NaN values; refusing to prune a broken checkpoint")


def check_tensors(tensors: dict[str, torch.Tensor]) -> None:
    """Refuse tensors without data (the ``meta`` device) or in a sparse/quantized layout, naming the first."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            continue
        if t.is_meta:
            raise InputError(
                f"tensor {name!r} is on the 'meta' device: it has a shape but no values (saved from a model built "
                "with device='meta' or empty weights)",
                hint="save the checkpoint after the real weights were loaded or materialized",
            )
        if t.layout != torch.strided:
            raise InputError(
                f"tensor {name!r} has the {str(t.layout).replace('torch.', '')} layout; slimmer reads dense tensors",
                hint="save dense weights: {k: v.to_dense() for k, v in state_dict.items()}",
            )
        if t.is_quantized:
            raise InputError(
                f"tensor {name!r} is quantized ({t.dtype}); slimmer prunes float checkpoints",
                hint="save the float model's state_dict (before quantization)",
            )
