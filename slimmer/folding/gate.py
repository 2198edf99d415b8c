"""The latency gate of layer folding: merge two layers only when the merged one is not slower.

The pair and the merged layer become two small ONNX graphs with the real shapes at batch 1, timed
by :func:`~slimmer.export.bench.paired_latency` (one intra-op thread, warm-up, interleaved pairs,
median of per-pair ratios). Used by :mod:`slimmer.folding.phase`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

GATE_WARMUP, GATE_PAIRS = 10, 50
GATES = ("measure", "off")


def _onnx_layers(layers: list[nn.Module], in_shape: tuple[int, ...]) -> Any:
    """A small ONNX model running ``layers`` one after the other (Conv2d or Linear), batch 1."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes, current = [], [], "x"
    for i, layer in enumerate(layers):
        w = layer.weight.detach().float().cpu().numpy()
        b = layer.bias.detach().float().cpu().numpy() if layer.bias is not None else np.zeros(w.shape[0], np.float32)
        out = f"y{i}"
        if isinstance(layer, nn.Linear):
            inits += [numpy_helper.from_array(np.ascontiguousarray(w.T), f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes += [
                helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
                helper.make_node("Add", [f"m{i}", f"b{i}"], [out]),
            ]
        else:
            inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
            (ph, pw), (sh, sw) = layer.padding, layer.stride
            nodes.append(
                helper.make_node(
                    "Conv",
                    [current, f"w{i}", f"b{i}"],
                    [out],
                    kernel_shape=list(layer.kernel_size),
                    strides=[sh, sw],
                    pads=[ph, pw, ph, pw],
                )
            )
        current = out
    shape = [1, *in_shape[1:]]
    graph = helper.make_graph(
        nodes,
        "fold_gate",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def measure_merge(first: nn.Module, second: nn.Module, merged: nn.Module, in_shape: tuple[int, ...]) -> dict:
    """Time the pair against the merged layer in onnxruntime (paired, 1 thread, batch 1)."""
    import onnx

    from slimmer.export.bench import paired_latency

    with tempfile.TemporaryDirectory(prefix="slimmer-fold-gate-") as tmp:
        pair_path, merged_path = Path(tmp) / "pair.onnx", Path(tmp) / "merged.onnx"
        onnx.save(_onnx_layers([first, second], in_shape), pair_path)
        onnx.save(_onnx_layers([merged], in_shape), merged_path)
        result = paired_latency(pair_path, merged_path, warmup=GATE_WARMUP, pairs=GATE_PAIRS, threads=1, batch=1)
    return {
        "pair_ms": round(result.a.p50_ms, 4),
        "merged_ms": round(result.b.p50_ms, 4),
        "speedup": round(result.speedup, 3),
    }


def _agreed(timing: dict) -> dict:
    """Under torchrun every rank must fold the same way: rank 0's measurement decides for all."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return timing
    box = [timing]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclass
class LatencyGate:
    """Decides each merge by measurement (``"measure"``) or lets every allowed merge through (``"off"``).

    Results are cached per (pair, shapes), so a pair judged when its activation was chosen is not
    timed again when it is merged. ``protected`` layers (holding masks or an N:M pattern) never merge:
    the merged weight would be dense.
    """

    mode: str = "measure"
    protected: frozenset[str] = frozenset()
    measured: dict[str, dict] = field(default_factory=dict)
    _cache: dict[tuple, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in GATES:
            raise ValueError(f"latency gate must be one of {', '.join(GATES)}, got {self.mode!r}")

    def __call__(
        self,
        first_path: str,
        second_path: str,
        first: nn.Module,
        second: nn.Module,
        merged: nn.Module,
        in_shape: tuple[int, ...],
    ) -> str | None:
        for path in (first_path, second_path):
            if path in self.protected:
                return f"{path} holds pruning masks or an N:M pattern that merging would densify"
        if self.mode == "off":
            return None
        key = (first_path, second_path, tuple(in_shape[1:]), tuple(merged.weight.shape))
        if key not in self._cache:
            self._cache[key] = _agreed(measure_merge(first, second, merged, in_shape))
        timing = self._cache[key]
        self.measured[f"{first_path} -> {second_path}"] = timing
        if timing["speedup"] < 1.0:
            return (
                f"the merged layer is slower in onnxruntime: pair {timing['pair_ms']:.3f} ms, merged "
                f"{timing['merged_ms']:.3f} ms (pair/merged {timing['speedup']:.2f}, 1 thread, batch 1)"
            )
        return None
