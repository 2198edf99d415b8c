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

import torch
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


def _onnx_region(gm: Any, region: Any, in_shape: tuple[int, ...]) -> Any:
    """A small ONNX model running a linear region of a traced graph (convs, BNs, sums, identities), batch 1."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []
    names = {region.source: "x"}

    def arr(t: Any, name: str) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(t.detach().float().cpu().numpy()), name))
        return name

    for i, node in enumerate(region.nodes):
        out = f"t{i}"
        args = [names[a] for a in node.all_input_nodes]
        module = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, nn.Conv2d):
            bias = arr(module.bias if module.bias is not None else torch.zeros(module.out_channels), f"b{i}")
            r = module.kernel_size[0] // 2
            nodes.append(
                helper.make_node(
                    "Conv",
                    [args[0], arr(module.weight, f"w{i}"), bias],
                    [out],
                    kernel_shape=list(module.kernel_size),
                    group=module.groups,
                    pads=[r, r, r, r],
                )
            )
        elif isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            w = module.weight if module.weight is not None else torch.ones(c)
            b = module.bias if module.bias is not None else torch.zeros(c)
            inputs = [args[0], arr(w, f"g{i}"), arr(b, f"be{i}"), arr(module.running_mean, f"m{i}")]
            inputs.append(arr(module.running_var, f"v{i}"))
            nodes.append(helper.make_node("BatchNormalization", inputs, [out], epsilon=module.eps))
        elif module is None:  # a sum of two region tensors
            nodes.append(helper.make_node("Add", args, [out]))
        else:  # identity, dropout, an activation that became linear
            nodes.append(helper.make_node("Identity", args[:1], [out]))
        names[node] = out
    graph = helper.make_graph(
        nodes,
        "fold_region",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *in_shape[1:]])],
        [helper.make_tensor_value_info(names[region.output], TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _time_pair(before: Any, after: Any) -> dict:
    """Time two ONNX models against each other (paired, 1 thread, batch 1)."""
    import onnx

    from slimmer.export.bench import paired_latency

    with tempfile.TemporaryDirectory(prefix="slimmer-fold-gate-") as tmp:
        before_path, after_path = Path(tmp) / "before.onnx", Path(tmp) / "after.onnx"
        onnx.save(before, before_path)
        onnx.save(after, after_path)
        result = paired_latency(before_path, after_path, warmup=GATE_WARMUP, pairs=GATE_PAIRS, threads=1, batch=1)
    return {
        "pair_ms": round(result.a.p50_ms, 4),
        "merged_ms": round(result.b.p50_ms, 4),
        "speedup": round(result.speedup, 3),
    }


def measure_region(gm: Any, region: Any, merged: nn.Conv2d) -> dict:
    """Time a linear region against the one conv it collapses into, in onnxruntime."""
    in_shape = tuple(region.source.meta["tensor_meta"].shape)
    return _time_pair(_onnx_region(gm, region, in_shape), _onnx_layers([merged], in_shape))


def measure_merge(first: nn.Module, second: nn.Module, merged: nn.Module, in_shape: tuple[int, ...]) -> dict:
    """Time the pair against the merged layer in onnxruntime (paired, 1 thread, batch 1)."""
    return _time_pair(_onnx_layers([first, second], in_shape), _onnx_layers([merged], in_shape))


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

    def region(self, gm: Any, region: Any, merged: nn.Conv2d) -> str | None:
        """Judge collapsing a linear region (:mod:`slimmer.folding.region`) into ``merged``."""
        if self.mode == "off":
            return None
        key = f"{region.source.name} -> {region.output.name} ({merged.kernel_size[0]}x{merged.kernel_size[1]} conv)"
        timing = _agreed(measure_region(gm, region, merged))
        self.measured[key] = timing
        if timing["speedup"] < 1.0:
            return (
                f"the merged conv is slower in onnxruntime: region {timing['pair_ms']:.3f} ms, merged "
                f"{timing['merged_ms']:.3f} ms (region/merged {timing['speedup']:.2f}, 1 thread, batch 1)"
            )
        return None
