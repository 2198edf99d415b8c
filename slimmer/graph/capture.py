"""Capture a model as an ATen graph with ``torch.export`` and name what its placeholders are.

Channel analysis needs a graph where every tensor operation is visible and every parameter is a
named input. ``torch.export.export(..., strict=False)`` gives exactly that for all torchvision
classifiers; its graph signature maps placeholders back to state-dict names and each node's
``nn_module_stack`` says which layer issued it. A model that cannot be exported is rejected with
:class:`~slimmer.errors.InputError`: there is no silent fallback to a weaker tracer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from slimmer.errors import InputError


@dataclass
class CapturedGraph:
    """An exported program plus the lookups channel analysis needs.

    ``parameters`` and ``buffers`` map placeholder names to state-dict names; ``constants`` lists
    placeholders of lifted tensor constants (tensors created in ``forward`` or kept as plain
    attributes, which surgery cannot slice); ``user_inputs`` are the model's tensor inputs.
    """

    program: torch.export.ExportedProgram
    parameters: dict[str, str]
    buffers: dict[str, str]
    constants: set[str] = field(default_factory=set)
    user_inputs: list[str] = field(default_factory=list)

    @property
    def graph(self) -> fx.Graph:
        return self.program.graph

    def state_name(self, node: fx.Node) -> str | None:
        """The parameter/buffer name a placeholder stands for, or None."""
        return self.parameters.get(node.name) or self.buffers.get(node.name)


def module_path(node: fx.Node) -> str:
    """The innermost module that issued ``node`` as ``path (Type)``, or the node name."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return node.name
    path, type_name = list(stack.values())[-1]
    type_short = str(type_name).rsplit(".", 1)[-1]
    return f"{path or '<root>'} ({type_short})"


def op_name(node: fx.Node) -> str:
    """A stable name for a node's operation: ``aten.conv2d.default``, ``getitem``, ..."""
    target = node.target
    if isinstance(target, str):
        return target
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def _summarize(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    head = lines[0] if lines else ""
    if len(head) > 240:
        head = head[:237] + "..."
    return f"{type(error).__name__}: {head}" if head else type(error).__name__


def capture(model: nn.Module, example_inputs: Sequence[Any]) -> CapturedGraph:
    """Export ``model`` in eval mode on ``example_inputs`` and index its graph signature.

    The model's training flag is restored afterwards. Raises :class:`InputError` (exit 3) with
    torch's reason in one line when the model cannot be captured.
    """
    was_training = model.training
    model.eval()
    try:
        program = torch.export.export(model, tuple(example_inputs), strict=False)
    except Exception as error:  # torch raises many unrelated types here
        raise InputError(
            f"cannot capture the model with torch.export: {_summarize(error)}",
            hint="channel pruning needs a graph; make forward() traceable or use --method unstructured",
        ) from error
    finally:
        model.train(was_training)
    signature = program.graph_signature
    constants = set(getattr(signature, "inputs_to_lifted_tensor_constants", {}) or {})
    return CapturedGraph(
        program=program,
        parameters=dict(signature.inputs_to_parameters),
        buffers=dict(signature.inputs_to_buffers),
        constants=constants,
        user_inputs=list(signature.user_inputs),
    )
