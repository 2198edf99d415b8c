"""Layer folding inside ``compress``: linearize, fine-tune α, fold, merge, fine-tune again.

The procedure of Ben Dror et al. ("Layer Folding", BMVC 2022, arXiv 2106.09309), run when
``--method`` includes ``fold`` and fine-tuning is asked for (``--data`` and ``--finetune-steps``):

1. :func:`linearize` wraps the activations "where sensible" in σ_α(x) = αx + (1−α)·act(x) with
   α starting at :data:`ALPHA_START`. Sensible means one of two things, each through the latency
   gate:

   * a **pair**: linearizing it would leave two layers adjacent that
     :func:`~slimmer.folding.merge.merge_refusal` can merge (``layer → [BN] → act → layer``, every
     tensor on the way used once, each module called once). In a ResNet basic block that is
     ``relu1`` (between conv1/bn1 and conv2);
   * a **region** (:mod:`slimmer.folding.region`): counting activations as linear, a stretch of
     the graph from one tensor to another — stride-1 convs, BN, identities, residual sums — that
     one conv computes with fewer MACs. That is where the input has few channels: in
     resnet20-fmnist the stem and stage 1 (7 convs, 3 residual sums, 1 → 16 channels) become one
     15×15 conv from the image, so the stem's ``relu`` and the ``relu2`` after the first two sums
     are wrapped as well. Any other activation feeding a residual sum, a branch or a pooling is
     not wrapped: removing it would remove no layer, only accuracy.
2. The recovery stage fine-tunes the first :data:`ALPHA_FRACTION` of the budget with
   :class:`~slimmer.folding.linearize.FoldingPenaltyHook` (λ = :data:`PENALTY`, α learning rate
   :data:`ALPHA_LR_SCALE` × the network's; distillation from the original stays on).
3. :func:`fold` turns α ≥ 0.9 into the identity, folds the BatchNorms that now sit between two
   layers, merges the adjacent layers with the paper's border approximation (padding p1 + s1·p2),
   then collapses each region that became entirely linear into one conv (the skip connections land
   in the kernel centre; the model becomes a traced ``fx.GraphModule``, left in ``phase.model``),
   each merge and collapse only where the gate allows it; the rest of the budget then absorbs the rounding and
   the border approximation. The other BatchNorms stay for that fine-tune (a BN-free ResNet-20
   fine-tuned at lr 0.01 lost 25 points of accuracy in 2 steps) and :func:`finish` folds them
   afterwards (exact in eval mode).

**The latency gate** (:data:`LATENCY_GATE` = ``"measure"``) builds the pair and the merged layer
as two small ONNX graphs with the real shapes at batch 1 and times them with
:func:`~slimmer.export.bench.paired_latency` (one intra-op thread, :data:`~slimmer.folding.gate.GATE_WARMUP` warm-up
runs, :data:`~slimmer.folding.gate.GATE_PAIRS` interleaved pairs, median of per-pair ratios); the merge goes ahead when
the median ratio pair/merged is ≥ 1 (not slower). Folding can grow MACs — two 3×3 convs of width C
cost 18·C² per pixel, the merged 5×5 25·C² — so on a CPU the merged conv is often slower (see
docs/BENCHMARKS.md "Layer folding"). Timing depends on the shapes only, so the gate is asked
first when the activations are chosen — an activation whose merge would be slower is never
linearized (that would cost accuracy for nothing) — and its answer is reused at merge time.
``"off"`` merges whatever the rules allow. Layers holding unstructured masks or an N:M pattern are
never merged (the merged weight would be dense), and a pruning schedule cannot precede folding.

A region is judged at planning time with a conv of the merged shape (timing depends on shapes
only) and measured again, with the real weights, when it collapses. Not done here: chains through
reshapes, and regions through strided convolutions.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimmer.folding import region as regions
from slimmer.folding._modules import CONV_OPS, set_module
from slimmer.folding.batchnorm import fold_batchnorm
from slimmer.folding.candidates import candidates
from slimmer.folding.chain import layer_depth, merge_model
from slimmer.folding.gate import LatencyGate
from slimmer.folding.linearize import (
    DEFAULT_THRESHOLD,
    LinearizableActivation,
    finalize_activations,
    linearizable,
)
from slimmer.graph.capture import CapturedGraph, capture, op_name
from slimmer.stats import count_macs

# α starts slightly above 0: d|1−α²|/dα = −2α vanishes at α = 0, so from 0 only the task loss moves α.
ALPHA_START = 0.05
# The α learning rate as a multiple of the network's. Measured on resnet20-fmnist (234 α steps, SGD
# Nesterov momentum 0.9, lr 0.01 cosine, KD): 1× took 8 of 9 α to ≥ 0.9, 10× 6 and 30× 5 (a faster α
# commits sooner, and more of them to 0), so α keeps the network's rate. With momentum 0.9 the
# penalty alone grows α by ~10·lr·2λ = 5% a step at lr 0.01: α does move. See docs/BENCHMARKS.md.
ALPHA_LR_SCALE = 1.0
# The Layer Folding penalty λ (Ben Dror et al.: 0.25).
PENALTY = 0.25
# Share of the fine-tuning budget spent learning α (the rest recovers after folding).
ALPHA_FRACTION = 0.5
# The activations a region needs (and no pair) share one α: the region pays only when all of them are
# linear, and the penalty then weighs them together. Measured on resnet20-fmnist (234 α steps), each
# with its own α: the stem's relu went to 0 while four others reached 1, so nothing collapsed and
# those four cost accuracy for nothing. See docs/BENCHMARKS.md "Layer folding".
TIE_REGION_ALPHA = True
# "measure": merge only when the merged layer is not slower in onnxruntime; "off": merge what the rules allow.
LATENCY_GATE = "measure"


def active(methods: Iterable[str], has_data: bool, finetune_steps: int) -> bool:
    """True when ``compress`` runs the full folding phase (fold + data + fine-tuning steps)."""
    return "fold" in tuple(methods) and has_data and finetune_steps > 0


def _inputs(example: torch.Tensor | tuple[Any, ...]) -> tuple[Any, ...]:
    return (example,) if isinstance(example, torch.Tensor) else tuple(example)


def conv_count(captured: CapturedGraph) -> int:
    """Convolutions in the captured graph (each is one ``Conv`` node of the ONNX export)."""
    return sum(1 for n in captured.graph.nodes if n.op == "call_function" and op_name(n) in CONV_OPS)


def sizes(model: nn.Module, example: torch.Tensor | tuple[Any, ...], captured: CapturedGraph | None = None) -> dict:
    """Depth (Conv/Linear layers on the longest path), parameters, MACs at batch 1, convolutions."""
    inputs = _inputs(example)
    captured = captured or capture(model, inputs)
    return {
        "depth": layer_depth(captured),
        "params": sum(p.numel() for p in model.parameters()),
        "macs": count_macs(model, inputs[0]),
        "conv_nodes": conv_count(captured),
    }


# ---------------------------------------------------------------- choosing the activations


@dataclass
class FoldPhase:
    """State carried from :func:`linearize` to :func:`fold`; :meth:`as_dict` is ``report.pruning["fold"]``."""

    gate: LatencyGate
    model: nn.Module | None = None  # set by fold(): the model, or its GraphModule once a region collapsed
    wrapped: dict[str, str] = field(default_factory=dict)
    not_wrapped: dict[str, str] = field(default_factory=dict)
    alpha_start: float = ALPHA_START
    before: dict[str, int] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": "layer folding (linearize, fine-tune alpha, fold, fine-tune)",
            "latency_gate": self.gate.mode,
            "penalty": PENALTY,
            "alpha_start": self.alpha_start,
            "alpha_lr_scale": ALPHA_LR_SCALE,
            "threshold": DEFAULT_THRESHOLD,
            "activations_wrapped": dict(self.wrapped),
            "activations_not_wrapped": dict(self.not_wrapped),
            **self.result,
        }


def linearize(
    model: nn.Module,
    example: torch.Tensor | tuple[Any, ...],
    *,
    gate: str | None = None,
    protected: Iterable[str] = (),
    alpha: float | None = None,
) -> FoldPhase:
    """Step 1: wrap the chosen activations of ``model`` (in place) in σ_α with α = ``alpha``
    (:data:`ALPHA_START` when None); ``gate`` is ``"measure"`` or ``"off"`` (:data:`LATENCY_GATE`)."""
    alpha = ALPHA_START if alpha is None else alpha
    gate = LATENCY_GATE if gate is None else gate
    was_training = model.training
    model.eval()
    phase = FoldPhase(gate=LatencyGate(gate, frozenset(protected)), alpha_start=alpha)
    captured = capture(model, _inputs(example))
    phase.before = sizes(model, example, captured)
    phase.wrapped, phase.not_wrapped = candidates(model, captured, phase.gate)
    planned, refused, why = regions.plan(model, _inputs(example), phase.gate.protected, accept=phase.gate.region)
    phase.result["regions_planned"] = planned
    phase.result["regions_not_planned"] = refused
    if why:
        phase.result["regions_note"] = why
    pair_wrapped = set(phase.wrapped)
    for region in planned:
        for path in region["activations"]:
            if path not in pair_wrapped:
                phase.wrapped.setdefault(path, _region_text(region))
            phase.not_wrapped.pop(path, None)
    for path in phase.wrapped:
        act = model.get_submodule(path)
        if getattr(act, "inplace", False):
            act = copy.copy(act)
            act.inplace = False
        set_module(model, path, LinearizableActivation(act, alpha))
    for region in planned:  # a region collapses only when all its activations go: one decision, one α
        tied = [p for p in region["activations"] if p not in pair_wrapped]
        for path in tied[1:] if TIE_REGION_ALPHA else ():
            model.get_submodule(path).alpha = model.get_submodule(tied[0]).alpha
        region["alpha_tied"] = tied if TIE_REGION_ALPHA and len(tied) > 1 else []
    model.train(was_training)
    return phase


def _region_text(region: dict[str, Any]) -> str:
    return (
        f"region {region['from']} -> {region['to']} into one {region['into']} "
        f"(MACs {region['macs_before']} -> {region['macs_after']} per image)"
    )


def fold(
    phase: FoldPhase, model: nn.Module, example: torch.Tensor | tuple[Any, ...], threshold: float = DEFAULT_THRESHOLD
) -> dict[str, Any]:
    """Step 3: finalize α (≥ ``threshold`` → identity), fold BatchNorm, merge through the gate.

    Returns (and keeps in ``phase.result``) the final α per activation, which became the identity,
    the merges done and refused with the reasons, and depth/params/MACs/convolutions before and after.
    """
    model.eval()
    alphas = {p: round(m.value, 4) for p, m in linearizable(model).items()}
    outcome = finalize_activations(model, threshold)
    folded = fold_batchnorm(model, example, only_between_layers=True)  # the rest stay for the fine-tune
    merged = merge_model(model, example, max_mac_growth=float("inf"), allow_border_approx=True, accept=phase.gate)
    phase.model, collapsed = regions.collapse(
        model, _inputs(example), protected=phase.gate.protected, accept=phase.gate.region
    )
    after = sizes(phase.model, example) if collapsed.collapsed else None
    phase.result = {
        **phase.result,
        "alpha_final": alphas,
        "became_identity": sorted(p for p, o in outcome.items() if o == "identity"),
        "kept_nonlinear": {p: o for p, o in outcome.items() if o != "identity"},
        "batchnorm_folded": [f"{a} <- {b}" for a, b in folded.folded],
        "batchnorm_skipped": folded.skipped,
        "merges": merged.merged,
        "merges_refused": dict(merged.refused),
        "regions_collapsed": collapsed.collapsed,
        "regions_refused": collapsed.refused,
        "latency_measured": dict(phase.gate.measured),
    }
    if collapsed.note:
        phase.result["regions_note"] = collapsed.note
    for key, value in (("depth", merged.depth), ("params", merged.params), ("macs", merged.macs)):
        phase.result[key] = {"before": phase.before.get(key), "after": after[key] if after else value[1]}
    phase.result["conv_nodes"] = {
        "before": phase.before.get("conv_nodes"),
        "after": after["conv_nodes"] if after else merged.conv_nodes[1],
    }
    return phase.result


def finish(phase: FoldPhase, model: nn.Module, example: torch.Tensor | tuple[Any, ...]) -> dict[str, Any]:
    """Step 5, after the last fine-tune: fold the BatchNorms kept for it (exact in eval mode), final sizes.

    ``model`` is the one :func:`fold` left in ``phase.model`` (a GraphModule when a region collapsed)."""
    model.eval()
    folded = fold_batchnorm(model, example)
    after = sizes(model, example)
    result = phase.result
    result["batchnorm_folded"] = result.get("batchnorm_folded", []) + [f"{a} <- {b}" for a, b in folded.folded]
    result["batchnorm_skipped"] = folded.skipped
    for key in ("depth", "params", "macs", "conv_nodes"):
        result.setdefault(key, {"before": phase.before.get(key)})["after"] = after[key]
    return result


# ---------------------------------------------------------------- inside the recovery stage


def protected_layers(pruned: Any) -> set[str]:
    """Layers holding unstructured masks or an N:M pattern (a ``PruneResult``): never merged."""
    names: set[str] = set()
    for holder in (getattr(pruned, "masks", None), getattr(getattr(pruned, "nm", None), "masks", None)):
        if holder is not None:
            names |= {n.rsplit(".", 1)[0] for n in holder.masks}
    return names


def split_steps(total: int, wrapped: bool) -> tuple[int, int]:
    """(α steps, recovery steps): :data:`ALPHA_FRACTION` of ``total`` for α, at least one step each."""
    if not wrapped or total < 2:
        return 0, total
    first = min(total - 1, max(1, round(ALPHA_FRACTION * total)))
    return first, total - first


def finetune_with_folding(
    model: nn.Module,
    teacher: nn.Module | None,
    train: Any,
    cfg: Any,
    hooks: list[Any],
    example: torch.Tensor,
    pruned: Any,
    say: Any,
    progress: Any = None,
    *,
    gate: str = LATENCY_GATE,
    alpha_start: float = ALPHA_START,
) -> Any:
    """The recovery stage with layer folding: linearize → fine-tune α → fold → fine-tune the rest.

    ``gate`` (``"measure"`` or ``"off"``) and ``alpha_start`` are ``compress``'s
    ``--fold-latency-gate`` and ``--fold-alpha-start``.

    ``cfg`` is the loop's :class:`~slimmer.train.finetune.FinetuneConfig` for the whole budget,
    ``hooks`` the pruning hooks (kept for both parts; their layers are protected from merging).
    Returns one :class:`~slimmer.train.finetune.FinetuneResult` covering both parts, and ``pruned``
    (a :class:`~slimmer.prune.PruneResult`) with ``fold`` and ``details["fold"]`` set to
    :meth:`FoldPhase.as_dict` and ``model`` to the folded model.
    """
    from dataclasses import replace

    from slimmer.folding.linearize import FoldingPenaltyHook
    from slimmer.train.distributed import init_from_env, wrap_ddp
    from slimmer.train.finetune import finetune

    info = init_from_env()
    state = linearize(model, example, alpha=alpha_start, gate=gate, protected=protected_layers(pruned))
    alpha_steps, rest = split_steps(cfg.steps, bool(state.wrapped))
    say(
        "fold",
        f"layer folding: {len(state.wrapped)} activations linearized (alpha from {alpha_start}), "
        f"{len(state.not_wrapped)} left as they are",
    )
    results = []
    if alpha_steps:
        say("fold", f"fine-tuning {alpha_steps} steps with the folding penalty (lambda {PENALTY})")
        student = wrap_ddp(model, info) if info.world_size > 1 else model
        penalty = FoldingPenaltyHook(PENALTY, alpha_lr_scale=ALPHA_LR_SCALE)
        results.append(finetune(student, teacher, train, replace(cfg, steps=alpha_steps), [*hooks, penalty], progress))
    report = fold(state, model, example)
    model = state.model
    say(
        "fold",
        f"folded: {len(report['became_identity'])} activations became the identity, {len(report['merges'])} merges "
        f"({len(report['merges_refused'])} refused), {len(report['regions_collapsed'])} regions collapsed into one "
        f"conv each ({len(report['regions_refused'])} refused), convolutions {report['conv_nodes']['before']} -> "
        f"{report['conv_nodes']['after']}",
    )
    say("finetune", f"fine-tuning {rest} steps after folding")
    student = wrap_ddp(model, info) if info.world_size > 1 else model
    results.append(finetune(student, teacher, train, replace(cfg, steps=rest), hooks, progress))
    finish(state, model, example)
    record = state.as_dict()
    record["finetune_steps"] = {"alpha": alpha_steps, "after_folding": rest}
    if alpha_steps:
        record["loss_alpha_phase"] = {"initial": results[0].initial_loss, "final": results[0].final_loss}
    pruned = pruned.but(fold=record, model=model).detail(fold=record)
    if not state.wrapped:
        pruned = pruned.warn(
            "layer folding linearized no activation (see pruning.fold.activations_not_wrapped for why)"
        )
    last = results[-1]
    if len(results) == 1:
        return last, pruned
    first = results[0]
    return replace(
        last,
        steps_done=first.steps_done + last.steps_done,
        initial_loss=first.initial_loss,
        min_loss=min(first.min_loss, last.min_loss),
        loss_curve=first.loss_curve + last.loss_curve,
        seconds=first.seconds + last.seconds,
        samples_per_s=(first.samples_per_s * first.seconds + last.samples_per_s * last.seconds)
        / max(first.seconds + last.seconds, 1e-9),
    ), pruned
