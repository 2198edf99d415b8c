"""Depth candidates of TAS: residual blocks whose branch can be dropped, found on any traceable model.

Dong and Yang, "Network Pruning via Transformable Architecture Search", NeurIPS 2019 (official code:
D-X-Y/AutoDL-Projects, ``xautodl/models/shape_searchs``). The paper searches the number of blocks of
each ResNet stage; here a *block* is any identity-shortcut ``add`` of the model's torch.fx graph:

- one operand ``s'`` is the shortcut: a node ``s``, possibly through ``nn.Identity`` calls;
- the other operand ``b`` is the end of the *branch*: the nodes that descend from ``s`` and lead to
  ``b``; none of them is used outside the branch, at least one holds parameters;
- ``s``, ``b`` and the sum have the same shape (no broadcasting).

Dropping the block replaces the sum by ``s'`` and deletes the branch: the block computes the
shortcut only. A projection shortcut (1×1 conv) is not an identity, so that block is never dropped,
as the paper keeps the first block of every stage. A *stage* is a run of blocks in which each
block's shortcut is the previous block's sum (through single-input nodes such as a ReLU); its depth
candidates are 0 … n kept blocks, a kept depth d keeping the first d, with logits β ~ N(0, 0.01²).

Search forward: two depths are drawn by the Gumbel-top-2 trick and weighted by the softmax of their
perturbed logits, like the widths (:mod:`slimmer.structures.search`); block i's branch output is
multiplied by the sampled P(depth ≥ i) = Σ_{d ≥ i} ŝ_d (1 for blocks both depths keep, the deeper
one's weight for blocks only it keeps, 0 beyond). The paper sums the stage's outputs after each
candidate depth instead; weighting the branches is the same mask idea as the widths' prefix masks
and keeps the graph a fixed shape. The expected MACs weight each branch layer by the softmax's
P(depth ≥ i) (the official code's reverse cumulative sum).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from slimmer.folding.fxtrace import trace, traced

_ADDS = (operator.add, operator.iadd, torch.add)


@dataclass(frozen=True)
class ResidualBlock:
    """One droppable block: fx node names of its sum and of the sum's operands, and its branch."""

    add: str
    shortcut: str  # the operand kept when the block is dropped (the shortcut, through Identity calls)
    branch_out: str
    branch: tuple[str, ...]  # the branch's node names in graph order
    modules: tuple[str, ...]  # qualified names of the modules the branch calls
    params: tuple[str, ...]  # parameter names the branch uses

    @property
    def label(self) -> str:
        """The modules' common qualified-name prefix (e.g. ``layer1.1``), else the sum's node name."""
        parts = [m.split(".") for m in self.modules]
        common = []
        for level in zip(*parts, strict=False):
            if len(set(level)) != 1:
                break
            common.append(level[0])
        return ".".join(common) or self.add

    def as_dict(self) -> dict[str, Any]:
        return {"block": self.label, "add": self.add, "modules": list(self.modules)}


@dataclass(frozen=True)
class Stage:
    """Consecutive droppable blocks; depth d keeps the first d."""

    blocks: tuple[ResidualBlock, ...]

    @property
    def depths(self) -> list[int]:
        return list(range(len(self.blocks) + 1))


def _ancestors(gm: fx.GraphModule) -> dict[fx.Node, frozenset[fx.Node]]:
    """Every node's ancestors (the nodes it depends on), computed once in graph order."""
    out: dict[fx.Node, frozenset[fx.Node]] = {}
    for node in gm.graph.nodes:
        out[node] = frozenset().union(*(out[i] | {i} for i in node.all_input_nodes))
    return out


def _through_identity(node: fx.Node, gm: fx.GraphModule) -> fx.Node:
    while node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.Identity):
        node = node.all_input_nodes[0]
    return node


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _block(
    gm: fx.GraphModule, anc: dict[fx.Node, frozenset[fx.Node]], add: fx.Node, kept: fx.Node, out: fx.Node
) -> ResidualBlock | None:
    """The block when ``kept`` is the shortcut operand and ``out`` the branch's end, else None."""
    s = _through_identity(kept, gm)
    if s not in anc[out]:
        return None
    branch = [n for n in anc[out] | {out} if n is not s and s in anc[n]]
    inside = set(branch) | {add}
    if any(u not in inside for n in branch for u in n.users):
        return None
    if not (_shape(s) is not None and _shape(s) == _shape(out) == _shape(add)):
        return None
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    branch.sort(key=order.__getitem__)
    modules = tuple(str(n.target) for n in branch if n.op == "call_module")
    params = [f"{m}.{p}" for m in modules for p, _ in gm.get_submodule(m).named_parameters()]
    params += [str(n.target) for n in branch if n.op == "get_attr"]
    if not params:
        return None
    names = tuple(n.name for n in branch)
    return ResidualBlock(add.name, kept.name, out.name, names, modules, tuple(params))


def _is_add(node: fx.Node) -> bool:
    plain = node.op == "call_function" and node.target in _ADDS
    method = node.op == "call_method" and node.target in ("add", "add_")
    return (
        (plain or method) and len(node.args) == 2 and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args)
    )


def find_stages(model: nn.Module, example: Sequence[Any]) -> tuple[list[Stage], str | None]:
    """The droppable residual blocks of ``model`` grouped into stages, and why there are none when
    the model cannot be traced (None otherwise). ``model`` is not changed (a copy is traced, in eval)."""
    work = copy.deepcopy(model).eval()
    gm, why = traced(work, tuple(example))
    if gm is None or why is not None:
        return [], why
    with torch.no_grad():
        ShapeProp(gm).propagate(*example)
    blocks: list[ResidualBlock] = []
    anc = _ancestors(gm)
    for node in gm.graph.nodes:
        if _is_add(node):
            a, b = node.args
            found = _block(gm, anc, node, a, b) or _block(gm, anc, node, b, a)
            if found is not None:
                blocks.append(found)
    nodes = {n.name: n for n in gm.graph.nodes}
    stages: list[list[ResidualBlock]] = []
    for block in blocks:
        if stages and _follows(nodes[stages[-1][-1].add], nodes[block.shortcut], gm):
            stages[-1].append(block)
        else:
            stages.append([block])
    return [Stage(tuple(s)) for s in stages], None


def _follows(previous_add: fx.Node, shortcut: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether ``shortcut`` is ``previous_add`` through at most 4 single-input nodes (e.g. a ReLU)."""
    node = _through_identity(shortcut, gm)
    for _ in range(5):
        if node is previous_add:
            return True
        if len(node.all_input_nodes) != 1:
            return False
        node = node.all_input_nodes[0]
    return False


class DepthGate(nn.Module):
    """Multiplies a branch's output by ``value`` (a scalar tensor set before each forward; None: 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.value is None else x * self.value


def gated(model: nn.Module, blocks: Sequence[ResidualBlock]) -> tuple[fx.GraphModule, list[DepthGate]]:
    """``model`` traced (sharing its modules and parameters, same parameter names) with a
    :class:`DepthGate` on each block's branch output; the gates in the order of ``blocks``."""
    gm = trace(model)
    nodes = {n.name: n for n in gm.graph.nodes}
    gates = []
    for k, block in enumerate(blocks):
        name = f"slimmer_depth_gate_{k}"
        gate = DepthGate()
        gm.add_submodule(name, gate)
        out, add = nodes[block.branch_out], nodes[block.add]
        with gm.graph.inserting_after(out):
            scaled = gm.graph.call_module(name, (out,))
        add.replace_input_with(out, scaled)
        gates.append(gate)
    gm.recompile()
    return gm, gates


def masked_original(model: nn.Module, dropped: Sequence[ResidualBlock]) -> fx.GraphModule:
    """``model`` with the branch outputs of ``dropped`` multiplied by 0 (what dropping must equal)."""
    gm, gates = gated(model, dropped)
    for gate in gates:
        gate.value = torch.zeros(())
    return gm


def drop_blocks(model: nn.Module, dropped: Sequence[ResidualBlock]) -> fx.GraphModule:
    """``model`` as a GraphModule in which each dropped block's sum is its shortcut operand and its
    branch (nodes and now unused modules) is gone. Shares the kept modules with ``model``."""
    gm = trace(model)
    nodes = {n.name: n for n in gm.graph.nodes}
    for block in dropped:
        add = nodes[block.add]
        add.replace_all_uses_with(nodes[block.shortcut])
        gm.graph.erase_node(add)
        for name in reversed(block.branch):
            gm.graph.erase_node(nodes[name])
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


class DepthSite:
    """One searched stage: depth logits, the Gumbel-top-2 gates and P(depth ≥ block)."""

    def __init__(self, stage: Stage, gen: torch.Generator) -> None:
        self.stage = stage
        self.depths = stage.depths
        self.logits = nn.Parameter(torch.randn(len(self.depths), generator=gen) * 0.01)
        # reaches[d, i] = 1 when depth d keeps block i (0-based: d > i)
        self.reaches = (torch.tensor(self.depths).unsqueeze(1) > torch.arange(len(stage.blocks))).float()

    def soft_gates(self, tau: float, gen: torch.Generator) -> torch.Tensor:
        """Per-block gate (blocks,): the sampled P(depth ≥ block), differentiable in the logits."""
        u = torch.rand(len(self.depths), generator=gen).clamp(1e-10, 1 - 1e-10)
        perturbed = (F.log_softmax(self.logits, 0) - torch.log(-torch.log(u))) / tau
        top = torch.topk(perturbed.detach(), 2).indices
        return F.softmax(perturbed[top], 0) @ self.reaches[top]

    def keep_probabilities(self) -> torch.Tensor:
        """P(depth ≥ block) under softmax(β), per block (blocks,)."""
        return F.softmax(self.logits, 0) @ self.reaches

    def argmax_depth(self) -> int:
        return self.depths[int(self.logits.argmax())]
