"""Merge consecutive linear layers of a whole model, found in the captured graph (Ben Dror et al., BMVC 2022).

Run after :func:`~slimmer.folding.batchnorm.fold_batchnorm` and
:func:`~slimmer.folding.linearize.finalize_activations`: BNs and removed activations are then
``nn.Identity`` and leave no node, so a foldable pair is a Conv/Linear node whose input is the
output of another Conv/Linear node with no other user, each layer called exactly once.

The pair is replaced in place: the first layer's module becomes the merged layer and the second
becomes ``nn.Identity``. Merging can *grow* MACs (two 3×3 convs of width C cost 18·C² per pixel,
one 5×5 costs 25·C²), so a pair is merged only when its estimated MACs do not grow beyond
``max_mac_growth`` (1.0: no growth). After every merge the model's outputs on the example input
are compared with the previous ones; a difference reverts the merge and is reported.

Not handled here: residual blocks (``x + conv2(conv1(x))``: :mod:`slimmer.folding.region`
collapses those by rewriting the traced graph) and chains through reshapes (conv → flatten → linear).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from slimmer.folding._modules import CONV_OPS, call_counts, layer_of, set_module
from slimmer.folding.merge import merge_convs, merge_linears, merge_refusal
from slimmer.graph.capture import CapturedGraph, capture, op_name
from slimmer.graph.macs import count_macs

MAX_ROUNDS = 256
Accept = Callable[[str, str, nn.Module, nn.Module, nn.Module, tuple[int, ...]], "str | None"]


@dataclass
class MergeReport:
    """What :func:`merge_model` did: pairs merged, pairs refused with the reason, sizes before/after."""

    merged: list[dict[str, Any]] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    depth: tuple[int, int] = (0, 0)
    params: tuple[int, int] = (0, 0)
    macs: tuple[int, int] = (0, 0)
    conv_nodes: tuple[int, int] = (0, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "merged": self.merged,
            "refused": dict(self.refused),
            "depth": {"before": self.depth[0], "after": self.depth[1]},
            "params": {"before": self.params[0], "after": self.params[1]},
            "macs": {"before": self.macs[0], "after": self.macs[1]},
        }


def layer_depth(captured: CapturedGraph) -> int:
    """The most Conv/Linear ops on any path from an input to an output of the graph."""
    depth: dict[fx.Node, int] = {}
    best = 0
    for node in captured.graph.nodes:
        before = max((depth.get(a, 0) for a in node.all_input_nodes), default=0)
        is_layer = node.op == "call_function" and op_name(node) in CONV_OPS | {"aten.linear.default"}
        depth[node] = before + int(is_layer)
        best = max(best, depth[node])
    return best


def _conv_nodes(captured: CapturedGraph) -> int:
    return sum(1 for n in captured.graph.nodes if n.op == "call_function" and op_name(n) in CONV_OPS)


def _node_macs(node: fx.Node, layer: nn.Module) -> int:
    out = node.meta["val"]
    if isinstance(layer, nn.Linear):
        return out.numel() * layer.in_features
    return out.numel() * layer.weight[0].numel()


def _merged_macs(node: fx.Node, first: nn.Module, merged: nn.Module) -> int:
    out = node.meta["val"]
    if isinstance(merged, nn.Linear):
        return out.numel() * first.in_features
    return out.numel() * merged.weight[0].numel()


def _candidates(model: nn.Module, captured: CapturedGraph) -> list[tuple[fx.Node, fx.Node, str, str]]:
    counts = call_counts(captured)
    found = []
    for node in captured.graph.nodes:
        second = layer_of(captured, model, node)
        source = node.args[0] if node.args else None
        if second is None or not isinstance(source, fx.Node):
            continue
        first = layer_of(captured, model, source)
        if first is None or first[0] == second[0]:
            continue
        if len(source.users) != 1 or counts.get(first[0]) != 1 or counts.get(second[0]) != 1:
            continue
        found.append((source, node, first[0], second[0]))
    return found


def _shared_parameter(*nodes: fx.Node) -> str | None:
    for node in nodes:
        for arg in node.args[1:3]:
            if isinstance(arg, fx.Node) and arg.op == "placeholder" and len(arg.users) != 1:
                return f"{arg.name} is also used outside its layer"
    return None


def _outputs(model: nn.Module, inputs: tuple[Any, ...]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(*inputs)
    flat = out if isinstance(out, (list, tuple)) else [out]
    return [t for t in flat if isinstance(t, torch.Tensor)]


def _same(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            return False
        scale = max(float(y.abs().max()), 1.0) if y.numel() else 1.0
        if y.numel() and float((x - y).abs().max()) > rtol * scale:
            return False
    return True


def merge_model(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[Any],
    *,
    max_mac_growth: float = 1.0,
    allow_border_approx: bool = False,
    rtol: float = 1e-4,
    accept: Accept | None = None,
) -> MergeReport:
    """Merge every foldable Conv→Conv and Linear→Linear pair of ``model`` in place; report it.

    Pairs are merged one at a time, all disjoint pairs of one captured graph in one round (a chain
    of three folds into one in two rounds), each only
    when :func:`~slimmer.folding.merge.merge_refusal` allows it and MACs grow at most by
    ``max_mac_growth``. With ``allow_border_approx`` a padded second conv is merged the paper's
    way (outputs differ on the border, so the output check is skipped for those merges).
    ``accept(first_path, second_path, first, second, merged, input_shape)`` may refuse a merge the
    rules allow by returning the reason (e.g. a measured latency gate); None accepts it.
    """
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    was_training = model.training
    model.eval()
    report = MergeReport()
    captured = capture(model, inputs)
    depth_before = layer_depth(captured)
    convs_before = _conv_nodes(captured)
    params_before = sum(p.numel() for p in model.parameters())
    macs_before = count_macs(model, inputs)
    reference: list[torch.Tensor] | None = None  # outputs before the next exact merge (None: not computed yet)
    for _ in range(MAX_ROUNDS):
        pending = [c for c in _candidates(model, captured) if f"{c[2]} -> {c[3]}" not in report.refused]
        touched: set[str] = set()  # pairs sharing a layer with a merge of this round wait for the next capture
        for source, node, first_path, second_path in pending:
            if first_path in touched or second_path in touched:
                continue
            key = f"{first_path} -> {second_path}"
            first, second = model.get_submodule(first_path), model.get_submodule(second_path)
            reason = _shared_parameter(source, node) or merge_refusal(
                first, second, allow_border_approx=allow_border_approx
            )
            if reason:
                report.refused[key] = reason
                continue
            approximate = bool(isinstance(second, nn.Conv2d) and any(second.padding))
            if isinstance(first, nn.Linear):
                merged: nn.Module = merge_linears(first, second)
            else:
                merged = merge_convs(first, second, allow_border_approx=allow_border_approx)
            cost_before = _node_macs(source, first) + _node_macs(node, second)
            cost_after = _merged_macs(node, first, merged)
            if cost_after > max_mac_growth * cost_before:
                report.refused[key] = f"merging would grow MACs from {cost_before} to {cost_after}"
                continue
            if accept is not None:
                shape = tuple(source.args[0].meta["val"].shape) if isinstance(source.args[0], fx.Node) else ()
                refusal = accept(first_path, second_path, first, second, merged, shape)
                if refusal:
                    report.refused[key] = refusal
                    continue
            if not approximate and reference is None:
                reference = _outputs(model, inputs)
            set_module(model, first_path, merged)
            set_module(model, second_path, nn.Identity())
            if approximate:  # differs on the border by design: nothing to compare, later merges re-measure
                reference = None
            else:
                outputs = _outputs(model, inputs)
                if not _same(outputs, reference, rtol):
                    set_module(model, first_path, first)
                    set_module(model, second_path, second)
                    report.refused[key] = "the merged model's outputs differ (forward uses the layers otherwise)"
                    continue
                reference = outputs
            touched |= {first_path, second_path}
            report.merged.append(
                {
                    "first": first_path,
                    "second": second_path,
                    "into": first_path,
                    "kind": type(merged).__name__,
                    "shape": list(merged.weight.shape),
                    "macs_before": cost_before,
                    "macs_after": cost_after,
                    "exact": not approximate,
                }
            )
        if not touched:
            break
        captured = capture(model, inputs)
    report.conv_nodes = (convs_before, _conv_nodes(captured))
    report.depth = (depth_before, layer_depth(captured))
    report.params = (params_before, sum(p.numel() for p in model.parameters()))
    report.macs = (macs_before, count_macs(model, inputs))
    model.train(was_training)
    return report
