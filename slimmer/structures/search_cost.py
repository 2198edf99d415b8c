"""TAS's cost model and the derivation of the searched architecture (Dong & Yang, NeurIPS 2019).

Expected MACs: a Conv/Linear layer's MACs scale with the expected kept fraction of its weight along
each searched dimension, ``E[c_g] = Σ_k softmax(α_g)_k · c_k / C_g`` per group g
(:class:`~slimmer.graph.macs.MacsByWeight`), times P(depth ≥ block) from softmax(β) when the layer
is in a residual branch (:mod:`slimmer.structures.depth`); other MACs are constant.

Derivation: the argmax width of every group and the argmax depth of every stage. When that
architecture's counted MACs miss the target, above it or below ``target − band`` (a short search
has not settled; the official code keeps whatever the argmax gives), one choice moves one candidate
at a time, each time the choice whose neighbouring candidate has the highest probability: down until
the counted MACs meet the target, then up while they stay within it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimmer.errors import InputError
from slimmer.graph.macs import MacsByWeight, count_macs, counting_copy
from slimmer.structures.depth import DepthSite, ResidualBlock, drop_blocks
from slimmer.structures.plan import PruningPlan
from slimmer.surgery import remove_channels

if TYPE_CHECKING:
    from slimmer.structures.search import SearchConfig, _Site


@dataclass
class SearchResult:
    """What the search found: widths per group, depths per stage, expected and final MACs (fractions
    of the dense MACs at batch 1), and the blocks whose branch is dropped."""

    widths: dict[str, int]
    channels: dict[str, int]
    probabilities: dict[str, list[float]]
    expected_macs: float
    argmax_macs: float
    final_macs: float
    lowered: int
    raised: int
    depths: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[ResidualBlock] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["dropped"] = [b.as_dict() for b in self.dropped]
        return out


class Cost:
    """Expected MACs as a differentiable function of each group's kept fraction and each block's
    P(depth ≥ block); the counted MACs of a derived architecture on a ``meta`` copy."""

    def __init__(
        self, model: nn.Module, example_inputs: Sequence[Any], sites: list[_Site], depth: list[DepthSite]
    ) -> None:
        # meta when the forward runs there, else a real copy (a Hugging Face model reads mask values with .item())
        self.meta_model, self.meta_inputs = counting_copy(model, example_inputs)
        counts = MacsByWeight(self.meta_model, self.meta_inputs)
        self.total = float(counts.total)
        if self.total <= 0:
            raise InputError("the model's MACs count 0: there is no MACs target to search for")
        self.depth = depth
        block_of = {p: (d, i) for d, ds in enumerate(depth) for i, b in enumerate(ds.stage.blocks) for p in b.params}
        # per weight: (macs, [(dim, size, [(site index, positions in that site)])], (stage, block) or None)
        self.terms: list[tuple[float, list[tuple[int, int, list[tuple[int, int]]]], tuple[int, int] | None]] = []
        variable = 0.0
        for name, (macs, shape) in counts.weights.items():
            dims: dict[int, list[tuple[int, int]]] = {}
            for s, site in enumerate(sites):
                for member in site.group.members:
                    if member.name == name:
                        dims.setdefault(member.dim, []).append((s, sum(len(p) for p in member.indices)))
            if dims or name in block_of:
                self.terms.append(
                    (float(macs), [(d, shape[d], parts) for d, parts in dims.items()], block_of.get(name))
                )
                variable += macs
        self.constant = self.total - variable

    def fraction(self, kept: list[torch.Tensor], keep: list[torch.Tensor] | None = None) -> torch.Tensor:
        """MACs / dense MACs when width site s keeps the fraction ``kept[s]`` of its channels and
        block i of stage d runs with probability ``keep[d][i]`` (all blocks when None)."""
        macs = torch.tensor(self.constant)
        for weight_macs, dims, block in self.terms:
            factor = torch.tensor(1.0)
            for _, size, parts in dims:
                covered = sum(n for _, n in parts)
                factor = factor * (size - covered + sum(kept[s] * n for s, n in parts)) / size
            if block is not None and keep is not None:
                factor = factor * keep[block[0]][block[1]]
            macs = macs + weight_macs * factor
        return macs / self.total

    def counted(self, plan: PruningPlan, dropped: Sequence[ResidualBlock] = ()) -> float:
        """Counted MACs / dense MACs of the model with ``plan``'s channels removed and ``dropped`` gone."""
        pruned = remove_channels(copy.deepcopy(self.meta_model), plan)
        if dropped:
            pruned = drop_blocks(pruned, dropped)
        return count_macs(pruned, self.meta_inputs) / self.total


def expected_macs(sites: list[_Site], cost: Cost) -> torch.Tensor:
    """E[MACs]/dense from the softmax over each group's widths and each stage's depths (not a Gumbel sample)."""
    kept = [s.expected_width() / s.group.channels for s in sites]
    return cost.fraction(kept, [d.keep_probabilities() for d in cost.depth])


def argmax_macs(sites: list[_Site], cost: Cost) -> float:
    """The surrogate's MACs fraction of the argmax architecture (no gradient)."""
    with torch.no_grad():
        kept = [torch.tensor(s.argmax_width() / s.group.channels) for s in sites]
        keep = [d.reaches[d.depths.index(d.argmax_depth())] for d in cost.depth]
        return float(cost.fraction(kept, keep))


def derive(
    sites: list[_Site], cost: Cost, config: SearchConfig, history: list[dict[str, float]], make_plan: Any
) -> tuple[PruningPlan, SearchResult]:
    """The argmax architecture moved into [target − band, target] (see the module docstring):
    ``make_plan(widths)`` builds the bound plan of the given widths (one per site)."""
    depth = cost.depth
    with torch.no_grad():
        expected = float(expected_macs(sites, cost))
        probs = [torch.softmax(c.logits, 0) for c in [*sites, *depth]]
    cands = [s.widths for s in sites] + [d.depths for d in depth]
    index = [int(p.argmax()) for p in probs]
    n = len(sites)

    def build(idx: list[int]) -> tuple[PruningPlan, list[ResidualBlock], float]:
        plan = make_plan([cands[i][k] for i, k in enumerate(idx[:n])])
        dropped = [b for d, k in zip(depth, idx[n:], strict=True) for b in d.stage.blocks[d.depths[k] :]]
        return plan, dropped, cost.counted(plan, dropped)

    plan, dropped, final = build(index)
    argmax, lowered, raised = final, 0, 0
    while final > config.macs_target:
        options = [(float(probs[i][k - 1]), i) for i, k in enumerate(index) if k > 0]
        if not options:
            plan.notes.append(f"MACs target {config.macs_target:g} not reached: every choice is at its smallest")
            break
        index[max(options)[1]] -= 1
        lowered += 1
        plan, dropped, final = build(index)
    blocked: set[int] = set()  # choices whose next larger candidate would overshoot the target
    while final < config.macs_target - config.band:
        options = [(float(probs[i][k + 1]), i) for i, k in enumerate(index) if k + 1 < len(cands[i])]
        options = [o for o in options if o[1] not in blocked]
        if not options:
            break
        i = max(options)[1]
        trial = [k + (j == i) for j, k in enumerate(index)]
        t_plan, t_dropped, macs = build(trial)
        if macs > config.macs_target:
            blocked.add(i)
            continue
        index, raised = trial, raised + 1
        plan, dropped, final = t_plan, t_dropped, macs
    plan.macs_before = int(cost.total)
    plan.macs_after = int(round(final * cost.total))
    if dropped:
        plan.notes.append(
            f"depth searched: {len(dropped)} residual blocks dropped (" + ", ".join(b.label for b in dropped) + "); "
            "this plan records the channels only"
        )
    result = SearchResult(
        widths={s.group.id: cands[i][index[i]] for i, s in enumerate(sites)},
        channels={s.group.id: s.group.channels for s in sites},
        probabilities={s.group.id: [round(float(v), 4) for v in p] for s, p in zip(sites, probs, strict=False)},
        expected_macs=expected,
        argmax_macs=argmax,
        final_macs=final,
        lowered=lowered,
        raised=raised,
        depths=[
            {
                "blocks": [b.label for b in d.stage.blocks],
                "depth": d.depths[index[n + j]],
                "probabilities": [round(float(v), 4) for v in probs[n + j]],
            }
            for j, d in enumerate(depth)
        ],
        dropped=dropped,
        history=history,
    )
    return plan, result
