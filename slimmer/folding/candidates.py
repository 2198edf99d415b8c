"""Which activations layer folding wraps: those whose linearization lets two layers merge.

An activation is a candidate when it is the only thing between two mergeable layers (each with a
single user), the merge rules accept the pair, and the latency gate says the merged layer is not
slower; :func:`candidates` also says why every other activation was left alone.
"""

from __future__ import annotations

from torch import fx, nn

from slimmer.folding._modules import call_counts, layer_of
from slimmer.folding.batchnorm import BN_OPS
from slimmer.folding.gate import LatencyGate
from slimmer.folding.linearize import (
    DEFAULT_KINDS,
    LinearizableActivation,
    activation_calls,
)
from slimmer.folding.merge import merge_convs, merge_linears, merge_refusal
from slimmer.graph.capture import CapturedGraph, op_name


def _single_user(node: fx.Node) -> bool:
    return len(node.users) == 1


def candidates(model: nn.Module, captured: CapturedGraph, gate: LatencyGate) -> tuple[dict[str, str], dict[str, str]]:
    """``({activation: "first -> second"}, {activation: why not})`` for the activations of ``captured``.

    Activations called as functions in a ``forward`` (not modules) cannot be wrapped and are listed
    with that reason.

    An activation qualifies when its input is ``first`` (through at most one BatchNorm), its only
    user is ``second``, every tensor between them has no other user, the rules allow merging
    ``first`` and ``second`` (border approximation accepted) and the gate accepts the merge.
    """
    counts = call_counts(captured)
    chosen: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for node, path, owner in activation_calls(model, captured):
        if isinstance(owner, LinearizableActivation):
            continue
        if path is None or not isinstance(owner, DEFAULT_KINDS):
            where = f"{path or '<root>'} ({type(owner).__name__}).forward: {node.name}"
            skipped[where] = f"{op_name(node)} is called inside a forward, not as an nn.Module: it cannot be linearized"
            continue
        reason = _why_not(model, captured, counts, node, path, gate)
        if isinstance(reason, str):
            skipped[path] = reason
        else:
            chosen[path] = f"{reason[0]} -> {reason[1]}"
    return chosen, skipped


def _why_not(model, captured, counts, node, path, gate) -> str | tuple[str, str]:
    if counts.get(path, 0) != 1:
        return "the activation module is called more than once"
    users = list(node.users)
    if len(users) != 1:
        return f"its output has {len(users)} users (a residual sum or a branch): no layer would merge"
    second = layer_of(captured, model, users[0])
    if second is None or users[0].args[0] is not node:
        return f"its output feeds {op_name(users[0])}, not a Conv/Linear layer"
    source = node.args[0]
    if not isinstance(source, fx.Node) or not _single_user(source):
        return "its input is also used elsewhere"
    if source.op == "call_function" and op_name(source) in BN_OPS:
        source = source.args[0]
        if not isinstance(source, fx.Node) or not _single_user(source):
            return "the BatchNorm's input is also used elsewhere"
    first = layer_of(captured, model, source)
    if first is None:
        return f"its input comes from {op_name(source) if source.op == 'call_function' else source.name}, not a layer"
    (first_path, first_layer), (second_path, second_layer) = first, second
    for layer_path in (first_path, second_path):
        if counts.get(layer_path, 0) != 1:
            return f"{layer_path} is called more than once"
    refusal = merge_refusal(first_layer, second_layer, allow_border_approx=True)
    if refusal:
        return f"{first_path} and {second_path} cannot merge: {refusal}"
    if isinstance(first_layer, nn.Linear):
        merged = merge_linears(first_layer, second_layer)
    else:
        merged = merge_convs(first_layer, second_layer, allow_border_approx=True)
    in_shape = tuple(source.args[0].meta["val"].shape) if isinstance(source.args[0], fx.Node) else ()
    refusal = gate(first_path, second_path, first_layer, second_layer, merged, in_shape)
    if refusal:
        return f"not linearized: {first_path} + {second_path}: {refusal}"
    return first_path, second_path


# ---------------------------------------------------------------- the phase
