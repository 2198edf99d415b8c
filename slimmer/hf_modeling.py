"""The model class ``--save-pretrained`` writes beside a pruned Hugging Face model, so that
``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` rebuilds it with its pruned sizes.

transformers (5.x) has no config field for per-layer head counts or feed-forward widths. The
folder therefore carries a small class (``modeling_slimmer_pruned.py``) that subclasses the
original architecture class (``BertModel``, ...), builds it from ``config.json`` as usual, then
gives the layers listed in ``config.slimmer_pruned`` their pruned shapes and attributes (head
counts, head widths); ``from_pretrained`` then loads the weights strictly as for any model.
:func:`pruned_sizes` finds those differences by comparing the pruned model with a fresh one built
from the same config, so nothing in the class is specific to one architecture.
"""

from __future__ import annotations

from typing import Any

from torch import nn

MODELING_FILE = "modeling_slimmer_pruned.py"
RESIZABLE = ("Linear", "LayerNorm", "Embedding", "Conv1d", "Conv2d", "Conv1D")  # Conv1D: transformers'

_TEMPLATE = '''"""{base} with the per-layer sizes of a model pruned by slimmer (written by --save-pretrained).

transformers has no config field for per-layer head counts or feed-forward widths: this class builds
{base} from config.json, then gives the layers in ``config.slimmer_pruned`` their pruned shapes and
attributes. Load with ``{auto}.from_pretrained(DIR, trust_remote_code=True)``.
"""

import transformers
from torch import nn


def _resize(root, path, spec):
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    old = getattr(parent, name)
    kind = spec["type"]
    if kind == "Linear":
        new = nn.Linear(spec["in_features"], spec["out_features"], bias=old.bias is not None)
    elif kind == "LayerNorm":
        shape = tuple(spec["normalized_shape"])
        new = nn.LayerNorm(shape, eps=old.eps, elementwise_affine=old.elementwise_affine, bias=old.bias is not None)
    elif kind == "Embedding":
        new = nn.Embedding(spec["num_embeddings"], spec["embedding_dim"], padding_idx=old.padding_idx)
    elif kind == "Conv1D":  # transformers' GPT-2 layer: a Linear storing its weight as [nx, nf]
        from transformers.pytorch_utils import Conv1D

        new = Conv1D(spec["nf"], spec["nx"])
    elif kind in ("Conv1d", "Conv2d"):
        new = getattr(nn, kind)(
            spec["in_channels"], spec["out_channels"], old.kernel_size, old.stride, old.padding, old.dilation,
            spec["groups"], old.bias is not None, old.padding_mode,
        )
    else:
        raise ValueError(f"slimmer_pruned: cannot resize a {{kind}} at {{path}}")
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    setattr(parent, name, new)


class {cls}(transformers.{base}):
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        pruned = getattr(config, "slimmer_pruned", None) or {{}}
        for path, spec in pruned.get("modules", {{}}).items():
            _resize(self, path, spec)
        for path, values in pruned.get("attributes", {{}}).items():
            module = self.get_submodule(path)
            for name, value in values.items():
                setattr(module, name, value)
'''


def _shape_spec(module: nn.Module) -> dict[str, Any] | None:
    kind = type(module).__name__
    if kind == "Conv1D" and type(module).__module__.startswith("transformers") and hasattr(module, "nf"):
        nx, nf = module.weight.shape
        return {"type": kind, "nx": int(nx), "nf": int(nf)}
    if kind not in RESIZABLE or type(module).__module__.split(".")[0] != "torch":
        return None
    if isinstance(module, nn.Linear):
        return {"type": kind, "in_features": module.in_features, "out_features": module.out_features}
    if isinstance(module, nn.LayerNorm):
        return {"type": kind, "normalized_shape": list(module.normalized_shape)}
    if isinstance(module, nn.Embedding):
        return {"type": kind, "num_embeddings": module.num_embeddings, "embedding_dim": module.embedding_dim}
    conv = module
    return {"type": kind, "in_channels": conv.in_channels, "out_channels": conv.out_channels, "groups": conv.groups}


def _int_attributes(module: nn.Module) -> dict[str, int]:
    return {
        k: v
        for k, v in vars(module).items()
        if not k.startswith("_") and isinstance(v, int) and not isinstance(v, bool)
    }


def pruned_sizes(pruned: nn.Module, fresh: nn.Module) -> dict[str, dict]:
    """``{"modules": {path: shape spec}, "attributes": {path: {name: int}}}``: what differs between
    ``pruned`` and ``fresh`` (the same architecture built from the same config).

    Raises ValueError when a layer whose parameters changed shape is not of a type the class can
    rebuild (:data:`RESIZABLE`)."""
    reference = dict(fresh.named_modules())
    modules: dict[str, dict] = {}
    attributes: dict[str, dict[str, int]] = {}
    for path, module in pruned.named_modules():
        old = reference.get(path)
        if old is None or not path:
            continue
        own = {n: tuple(p.shape) for n, p in module.named_parameters(recurse=False)}
        before = {n: tuple(p.shape) for n, p in old.named_parameters(recurse=False)}
        if own != before:
            spec = _shape_spec(module)
            if spec is None:
                raise ValueError(f"{path} ({type(module).__name__}) changed shape and cannot be rebuilt from config")
            modules[path] = spec
        skip = set(modules.get(path, ())) - {"type"}  # sizes the rebuilt layer's constructor sets
        was = _int_attributes(old)
        changed = {k: v for k, v in _int_attributes(module).items() if k not in skip and was.get(k) != v}
        if changed:
            attributes[path] = changed
    return {"modules": modules, "attributes": attributes}


def modeling_source(base: str, auto: str) -> tuple[str, str]:
    """``(class name, source of modeling_slimmer_pruned.py)`` for the architecture class ``base``."""
    cls = f"SlimmerPruned{base}"
    return cls, _TEMPLATE.format(base=base, cls=cls, auto=auto)
