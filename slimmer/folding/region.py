"""Collapse a whole linear region — convolutions, BatchNorms, identities and residual sums — into one conv.

Layer Folding (Ben Dror et al., BMVC 2022, arXiv 2106.09309) merges what linearization leaves
linear, and puts a ResNet's skip connection into the centre of the merged kernel. Pairwise rules
(:mod:`slimmer.folding.merge`) cover a chain of two layers; a residual block whose inner activation
became the identity is a *graph*: ``y = conv2(conv1(x)) + x``, and with the activation before the
block linear too, ``x`` is itself a conv of the block's input. Any such region — one input tensor
``X``, one output tensor ``Y``, in between only stride-1 "same"-padded convolutions (any groups),
BatchNorm in eval mode, identities and sums of two region tensors — is an affine, translation-
equivariant map away from the border, i.e. one convolution with kernel ``2R + 1`` (``R`` the sum of
kernel radii along the longest path) and padding ``R``.

The merged kernel is read off the region itself rather than composed rule by rule: run the region
(float64, eval mode) on a zero image to get the bias, then on one impulse per input channel at the
centre of a ``4R + 1`` image (every output within ``R`` of the impulse is then an interior pixel,
untouched by zero padding); the response, flipped, is the kernel. Identity skips land in the kernel
centre by construction, sums of branches add their kernels. Like the paper's pairwise merge, the
result equals the region exactly on the interior and approximately on a border of ``R`` pixels
(inner zero padding is not a linear function of the input); the fine-tune after folding absorbs it.

When does it pay? Collapsing costs ``C_in·C_out·(2R+1)²`` MACs per pixel, so it pays where the
region's input has few channels: the stem of an image model. On resnet20-fmnist the stem and the
first block (1 → 16 → 16 → 16 channels, 4752 MACs per pixel) become one 7×7 conv from the image
(784 MACs per pixel); the whole first stage one 15×15 conv. :func:`plan` finds, for every tensor,
the region with the largest MAC saving (:data:`MAX_COST_RATIO`), treating activations as linear
when ``hypothetical`` (that is how the folding phase chooses which activations to linearize), and
:func:`collapse` rewrites the model as an ``fx.GraphModule`` once they are linear.

Not covered: strided or dilated convolutions and non-"same" padding inside a region (the output
grid would differ from the input's), concatenations, and models ``torch.fx`` cannot trace.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from slimmer.folding.fxtrace import traced
from slimmer.folding.linearize import DEFAULT_KINDS, LinearizableActivation

# Collapse a region only when the merged conv (plus what must stay for other users) costs at most
# this share of the region's MACs. MACs are an estimate of time; the phase's latency gate measures.
MAX_COST_RATIO = 0.75
# Relative tolerance of the interior check (float32 merged conv against the region).
CHECK_RTOL = 1e-4
ADD_OPS = {operator.add, torch.add}
NEUTRAL = (nn.Identity, nn.Dropout, nn.Dropout2d)


@dataclass
class Region:
    """A linear region from ``source`` to ``output`` of a traced graph, and what collapsing it costs."""

    source: fx.Node
    output: fx.Node
    nodes: list[fx.Node]
    radius: int
    in_channels: int
    out_channels: int
    macs_before: int
    macs_after: int
    activations: list[str] = field(default_factory=list)

    @property
    def kernel(self) -> int:
        return 2 * self.radius + 1

    @property
    def saving(self) -> int:
        return self.macs_before - self.macs_after

    def layers(self, gm: fx.GraphModule) -> list[str]:
        return [str(n.target) for n in self.nodes if n.op == "call_module" and isinstance(_module(gm, n), nn.Conv2d)]

    def describe(self, gm: fx.GraphModule) -> dict[str, Any]:
        layers = self.layers(gm)
        return {
            "from": self.source.name,
            "to": self.output.name,
            "layers": layers,
            "into": f"{self.kernel}x{self.kernel} conv, {self.in_channels} -> {self.out_channels} channels",
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
        }


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module:
    return gm.get_submodule(str(node.target))


def _same_conv_radius(conv: nn.Conv2d) -> int | None:
    """The kernel radius of a stride-1, undilated, zero-padded "same" conv with an odd square kernel."""
    k = conv.kernel_size
    if (
        conv.stride != (1, 1)
        or conv.dilation != (1, 1)
        or conv.padding_mode != "zeros"
        or k[0] != k[1]
        or k[0] % 2 == 0
    ):
        return None
    r = k[0] // 2
    if conv.padding != "same" and tuple(conv.padding) != (r, r):
        return None
    return r


def _linear_radius(gm: fx.GraphModule, node: fx.Node, hypothetical: bool, protected: frozenset[str]) -> int | None:
    """The radius ``node`` adds when it is linear (0 for BN, identities, sums), None when it is not."""
    if node.op == "call_function":
        if node.target in ADD_OPS and len(node.args) == 2 and not node.kwargs:
            return 0 if all(isinstance(a, fx.Node) for a in node.args) else None
        return None
    if node.op != "call_module":
        return None
    module = _module(gm, node)
    if isinstance(module, nn.Conv2d):
        return None if str(node.target) in protected else _same_conv_radius(module)
    if isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
        return 0
    if isinstance(module, NEUTRAL):
        return 0
    if isinstance(module, LinearizableActivation):
        return 0 if hypothetical or module.value >= 1.0 else None
    if hypothetical and isinstance(module, DEFAULT_KINDS):
        return 0
    return None


def _conv_macs(gm: fx.GraphModule, node: fx.Node) -> int:
    if node.op != "call_module":
        return 0
    module = _module(gm, node)
    if not isinstance(module, nn.Conv2d):
        return 0
    out = node.meta["tensor_meta"].shape
    return int(out[1] * out[2] * out[3] * module.weight[0].numel())


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _call_counts(gm: fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[str(node.target)] = counts.get(str(node.target), 0) + 1
    return counts


def _ancestors(output: fx.Node, members: set[fx.Node]) -> set[fx.Node]:
    seen, todo = set(), [output]
    while todo:
        node = todo.pop()
        if node in seen or node not in members:
            continue
        seen.add(node)
        todo.extend(node.all_input_nodes)
    return seen


def _best_from(gm, source, hypothetical, protected, counts) -> Region | None:
    """The region starting at ``source`` with the largest MAC saving within :data:`MAX_COST_RATIO`."""
    shape = _shape(source)
    if shape is None or len(shape) != 4:
        return None
    radius: dict[fx.Node, int] = {source: 0}
    order: list[fx.Node] = []
    for node in gm.graph.nodes:
        if node is source or node.op in ("placeholder", "output", "get_attr"):
            continue
        inputs = node.all_input_nodes
        if not inputs or any(a not in radius for a in inputs):
            continue
        if node.op == "call_module" and counts.get(str(node.target), 0) != 1:
            continue  # a module called twice cannot be removed with one of its calls
        step = _linear_radius(gm, node, hypothetical, protected)
        if step is None or _shape(node) is None or _shape(node)[2:] != shape[2:]:
            continue
        radius[node] = max(radius[a] for a in inputs) + step
        order.append(node)
    members = set(order)
    best: Region | None = None
    for output in order:
        if output.op == "call_module" and isinstance(_module(gm, output), (*DEFAULT_KINDS, LinearizableActivation)):
            continue  # a region never ends on an activation: linearizing it would gain nothing
        inside = _ancestors(output, members)
        # what other users still need is computed as before: it and its ancestors stay
        kept = set()
        for node in inside - {output}:
            if any(u not in inside for u in node.users):
                kept |= _ancestors(node, inside)
        before = sum(_conv_macs(gm, n) for n in inside)
        out_shape = _shape(output)
        r = radius[output]
        merged = out_shape[1] * out_shape[2] * out_shape[3] * shape[1] * (2 * r + 1) ** 2
        after = merged + sum(_conv_macs(gm, n) for n in kept)
        if before == 0 or after > MAX_COST_RATIO * before:
            continue
        if best is None or before - after > best.saving:
            nodes = [n for n in order if n in inside]
            acts = [
                str(n.target)
                for n in nodes
                if n.op == "call_module" and isinstance(_module(gm, n), (*DEFAULT_KINDS, LinearizableActivation))
            ]
            best = Region(source, output, nodes, r, shape[1], out_shape[1], before, after, acts)
    return best


def find_regions(
    gm: fx.GraphModule, example: tuple[Any, ...], *, hypothetical: bool = False, protected: Iterable[str] = ()
) -> list[Region]:
    """Disjoint regions of ``gm`` worth collapsing, largest MAC saving first.

    With ``hypothetical`` every activation module (ReLU, ReLU6, LeakyReLU, GELU, σ_α) counts as
    linear: the regions that linearizing them would open. ``protected`` conv paths never join one.
    """
    was_training = gm.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(*example)
    gm.train(was_training)
    counts = _call_counts(gm)
    frozen = frozenset(protected)
    found = [
        r
        for node in gm.graph.nodes
        if node.op not in ("output", "get_attr")
        for r in [_best_from(gm, node, hypothetical, frozen, counts)]
        if r is not None
    ]
    chosen: list[Region] = []
    used: set[fx.Node] = set()
    for region in sorted(found, key=lambda r: r.saving, reverse=True):
        if used.isdisjoint(region.nodes) and region.source not in used:
            chosen.append(region)
            used |= set(region.nodes)
    return chosen


def _region_module(gm: fx.GraphModule, region: Region) -> fx.GraphModule:
    """The region alone as a GraphModule ``X -> Y`` (sharing ``gm``'s submodules)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {region.source: graph.placeholder("x")}
    for node in region.nodes:
        env[node] = graph.node_copy(node, lambda a: env[a])
    graph.output(env[region.output])
    return fx.GraphModule(gm, graph)


def probe_conv(region_fn: Callable[[torch.Tensor], torch.Tensor], in_channels: int, radius: int) -> nn.Conv2d:
    """The conv equal to the affine, translation-equivariant ``region_fn`` away from the border.

    ``region_fn`` maps ``(N, in_channels, S, S)`` float64 to ``(N, C_out, S, S)``. Bias: the
    response to zeros at the centre; kernel: the response to a centred impulse, flipped.
    """
    size = 4 * radius + 1
    c = 2 * radius
    with torch.no_grad():
        base = region_fn(torch.zeros(1, in_channels, size, size, dtype=torch.float64))
        impulses = torch.zeros(in_channels, in_channels, size, size, dtype=torch.float64)
        impulses[torch.arange(in_channels), torch.arange(in_channels), c, c] = 1.0
        response = region_fn(impulses) - base
    window = response[:, :, c - radius : c + radius + 1, c - radius : c + radius + 1]
    kernel = window.flip(2, 3).transpose(0, 1)  # (C_out, C_in, k, k)
    conv = nn.Conv2d(in_channels, kernel.shape[0], 2 * radius + 1, padding=radius, bias=True)
    with torch.no_grad():
        conv.weight.copy_(kernel)
        conv.bias.copy_(base[0, :, c, c])
    return conv


def merged_conv(gm: fx.GraphModule, region: Region) -> nn.Conv2d:
    """Read the region's conv off the region itself (float64, eval mode), checked on the interior."""
    sub = copy.deepcopy(_region_module(gm, region)).double().eval()
    conv = probe_conv(sub, region.in_channels, region.radius)
    shape = _shape(region.source)
    h, w = shape[2], shape[3]
    r = region.radius
    if h > 2 * r and w > 2 * r:
        x = torch.randn(2, region.in_channels, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            want = sub(x)[..., r : h - r, r : w - r]
            got = conv.double()(x)[..., r : h - r, r : w - r]
        err = float((got - want).abs().max())
        scale = max(float(want.abs().max()), 1.0)
        if err > CHECK_RTOL * scale:
            raise ValueError(
                f"the region {region.source.name} -> {region.output.name} is not linear (max diff {err:.3g})"
            )
    param = next(iter(gm.parameters()), None)
    return conv.to(
        dtype=param.dtype if param is not None else torch.float32, device=param.device if param is not None else "cpu"
    )


def replace_region(gm: fx.GraphModule, region: Region, conv: nn.Conv2d, name: str) -> None:
    """Rewrite ``gm`` in place: ``Y`` becomes ``conv(X)``; what nobody uses any more goes."""
    gm.add_submodule(name, conv)
    with gm.graph.inserting_after(region.source):
        node = gm.graph.call_module(name, (region.source,))
    region.output.replace_all_uses_with(node)
    for old in reversed(region.nodes):
        if not old.users:
            gm.graph.erase_node(old)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


Accept = Callable[[fx.GraphModule, "Region", nn.Conv2d], "str | None"]


def plan(
    model: nn.Module, example: tuple[Any, ...], protected: Iterable[str] = (), accept: Accept | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """``(planned, refused, why not traced)``: the regions linearizing activations would open.

    Each planned region's description carries ``activations``, the module paths to linearize.
    ``accept`` judges each with a conv of the merged shape (latency depends on shapes only).
    """
    gm, why = traced(model, example)
    if why:
        return [], [], why
    planned, refused = [], []
    for r in find_regions(gm, example, hypothetical=True, protected=protected):
        if not r.activations:
            continue  # already linear: collapse() takes it at fold time
        shaped = nn.Conv2d(r.in_channels, r.out_channels, r.kernel, padding=r.radius)
        reason = accept(gm, r, shaped) if accept is not None else None
        described = {**r.describe(gm), "activations": r.activations}
        if reason:
            refused.append({**described, "reason": reason})
        else:
            planned.append(described)
    return planned, refused, None


@dataclass
class CollapseReport:
    """What :func:`collapse` did: regions collapsed and refused (with the reason)."""

    collapsed: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None


def collapse(
    model: nn.Module,
    example: tuple[Any, ...],
    *,
    protected: Iterable[str] = (),
    accept: Accept | None = None,
    max_rounds: int = 16,
) -> tuple[nn.Module, CollapseReport]:
    """Collapse every linear region of ``model`` worth it; returns ``(model or its GraphModule, report)``.

    ``model`` itself is returned unchanged when nothing collapses (or it cannot be traced);
    otherwise a traced ``fx.GraphModule`` sharing its remaining submodules. ``accept(gm, region,
    conv)`` may refuse a region by returning the reason (the phase's latency gate).
    """
    report = CollapseReport()
    gm, why = traced(model, example)
    if why:
        report.note = why
        return model, report
    refused: set[tuple[str, str]] = set()
    for _ in range(max_rounds):
        regions = [
            r for r in find_regions(gm, example, protected=protected) if (r.source.name, r.output.name) not in refused
        ]
        if not regions:
            break
        region = regions[0]
        described = region.describe(gm)
        try:
            conv = merged_conv(gm, region)
        except ValueError as exc:
            reason: str | None = str(exc)
        else:
            reason = accept(gm, region, conv) if accept is not None else None
        if reason:
            refused.add((region.source.name, region.output.name))
            report.refused.append({**described, "reason": reason})
            continue
        name = f"folded_{len(report.collapsed)}"
        replace_region(gm, region, conv, name)
        report.collapsed.append({**described, "module": name})
    return (gm if report.collapsed else model), report
