"""Small helpers shared by the folding passes: find a node's layer, swap a submodule."""

from __future__ import annotations

from torch import fx, nn

from slimmer.graph.capture import CapturedGraph, op_name

CONV_OPS = {"aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default", "aten.convolution.default"}
LINEAR_OPS = {"aten.linear.default"}


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at ``path`` (dotted) with ``new``."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)


def innermost_module(node: fx.Node) -> str | None:
    """The dotted path of the innermost module that issued ``node`` (None when unknown)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    return str(list(stack.values())[-1][0])


def layer_of(captured: CapturedGraph, model: nn.Module, node: fx.Node) -> tuple[str, nn.Module] | None:
    """``(path, module)`` of the Conv/Linear layer a conv/linear node runs, or None.

    The node must use the layer's own weight placeholder *and* be issued from inside that layer,
    so a functional call on a borrowed weight is not taken for the layer.
    """
    if op_name(node) not in CONV_OPS | LINEAR_OPS or len(node.args) < 2:
        return None
    weight = node.args[1]
    if not isinstance(weight, fx.Node) or weight.op != "placeholder":
        return None
    state = captured.state_name(weight)
    if state is None or not state.endswith("weight"):
        return None
    path = state[: -len(".weight")] if "." in state else ""
    if innermost_module(node) != path:
        return None
    module = model.get_submodule(path) if path else model
    if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        return None
    return path, module


def call_counts(captured: CapturedGraph) -> dict[str, int]:
    """How many ATen nodes each innermost module issued (a module called twice counts twice)."""
    counts: dict[str, int] = {}
    for node in captured.graph.nodes:
        if node.op == "call_function":
            path = innermost_module(node)
            if path is not None:
                counts[path] = counts.get(path, 0) + 1
    return counts
