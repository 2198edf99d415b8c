"""Structured model outputs: tuples, lists, dicts, dataclasses and ``ModelOutput``-style objects.

Outputs are flattened with ``torch.utils._pytree`` into named tensor leaves (``logits``,
``0``, ``hidden_states.2``), the same order torch.export and the ONNX exporter use, so verification
checks each leaf under its own name. Types the pytree does not know yet — plain dataclasses and
``dict`` / ``OrderedDict`` subclasses (the Hugging Face ``ModelOutput`` shape) — are registered
on first sight by :func:`register_output_types`. Distillation, accuracy and agreement read one
leaf, the logits: the first floating leaf, or the one ``--output-name`` names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.utils._pytree as pytree

from slimmer.errors import ConfigError

_REGISTERED: set[type] = set()


def _is_known(cls: type) -> bool:
    return cls in pytree.SUPPORTED_NODES or cls in _REGISTERED


def register_output_types(out: Any) -> None:
    """Register with the pytree every dataclass and dict subclass found in ``out`` (recursively),
    so torch.export, the ONNX exporter and :func:`named_leaves` can flatten it."""
    if isinstance(out, torch.Tensor) or out is None:
        return
    cls = type(out)
    if dataclasses.is_dataclass(out) and not _is_known(cls) and not isinstance(out, dict):
        fields = [f.name for f in dataclasses.fields(out)]
        pytree.register_pytree_node(
            cls,
            lambda obj, _f=fields: ([getattr(obj, n) for n in _f], _f),
            lambda values, names, _c=cls: _c(**dict(zip(names, values, strict=True))),
            serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
            flatten_with_keys_fn=lambda obj, _f=fields: (
                [(pytree.GetAttrKey(n), getattr(obj, n)) for n in _f],
                _f,
            ),
        )
        _REGISTERED.add(cls)
    elif isinstance(out, dict) and not _is_known(cls):
        _register_mapping(cls)
    if isinstance(out, dict):
        children = list(out.values())
    elif dataclasses.is_dataclass(out):
        children = [getattr(out, f.name) for f in dataclasses.fields(out)]
    elif isinstance(out, (list, tuple)):
        children = list(out)
    else:
        return
    for child in children:
        register_output_types(child)


def _register_mapping(cls: type) -> None:
    """A dict subclass flattened by its keys (in order), rebuilt with ``cls(zip(keys, values))``."""

    def flatten(obj):
        keys = list(obj.keys())
        return [obj[k] for k in keys], keys

    def unflatten(values, keys):
        try:
            return cls(zip(keys, values, strict=True))
        except TypeError:  # a constructor with its own signature (e.g. keyword fields)
            return cls(**dict(zip(keys, values, strict=True)))

    def flatten_with_keys(obj):
        keys = list(obj.keys())
        return [(pytree.MappingKey(k), obj[k]) for k in keys], keys

    pytree.register_pytree_node(
        cls,
        flatten,
        unflatten,
        serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        flatten_with_keys_fn=flatten_with_keys,
    )
    _REGISTERED.add(cls)


def _key_name(path: tuple) -> str:
    parts = []
    for key in path:
        if isinstance(key, pytree.MappingKey):
            parts.append(str(key.key))
        elif isinstance(key, pytree.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, pytree.GetAttrKey):
            parts.append(str(key.name))
        else:
            parts.append(str(key).strip(".[]'\""))
    return ".".join(parts) or "output"


def named_leaves(out: Any) -> list[tuple[str, torch.Tensor]]:
    """The tensor leaves of ``out`` with their names, in pytree order (the ONNX output order)."""
    if isinstance(out, torch.Tensor):
        return [("output", out)]
    register_output_types(out)
    leaves, _ = pytree.tree_flatten_with_path(out)
    return [(_key_name(path), leaf) for path, leaf in leaves if isinstance(leaf, torch.Tensor)]


def has_other_leaves(out: Any) -> bool:
    """True when ``out`` holds leaves that are not tensors (an ``int`` or ``str`` field, a float in a
    dict): the ONNX graph cannot return them, so the exporter is given :class:`TensorLeaves`."""
    if isinstance(out, torch.Tensor):
        return False
    register_output_types(out)
    return any(not isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves(out))


class TensorLeaves(torch.nn.Module):
    """``model`` returning the tuple of its output's tensor leaves in pytree order (the names
    :func:`output_names` gives), without the non-tensor leaves. Exported in place of a model whose
    output :func:`has_other_leaves`; its parameters are ``model.``-prefixed."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> tuple[torch.Tensor, ...]:
        return tuple(leaf for leaf in pytree.tree_leaves(self.model(*args)) if isinstance(leaf, torch.Tensor))


def output_names(out: Any) -> list[str]:
    """ONNX-friendly names of the tensor leaves (unique, ``.`` kept)."""
    return [name for name, _ in named_leaves(out)]


def logits_of(out: Any, name: str | None = None) -> torch.Tensor:
    """The leaf that distillation and accuracy read: the one named ``name``, else the first
    floating leaf. Raises :class:`ConfigError` when there is none (or no leaf of that name)."""
    if isinstance(out, torch.Tensor) and name is None:
        return out
    leaves = named_leaves(out)
    if name is not None:
        for leaf_name, leaf in leaves:
            if leaf_name == name:
                return leaf
        raise ConfigError(
            f"--output-name {name!r}: the model has no output of that name",
            hint="outputs: " + ", ".join(n for n, _ in leaves),
        )
    for _, leaf in leaves:
        if leaf.is_floating_point():
            return leaf
    raise ConfigError(
        "the model returns no floating-point tensor to use as logits",
        hint="outputs: " + (", ".join(n for n, _ in leaves) or "(none)"),
    )


def describe(out: Any) -> dict[str, list[int]]:
    """``{leaf name: shape}`` for the report."""
    return {name: list(t.shape) for name, t in named_leaves(out)}
