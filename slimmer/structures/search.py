"""Width and depth search under a MACs target: the search core of TAS.

Dong and Yang, "Network Pruning via Transformable Architecture Search", NeurIPS 2019 (official code:
D-X-Y/AutoDL-Projects, ``exps/TAS`` and ``xautodl/models/shape_searchs``).

Every prunable :class:`~slimmer.graph.groups.ChannelGroup` gets width candidates: the ratios
``config.ratios`` (0.3 … 1.0) of its channels, rounded to a multiple of ``round_to``, deduplicated,
with architecture logits α initialised N(0, 0.01²). Channels are ordered once by a channel criterion
(:func:`~slimmer.structures.channel.group_scores`), so candidate width c keeps the c most important
channels: a prefix of that order.

Search forward pass. Per group, two candidates are drawn without replacement by the Gumbel-top-2
trick on ``(log_softmax(α) + G)/τ`` and weighted by the softmax of their perturbed logits
(renormalised over the two). The candidates' prefix masks, so weighted, give one soft mask per
channel (1 on the prefix both share, the larger candidate's weight on the channels only it keeps,
0 beyond). The mask multiplies the channel's output where the group's channels are produced: the
γ and β of the group's BatchNorms (so a masked channel's normalised output is scaled, and at mask
0 it is exactly 0, as when the channel is removed), or, in a group without BatchNorm, the output
rows and bias of its Conv/Linear producers. Parameters are substituted with
:func:`torch.func.functional_call`; the model keeps its fixed width.

Relation to the paper. TAS computes each candidate's output as the first c channels of the full
convolution, normalises it with that candidate's own BatchNorm, aligns candidates of different
widths by channel-wise interpolation (CWI: adaptive average pooling along channels to the largest
width) and sums them with the sampled weights. On a fixed-width graph the prefix mask does the
alignment by zero-padding instead of interpolation: the channels a candidate lacks contribute 0,
so no interpolation (and no shape change) is needed, and any graph the engine can group can be
searched, not only ResNets. One BatchNorm is shared by all candidates of a group (the shared
statistics are those of the unmasked channels, which is what the pruned network inherits); the
per-candidate BatchNorms of the paper exist to keep statistics of the *interpolated* features apart,
which a mask never produces.

Depth. Residual blocks whose branch can be dropped are searched per stage
(:mod:`slimmer.structures.depth`): in the search forward each branch output is multiplied by the
sampled P(depth ≥ block) (a :class:`~slimmer.structures.depth.DepthGate` in a torch.fx trace of
the model); ``SearchConfig.depth`` False, or a model torch.fx cannot trace, searches widths only.

Cost. The expected MACs from the softmax, not the Gumbel sample (:mod:`slimmer.structures.search_cost`).
The cost loss is the official code's: ``+log E[MACs]`` when the argmax architecture's MACs exceed the
target, ``−log E[MACs]`` when they are below ``target − band`` (fractions of the dense MACs), 0
inside the band; the architecture loss is ``CE(val) + cost_weight · cost`` (λ = 2).

Bi-level optimisation: alternate a weight step (SGD Nesterov on a *copy* of the model, on
``train_batches``) and an architecture step (Adam lr 1e-3, betas (0.5, 0.999), weight decay 1e-3
on the logits, on ``val_batches``); τ follows a cosine from 5 to 0.1 over ``steps``. The argmax
widths and depths become a :class:`~slimmer.structures.plan.PruningPlan` and a list of dropped
blocks, moved into [target − band, target] when the argmax misses it
(:func:`~slimmer.structures.search_cost.derive`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from slimmer.errors import ConfigError, InputError
from slimmer.graph.groups import ChannelGroup, GroupSet
from slimmer.outputs import logits_of
from slimmer.structures.channel import SCORE_KINDS, group_scores
from slimmer.structures.depth import DepthSite, find_stages, gated
from slimmer.structures.plan import PlannedGroup, PruningPlan
from slimmer.structures.search_cost import Cost, SearchResult, argmax_macs, derive, expected_macs

Batch = tuple[torch.Tensor, torch.Tensor]
RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class SearchConfig:
    """Options of :func:`search_plan`; validated on construction (:class:`ConfigError`)."""

    macs_target: float
    steps: int = 200
    ratios: tuple[float, ...] = RATIOS
    round_to: int = 1
    criterion: str = "l1"
    weight_lr: float = 0.01
    weight_decay: float = 5e-4
    arch_lr: float = 1e-3
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    tau_max: float = 5.0
    tau_min: float = 0.1
    cost_weight: float = 2.0
    band: float = 0.05
    seed: int = 0
    depth: bool = True  # search the depth of residual stages too
    output_name: str | None = None  # the output leaf read as logits (slimmer.outputs.logits_of)

    def __post_init__(self) -> None:
        if not isinstance(self.macs_target, (int, float)) or not 0 < self.macs_target <= 1:
            raise ConfigError(f"--macs-target must be in (0, 1], got {self.macs_target!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"--search-steps must be an integer ≥ 1, got {self.steps!r}")
        if not self.ratios or any(not 0 < r <= 1 for r in self.ratios):
            raise ConfigError(f"width ratios must be in (0, 1], got {self.ratios!r}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"--round-to must be an integer ≥ 1, got {self.round_to!r}")
        if self.criterion not in SCORE_KINDS:
            choices = ", ".join(SCORE_KINDS)
            raise ConfigError(f"unknown channel criterion {self.criterion!r}; choose one of {choices}")
        positive = ("weight_lr", "arch_lr", "tau_max", "tau_min")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.tau_min > self.tau_max:
            raise ConfigError(f"tau_min {self.tau_min} exceeds tau_max {self.tau_max}")
        for name in ("weight_decay", "arch_weight_decay", "cost_weight", "band"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be ≥ 0, got {getattr(self, name)!r}")


def candidate_widths(channels: int, ratios: Sequence[float], round_to: int) -> list[int]:
    """Sorted distinct widths ``ratio·channels`` rounded to the nearest multiple of ``round_to``
    (at least one multiple, at most ``channels``); the full width is always a candidate."""
    out = {channels}
    for r in ratios:
        c = max(round_to, int(round(r * channels / round_to)) * round_to)
        out.add(min(channels, c))
    return sorted(out)


class _Site:
    """One searched group: candidates, logits, importance order and the tensors its mask scales."""

    def __init__(self, group: ChannelGroup, model: nn.Module, config: SearchConfig, gen: torch.Generator) -> None:
        self.group = group
        self.widths = candidate_widths(group.channels, config.ratios, config.round_to)
        self.logits = nn.Parameter(torch.randn(len(self.widths), generator=gen) * 0.01)
        scores = group_scores(group, model, config.criterion, config.seed)
        self.order = sorted(range(group.channels), key=lambda j: (-float(scores[j]), j))
        rank = torch.empty(group.channels, dtype=torch.long)
        rank[torch.tensor(self.order)] = torch.arange(group.channels)
        # prefix[k, j] = 1 when channel j is among the widths[k] most important
        self.prefix = (rank.unsqueeze(0) < torch.tensor(self.widths).unsqueeze(1)).float()
        self.masked = _masked_members(group, model)

    def soft_mask(self, tau: float, gen: torch.Generator) -> torch.Tensor:
        """Gumbel-top-2 sample → per-channel soft mask (channels,), differentiable in the logits."""
        if len(self.widths) == 1:
            return self.prefix[0]
        u = torch.rand(len(self.widths), generator=gen).clamp(1e-10, 1 - 1e-10)
        perturbed = (F.log_softmax(self.logits, 0) - torch.log(-torch.log(u))) / tau
        top = torch.topk(perturbed.detach(), 2).indices
        weights = F.softmax(perturbed[top], 0)
        return weights @ self.prefix[top]

    def expected_width(self) -> torch.Tensor:
        return F.softmax(self.logits, 0) @ torch.tensor(self.widths, dtype=torch.float32)

    def argmax_width(self) -> int:
        return self.widths[int(self.logits.argmax())]


def _masked_members(group: ChannelGroup, model: nn.Module) -> list[tuple[str, int, torch.Tensor]]:
    """(parameter, dim, channel of each position) of the tensors where the group's channels are
    produced: its BatchNorms' weight and bias, else its Conv/Linear producers' output rows and bias."""
    params = dict(model.named_parameters(remove_duplicate=False))
    modules = dict(model.named_modules())
    norms, producers = [], []
    for member in group.members:
        if member.name not in params:
            continue
        module = modules.get(member.module)
        leaf = member.name.rsplit(".", 1)[-1]
        channel_of = torch.empty(params[member.name].shape[member.dim], dtype=torch.long)
        channel_of.fill_(-1)
        for j, positions in enumerate(member.indices):
            channel_of[list(positions)] = j
        entry = (member.name, member.dim, channel_of)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and leaf in ("weight", "bias"):
            norms.append(entry)
        elif isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            out_dim = 1 if getattr(module, "transposed", False) and leaf == "weight" else 0
            if member.dim == out_dim:
                producers.append(entry)
    return norms or producers


def _effective(model_params: dict[str, torch.Tensor], sites: list[_Site], masks: list[torch.Tensor]) -> dict:
    out: dict[str, torch.Tensor] = {}
    for site, mask in zip(sites, masks, strict=False):
        for name, dim, channel_of in site.masked:
            base = out.get(name, model_params[name])
            scale = torch.where(channel_of >= 0, mask[channel_of.clamp(min=0)], torch.ones(()))
            shape = [1] * base.ndim
            shape[dim] = -1
            out[name] = base * scale.view(shape)
    return out


def search_space(
    model: nn.Module, example_inputs: Sequence[Any], groups: GroupSet, config: SearchConfig, gen: torch.Generator
) -> tuple[list[_Site], Cost]:
    """The searched groups (prunable, with a tensor to mask and more than one candidate width), their
    logits drawn from ``gen``, and the expected-MACs model (its ``depth``: the searched stages, when
    ``config.depth``). Raises :class:`InputError` when there is nothing to search."""
    sites = [_Site(g, model, config, gen) for g in groups.prunable]
    sites = [s for s in sites if s.masked and len(s.widths) > 1]
    stages = find_stages(model, example_inputs)[0] if config.depth else []
    depth = [DepthSite(stage, gen) for stage in stages]
    if not sites and not depth:
        raise InputError("no prunable channel group has more than one width candidate: nothing to search")
    return sites, Cost(model, example_inputs, sites, depth)


def _cycle(batches: Iterable[Batch]) -> Iterator[Batch]:
    cached = list(batches)
    if not cached:
        raise InputError("the search needs at least one training and one validation batch")
    while True:
        yield from cached


def _plan(sites: list[_Site], widths: list[int], config: SearchConfig) -> PruningPlan:
    planned = [
        PlannedGroup(s.group.id, s.group.signature, s.group.channels, sorted(s.order[:w]))
        for s, w in zip(sites, widths, strict=False)
    ]
    plan = PruningPlan(planned, criterion=config.criterion, macs_target=config.macs_target, round_to=config.round_to)
    plan.notes.append(f"widths searched by TAS (Dong & Yang 2019), {config.steps} steps")
    return plan.bind(GroupSet([s.group for s in sites]))


def search_plan(
    model: nn.Module,
    example_inputs: Sequence[Any],
    groups: GroupSet,
    train_batches: Iterable[Batch],
    val_batches: Iterable[Batch],
    config: SearchConfig,
) -> tuple[PruningPlan, SearchResult]:
    """Search the width of every prunable group of ``groups`` and the depth of every residual stage
    under ``config.macs_target``; return the bound plan of the derived widths and the search record
    (``SearchResult.dropped``: the blocks to drop with :func:`~slimmer.structures.depth.drop_blocks`).

    ``train_batches`` / ``val_batches``: (inputs, int64 labels) pairs, the two halves of the data
    (weights train on the first, the architecture on the second; both are cycled). ``model`` is not
    modified: the weights train on a copy. Raises :class:`InputError` when nothing can be searched.
    """
    gen = torch.Generator().manual_seed(config.seed)
    work = copy.deepcopy(model).train()
    sites, cost = search_space(work, example_inputs, groups, config, gen)
    blocks = [b for d in cost.depth for b in d.stage.blocks]
    net, gates = gated(work, blocks) if blocks else (work, [])
    arch_params = [s.logits for s in sites] + [d.logits for d in cost.depth]
    weights = [p for p in work.parameters() if p.requires_grad]
    w_opt = torch.optim.SGD(weights, lr=config.weight_lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    a_opt = torch.optim.Adam(
        arch_params, lr=config.arch_lr, betas=config.arch_betas, weight_decay=config.arch_weight_decay
    )
    train, val = _cycle(train_batches), _cycle(val_batches)
    history: list[dict[str, float]] = []

    def forward(x: torch.Tensor, params: dict[str, torch.Tensor], tau: float, detach: bool) -> torch.Tensor:
        masks = [s.soft_mask(tau, gen) for s in sites]
        values = [g for d in cost.depth for g in d.soft_gates(tau, gen)] if gates else []
        for gate, value in zip(gates, values, strict=True):
            gate.value = value.detach() if detach else value
        masks = [m.detach() for m in masks] if detach else masks
        return logits_of(functional_call(net, {**params, **_effective(params, sites, masks)}, (x,)), config.output_name)

    for step in range(config.steps):
        progress = step / max(1, config.steps - 1)
        tau = config.tau_min + 0.5 * (config.tau_max - config.tau_min) * (1 + math.cos(math.pi * progress))
        for group in w_opt.param_groups:
            group["lr"] = config.weight_lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        x, y = next(train)
        loss = F.cross_entropy(forward(x, dict(work.named_parameters()), tau, detach=True), y)
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        w_opt.step()

        x, y = next(val)
        params = {k: v.detach() for k, v in work.named_parameters()}
        ce = F.cross_entropy(forward(x, params, tau, detach=False), y)
        expected = expected_macs(sites, cost)
        argmax = argmax_macs(sites, cost)
        cost_loss = torch.zeros(())
        if argmax > config.macs_target:
            cost_loss = torch.log(expected)
        elif argmax < config.macs_target - config.band:
            cost_loss = -torch.log(expected)
        a_opt.zero_grad(set_to_none=True)
        (ce + config.cost_weight * cost_loss).backward()
        a_opt.step()
        record = {"tau": tau, "loss": float(loss.detach()), "val_ce": float(ce.detach())}
        history.append({**record, "expected": float(expected.detach()), "argmax": argmax})
    for gate in gates:
        gate.value = None
    return derive(sites, cost, config, history, lambda widths: _plan(sites, widths, config))
