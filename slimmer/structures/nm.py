"""N:M semi-structured sparsity: keep the N largest weights in every M consecutive input weights.

The pattern is the one sparse tensor cores run (2:4 on NVIDIA Ampere and later; Mishra et al.,
"Accelerating Sparse Deep Neural Networks", arXiv 2104.08378) and the one SR-STE trains from
scratch (Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch",
ICLR 2021). Groups run along the *input* dimension: a Linear layer's ``in_features``, and a
convolution's input channels at each (output channel, kernel position) — the NHWC layout, where
the input channels of one kernel tap are contiguous.

Masks are plain :class:`~slimmer.structures.unstructured.MaskSet` objects, so holding them during
fine-tuning is ``MaskSet.apply``. :func:`check_nm` re-checks the pattern on a NumPy array (an ONNX
initializer), :func:`check_onnx_nm` on every weight of an ONNX file.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimmer.errors import ConfigError
from slimmer.structures.unstructured import MaskSet

_NM_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_INPUT_AXIS = {"OI": 1, "IO": 0}


def parse_nm(spec: str) -> tuple[int, int]:
    """``"2:4"`` → ``(2, 4)``. Raises :class:`ConfigError` unless ``1 ≤ N < M``."""
    match = _NM_PATTERN.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise ConfigError(f"N:M pattern {spec!r} is not of the form N:M", hint="write it like 2:4, 1:4 or 4:8")
    n, m = int(match.group(1)), int(match.group(2))
    if n < 1:
        raise ConfigError(f"N:M pattern {spec!r}: N = {n} must be at least 1", hint="e.g. 2:4")
    if n >= m:
        raise ConfigError(
            f"N:M pattern {spec!r}: N = {n} must be smaller than M = {m} (N ≥ M prunes nothing)",
            hint="e.g. 2:4",
        )
    return n, m


@dataclass
class NMResult:
    """N:M keep-masks by parameter name, and the layers left dense with the reason."""

    masks: MaskSet
    n: int
    m: int
    skipped: dict[str, str] = field(default_factory=dict)
    # the weights before masking: SR-STE fine-tunes from them, so a pruned weight can win its place back
    dense: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def layers(self) -> list[str]:
        """Parameter names that carry the N:M pattern."""
        return sorted(self.masks.masks)


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean keep-mask of a ``[out, in, *kernel]`` weight: the N largest |w| of every M inputs.

    Axis 1 is the input axis (Linear ``[out, in]``, Conv ``[out, in/groups, kh, kw]``); its size
    must be a multiple of ``m``. Ties are broken by position (lowest index kept), so exactly ``n``
    weights per group are kept.
    """
    if weight.dim() < 2 or weight.shape[1] % m:
        raise ConfigError(f"weight of shape {tuple(weight.shape)}: input dim is not a multiple of M = {m}")
    moved = weight.detach().abs().movedim(1, -1)  # [out, *kernel, in]
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m).float()
    # stable descending order: equal magnitudes keep the earlier position
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
    return keep.reshape(moved.shape).movedim(-1, 1).contiguous()


def _skip_reason(module: nn.Module, m: int) -> str | None:
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "transposed convolution: its input dim is axis 0; N:M is not supported for it"
    weight = module.weight
    groups = getattr(module, "groups", 1)
    if weight.shape[1] % m:
        what = "in_features" if isinstance(module, nn.Linear) else "input channels per group"
        detail = f" (in_channels {module.in_channels} / groups {groups})" if groups > 1 else ""
        return f"{what} = {weight.shape[1]}{detail} is not a multiple of M = {m}"
    return None


CONV1D_SKIP = "transformers Conv1D (GPT-2 style, weight stored [in, out]): N:M prunes nn.Linear and nn.Conv* layers"


def nm_masks(model: nn.Module, n: int, m: int, exclude: Iterable[str] = ()) -> NMResult:
    """N:M keep-masks for every Conv/Linear weight of ``model`` (magnitude within each group).

    Layers in ``exclude`` (module paths) are left alone and not listed; a layer whose input
    dimension is not a multiple of ``m`` (e.g. a stem conv with 3 input channels, a depthwise
    conv) or that is a transposed conv is left dense and listed in ``skipped`` with the reason.
    """
    if not 1 <= n < m:
        raise ConfigError(f"N:M needs 1 ≤ N < M, got {n}:{m}")
    skip = set(exclude)
    masks: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    seen: set[int] = set()
    prunable = (nn.modules.conv._ConvNd, nn.Linear)
    for path, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if type(module).__name__ == "Conv1D" and isinstance(weight, nn.Parameter) and path not in skip:
            skipped[path] = CONV1D_SKIP
            continue
        if not isinstance(module, prunable) or not isinstance(weight, nn.Parameter):
            continue
        if path in skip or id(weight) in seen:
            continue
        seen.add(id(weight))
        name = f"{path}.weight" if path else "weight"
        reason = _skip_reason(module, m)
        if reason is not None:
            skipped[path or "<root>"] = reason
            continue
        masks[name] = nm_mask(weight, n, m)
    return NMResult(masks=MaskSet(masks=masks), n=n, m=m, skipped=skipped)


def check_nm(weight: np.ndarray, n: int, m: int, layout: str | int = "OI") -> bool:
    """True when every group of ``m`` consecutive weights along the input axis has ≤ ``n`` nonzeros.

    ``layout`` names the input axis: ``"OI"`` (axis 1: Conv ``[O, I, kh, kw]``, torch Linear, Gemm
    with ``transB=1``), ``"IO"`` (axis 0: MatMul, Gemm with ``transB=0`` — what an exporter leaves
    after folding a transpose) or the axis as an int. An input axis whose size is not a multiple
    of ``m`` is False.
    """
    axis = _INPUT_AXIS.get(layout) if isinstance(layout, str) else int(layout)
    if axis is None:
        raise ConfigError(f"unknown weight layout {layout!r}; use 'OI', 'IO' or an axis number")
    array = np.asarray(weight)
    if array.ndim < 2 or array.shape[axis] % m:
        return False
    moved = np.moveaxis(array != 0, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    return bool((groups.sum(axis=-1) <= n).all())


def onnx_weight_layouts(onnx_model: object) -> dict[str, str]:
    """``{initializer name: layout}`` for the weights of Conv, Gemm and MatMul nodes of an ONNX model."""
    initializers = {init.name for init in onnx_model.graph.initializer}  # type: ignore[attr-defined]
    # a 2-d Transpose of an initializer (how a Linear on 3-d inputs exports): MatMul sees [in, out]
    transposed = {
        node.output[0]: node.input[0]
        for node in onnx_model.graph.node  # type: ignore[attr-defined]
        if node.op_type == "Transpose"
        and node.input
        and node.input[0] in initializers
        and [list(a.ints) for a in node.attribute if a.name == "perm"] in ([], [[1, 0]])
    }
    layouts: dict[str, str] = {}
    for node in onnx_model.graph.node:  # type: ignore[attr-defined]
        if len(node.input) < 2:
            continue
        if node.op_type == "MatMul" and node.input[1] in transposed:
            layouts[transposed[node.input[1]]] = "OI"
            continue
        if node.input[1] not in initializers:
            continue
        if node.op_type == "Conv":
            layouts[node.input[1]] = "OI"
        elif node.op_type == "MatMul":
            layouts[node.input[1]] = "IO"
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            layouts[node.input[1]] = "OI" if trans_b else "IO"
    return layouts


def check_onnx_nm(path: str | Path, n: int, m: int, names: Iterable[str] | None = None) -> dict[str, bool]:
    """Read an ONNX file and :func:`check_nm` every Conv/Gemm/MatMul weight initializer.

    With ``names``, only those initializers are checked (a name the file lacks maps to False).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    layouts = onnx_weight_layouts(model)
    arrays = {init.name: init for init in model.graph.initializer if init.name in layouts}
    wanted = sorted(layouts) if names is None else list(names)
    return {
        name: name in arrays and check_nm(numpy_helper.to_array(arrays[name]), n, m, layouts[name]) for name in wanted
    }


def locate_pruned_weights(path: str | Path, masks: dict[str, torch.Tensor]) -> dict[str, str] | None:
    """``{parameter name: initializer name}``: where each N:M-pruned weight of ``masks`` (keep-masks by
    parameter name, torch layout) is in the ONNX file, or None when one of them cannot be found.

    An initializer of a Conv, Gemm or MatMul is a pruned weight's when it carries the parameter's name,
    or when, in the torch layout, it has the mask's shape and is zero wherever the mask removed a
    weight. Weights that N:M did not prune (``nn.MultiheadAttention.in_proj_weight``, a bare parameter
    in a matmul) are none of these, so the read-back does not hold them to the pattern.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    layouts = onnx_weight_layouts(model)
    arrays = {}
    for init in model.graph.initializer:
        if init.name in layouts:
            array = numpy_helper.to_array(init)
            arrays[init.name] = array.T if layouts[init.name] == "IO" and array.ndim == 2 else array
    found: dict[str, str] = {}
    for name, mask in masks.items():
        if name in arrays:
            found[name] = name
            continue
        removed = ~mask.cpu().numpy().astype(bool)
        match = next(
            (
                init
                for init, array in arrays.items()
                if init not in found.values() and array.shape == removed.shape and not array[removed].any()
            ),
            None,
        )
        if match is None:
            return None
        found[name] = match
    return found


def nm_metadata(n: int, m: int, layers: Iterable[str]) -> dict[str, str]:
    """ONNX ``metadata_props`` entries recording the pattern and which weights carry it."""
    names = sorted(layers)
    return {
        "slimmer.sparsity.pattern": f"{n}:{m}",
        "slimmer.sparsity.axis": "input",
        "slimmer.sparsity.layers": json.dumps(names),
    }


def compressed_size(path: str | Path, level: int = 6, chunk: int = 1 << 20) -> int:
    """Bytes of ``path`` after zlib (level 6): what a sparse file compresses to, for the report."""
    compressor = zlib.compressobj(level)
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            size += len(compressor.compress(block))
    return size + len(compressor.flush())
