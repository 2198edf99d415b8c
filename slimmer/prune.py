"""The pruning stage: turn the configured methods into masks (unstructured) or a PruningPlan (channel).

``prune`` chooses what to remove and zeroes it in place (the masked model: what fine-tuning keeps);
``shrink`` physically removes planned channels afterwards and checks that the smaller model equals
the masked one. Methods run in the order given (``channel,nm`` prunes channels first).
"""

from __future__ import annotations

import torch
from torch import nn

from slimmer.config import CompressConfig
from slimmer.criteria import get_criterion
from slimmer.errors import ConfigError
from slimmer.inputs import as_args
from slimmer.prune_channel import channel_method
from slimmer.prune_result import MethodHandler, PruneResult, checked
from slimmer.prune_scores import score_context
from slimmer.registry import Registry
from slimmer.structures.nm import nm_masks, parse_nm
from slimmer.structures.scope import UnstructuredScope, unstructured_scope
from slimmer.structures.unstructured import MaskSet, unstructured_masks
from slimmer.surgery import SurgeryResult, shrink
from slimmer.train.data import DataSplits

NM_CPU_NOTE = (
    "N:M zeros give no speed on CPU onnxruntime (sparse initializers are densified at load); a runtime with "
    "sparse tensor cores (Ampere or later, e.g. TensorRT) can run the pattern up to 2x faster"
)


def prune(model: nn.Module, config: CompressConfig, example: tuple, data: DataSplits | None) -> PruneResult:
    """Apply every configured method to ``model`` in place (channels are masked, not yet removed).

    ``example`` is the tuple of positional arguments the model is captured and measured on
    (:meth:`slimmer.inputs.ExampleInputs.args`); a single tensor is accepted too."""
    example = as_args(example)
    result = PruneResult()
    for method in config.methods:
        handler = METHODS.get(method)
        waits = method == "unstructured" and _unstructured_after_surgery(config)
        if not handler.after_shrink and not waits:
            result = checked(handler, handler.apply(model, config, example, data, result))
    return result


def _unstructured_after_surgery(config: CompressConfig) -> bool:
    """Whether unstructured masks wait for channel surgery: with ``--method channel`` (or ``search``)
    as well, one-shot, the weights are masked on the physically pruned model, so the requested sparsity
    holds for the weights that ship and the masks have their shapes while fine-tuning."""
    methods = set(config.methods)
    return "unstructured" in methods and bool(methods & {"channel", "search"}) and config.schedule == "oneshot"


METHODS: Registry[MethodHandler] = Registry("method")
"""The pruning methods by name: the CLI's ``--method`` choices and help come from here."""


def unstructured_masks_for(
    model: nn.Module,
    config: CompressConfig,
    example: tuple,
    data: DataSplits | None,
    sparsity: float,
    scope: UnstructuredScope | None = None,
) -> MaskSet:
    """Score the model's weight matrices (``scope``, found by :func:`unstructured_scope` when None) with
    the configured criterion and mask to ``sparsity`` (used once for one-shot pruning, and at every
    update of a pruning schedule)."""
    crit = get_criterion(config.stages.prune.criterion)
    if crit.needs != "none" and (data is None or not len(data.train)):
        raise ConfigError(f"--criterion {crit.name} needs --data (it scores weights on training batches)")
    weights = (scope or unstructured_scope(model, as_args(example))).weights
    if not weights:
        raise ConfigError("the model has no weight matrices to prune (Conv, Linear, recurrent, attention, matmul)")
    scores = crit.score(dict(weights), score_context(model, config, example, data))
    return unstructured_masks(scores, sparsity, scope=config.scope)


def _unstructured(
    model: nn.Module, config: CompressConfig, example: tuple, data: DataSplits | None, result: PruneResult
) -> PruneResult:
    scope = unstructured_scope(model, as_args(example))
    masks = unstructured_masks_for(model, config, example, data, config.target_sparsity, scope)
    result = apply_masks(model, masks, config, result)
    return result.detail(scope=scope.as_dict()).warn(scope.note(masks.sparsity) or "")


def apply_masks(model: nn.Module, masks: MaskSet, config: CompressConfig, result: PruneResult) -> PruneResult:
    """Zero ``masks`` in ``model``; ``result`` with them recorded (with ``--regrow``, the weights as they were)."""
    if config.regrow:
        result = result.but(dense=weights_before_masking(model, masks))
    masks.apply(model)
    return record_masks(masks, config, result)


def weights_before_masking(model: nn.Module, masks: MaskSet) -> dict[str, torch.Tensor]:
    """Copies of the weights ``masks`` is about to zero: ``--regrow`` fine-tunes from them."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return {name: params[name].detach().clone() for name in masks.masks}


def record_masks(masks: MaskSet, config: CompressConfig, result: PruneResult | None = None) -> PruneResult:
    """``result`` (a new one when None) with ``masks`` and what they achieve; nothing is zeroed."""
    result = PruneResult() if result is None else result
    return (
        result.but(
            masks=masks,
            sparsity_requested=config.target_sparsity,
            sparsity_achieved=masks.sparsity,
            per_layer=masks.per_layer_sparsity(),
        )
        .warn(*masks.warnings)
        .detail(criterion=config.stages.prune.criterion)
    )


def shrink_model(model: nn.Module, result: PruneResult, example: tuple) -> tuple[PruneResult, SurgeryResult | None]:
    """Physically remove the planned channels. Returns ``result`` with ``plan`` set to what was really
    applied (rolled-back groups named in the warnings), and the surgery's result (None without a plan)."""
    if result.plan is None:
        return result, None
    surgery = shrink(model, result.plan, as_args(example), masked_values=result.masked_values)
    rolled = (f"group {gid} was rolled back (kept whole): {why}" for gid, why in surgery.rolled_back.items())
    # before surgery only channel pruning to a sparsity sets one (unstructured masks wait for the surgery,
    # N:M comes after it): count what was really removed
    if surgery.rolled_back and result.sparsity_achieved is not None:
        result = result.but(sparsity_achieved=surgery.plan.channels_pruned / max(1, surgery.plan.channels_total))
    # the groups were captured from the unpruned model: they no longer describe it, and their
    # exported program holds every tensor the surgery replaced (a whole model's worth of memory)
    return result.but(plan=surgery.plan, groups=None, masked_values=None).warn(*rolled), surgery


def after_shrink(
    model: nn.Module, config: CompressConfig, example: tuple, result: PruneResult, data: DataSplits | None = None
) -> PruneResult:
    """Methods applied to the physically pruned model, in their handlers' order: a before-surgery
    method's ``finish``, unstructured masks that waited for the surgery, N:M masks, then folding."""
    handlers = sorted((METHODS.get(m) for m in config.methods), key=lambda h: h.order)
    for handler in handlers:
        if not handler.after_shrink and handler.finish is not None:
            result = checked(handler, handler.finish(model, config, example, result))
    if _unstructured_after_surgery(config):
        handler = METHODS.get("unstructured")
        target = result.model if result.model is not None else model  # search: the model without its blocks
        result = checked(handler, handler.apply(target, config, example, data, result))
    for handler in handlers:
        if handler.after_shrink:
            result = checked(handler, handler.apply(model, config, example, None, result))
    return result


def _nm(
    model: nn.Module, config: CompressConfig, example: tuple, data: DataSplits | None, result: PruneResult
) -> PruneResult:
    n, m = parse_nm(config.nm)
    nm = nm_masks(model, n, m)
    if not nm.layers:
        raise ConfigError(
            f"--nm {n}:{m}: no layer can take the pattern ("
            + "; ".join(f"{k}: {v}" for k, v in list(nm.skipped.items())[:3])
            + ")",
            hint="choose an M that divides the layers' input channels, e.g. --nm 2:4"
            if any("multiple of M" in why for why in nm.skipped.values())
            else "N:M prunes nn.Linear and nn.Conv* weights; use --method unstructured or channel for this model",
        )
    nm.dense = weights_before_masking(model, nm.masks)
    nm.masks.apply(model)
    result = result.but(nm=nm).warn(*(f"N:M skipped {layer}: {why}" for layer, why in nm.skipped.items()), NM_CPU_NOTE)
    if result.masks is None and result.plan is None:
        result = result.but(
            sparsity_requested=1 - n / m, sparsity_achieved=nm.masks.sparsity, per_layer=nm.masks.per_layer_sparsity()
        )
    return result.detail(nm={"pattern": f"{n}:{m}", "layers": nm.layers, "skipped": nm.skipped})


def _search(
    model: nn.Module, config: CompressConfig, example: tuple, data: DataSplits | None, result: PruneResult
) -> PruneResult:
    from slimmer.search_run import search

    return search(model, config, example, data, result)


def _drop_searched_blocks(model: nn.Module, config: CompressConfig, example: tuple, result: PruneResult) -> PruneResult:
    from slimmer.search_run import drop_searched_blocks

    return drop_searched_blocks(model, config, example, result)


def _fold(
    model: nn.Module, config: CompressConfig, example: tuple, data: DataSplits | None, result: PruneResult
) -> PruneResult:
    from slimmer.folding import fold_batchnorm, functional_activations, merge_model
    from slimmer.runplan import RunPlan

    if RunPlan.resolve(config).fold_phase:
        if config.schedule != "oneshot":
            raise ConfigError(
                f"--method fold with fine-tuning cannot follow --schedule {config.schedule}",
                hint="use --schedule oneshot with --method fold",
            )
        return result  # layer folding runs inside the recovery stage (slimmer.folding.phase)
    folded = fold_batchnorm(model, example)
    merged = merge_model(model, example)
    not_foldable = functional_activations(model, example)
    fold = {
        "batchnorm_folded": [f"{a} <- {b}" for a, b in folded.folded],
        "batchnorm_skipped": folded.skipped,
        "merge": merged.as_dict(),
        "activations_not_foldable": not_foldable,
    }
    result = result.but(fold=fold).detail(fold=fold)
    if not_foldable:
        result = result.warn(
            f"{len(not_foldable)} activations are called as functions in forward() and cannot be linearized"
        )
    return result


METHODS.register(
    "unstructured",
    MethodHandler("unstructured", "individual weights zeroed (global or per-layer ranking)", _unstructured),
)
METHODS.register(
    "channel", MethodHandler("channel", "whole channels removed: a smaller, faster dense model", channel_method)
)
METHODS.register(
    "search",
    MethodHandler(
        "search",
        "width and depth searched under --macs-target on --data (TAS), then removed",
        _search,
        finish=_drop_searched_blocks,
    ),
)
METHODS.register("nm", MethodHandler("nm", "N of every M weights kept along the input dimension (--nm)", _nm, True, 1))
METHODS.register(
    "fold",
    MethodHandler("fold", "BatchNorm folding; with --data and fine-tuning, layer folding", _fold, True, 2),
)
