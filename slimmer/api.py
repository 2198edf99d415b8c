"""The public verbs. ``compress`` is the one flow: load → prune → recover → shrink → export → verify → report.

- :func:`compress` takes an in-memory ``nn.Module`` and its example inputs (a tensor, a tuple, a
  dict of named tensors, or :class:`~slimmer.inputs.ExampleInputs`) and returns a
  :class:`CompressResult`: the pruned module, the report and the paths written.
- :func:`run` is the same flow from a checkpoint file described by a :class:`CompressConfig`
  (what ``slimmer compress`` calls).

Each stage is a plain function call returning its result; the decisions are resolved once into a
:class:`~slimmer.runplan.RunPlan`; the :class:`Report` is assembled from the results at the end.
Nothing here prints or exits; progress is reported through the optional ``progress`` callback.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimmer import acceptance, quantize_run
from slimmer.assemble import Scores, assemble
from slimmer.config import CompressConfig
from slimmer.errors import ConfigError
from slimmer.export import files
from slimmer.export import onnx as onnx_export
from slimmer.paths import check_paths, compress_reads, compress_writes
from slimmer.prune import PruneResult, after_shrink, prune, shrink_model
from slimmer.prune_schedule import schedule_hooks, schedule_outcome
from slimmer.recover import recover
from slimmer.report import Report
from slimmer.runplan import VERIFY_BATCHES, RunPlan
from slimmer.sources import check_sources
from slimmer.stage_data import read_data
from slimmer.stages import (
    Loaded,
    Measured,
    Reference,
    check_forward,
    dense_reference,
    export_and_verify,
    from_module,
    load,
    measure,
    measure_latency,
    onnx_info,
)
from slimmer.train.data import DataSplits
from slimmer.train.distributed import barrier, init_from_env
from slimmer.train.distributed import current as current_dist

Progress = Callable[[str, str], None]
__all__ = ["VERIFY_BATCHES", "CompressResult", "compress", "load", "plan_path", "run"]


def _no_progress(stage: str, message: str) -> None:
    return None


@dataclass(frozen=True)
class CompressResult:
    """What :func:`compress` returns: the pruned module (physically smaller for channel pruning),
    the report, and the files written (``onnx_path`` is None when verification failed)."""

    model: nn.Module
    report: Report
    onnx_path: Path | None
    report_path: Path
    plan_path: Path | None


def compress(
    model: nn.Module,
    example_inputs: Any,
    config: CompressConfig | None = None,
    *,
    progress: Progress | None = None,
) -> CompressResult:
    """Prune ``model`` (a copy: the module given is left as it is), export and verify it.

    ``example_inputs``: a tensor (one input), a tuple of tensors (positional), a dict of named
    tensors (bound to ``forward``'s parameters by name), or an :class:`ExampleInputs`. Every
    tensor is batch first, of any dtype; the batch axis is dynamic in the ONNX graph unless
    ``config.dynamic_batch`` is False. ``config`` defaults to ``CompressConfig()`` (50%
    unstructured magnitude pruning, output ``model.slim.onnx`` in the working directory).

    Raises :class:`~slimmer.errors.SlimmerError` subclasses on bad input (exit codes 2–4); a
    verification failure returns a report with ``status="failed"`` and ``exit_code=5``.
    """
    config = config or CompressConfig()
    say = progress or _no_progress
    _preflight(config)
    loaded = from_module(copy.deepcopy(model), example_inputs, config)
    report, pruned_model = _flow(loaded, config, say, time.perf_counter())
    committed = report.status == "ok"
    plan = plan_path(config.output_path)
    return CompressResult(
        model=pruned_model,
        report=report,
        onnx_path=config.output_path if committed else None,
        report_path=config.report_path,
        plan_path=plan if committed and plan.exists() and report.onnx.get("plan") else None,
    )


def run(config: CompressConfig, progress: Progress | None = None) -> Report:
    """The flow on a checkpoint file (``config.model``): what ``slimmer compress`` runs."""
    say = progress or _no_progress
    start = time.perf_counter()
    _preflight(config)
    say("load", f"loading {config.model}")
    loaded = load(config)
    return _flow(loaded, config, say, start)[0]


def _preflight(config: CompressConfig) -> None:
    onnx_export.preflight()
    _check_applies(config)
    init_from_env()  # joins the torchrun process group when there is one
    check_paths(compress_reads(config), compress_writes(config), config.force)  # no output aliases an input
    for path in (config.output_path, config.report_path, plan_path(config.output_path), config.int8_path):
        if path is not None:
            files.check_writable(path, config.force)
    if config.save_pretrained is not None:  # Hugging Face folders out (slimmer/hf_save.py)
        from slimmer.hf_save import check_target

        check_target(config)


def _check_applies(config: CompressConfig) -> None:
    """Options that would be ignored on this run are usage errors (exit 2), not silent no-ops."""
    from slimmer.hf import is_folder
    from slimmer.train.distributed import resolve_device

    if config.task is not None and not (config.model is not None and is_folder(config.model)):
        raise ConfigError(
            f"--task {config.task} chooses the head of a Hugging Face model folder; {config.model or 'this model'} "
            "is not one",
            hint="drop --task",
        )
    if config.device != "auto":
        resolve_device(config.device)  # --device cuda without CUDA is refused even when nothing is trained


class _Clock:
    """Seconds spent in each stage, for the report's ``timings_s``."""

    def __init__(self, start: float) -> None:
        self.last = start
        self.timings: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(self.timings.get(stage, 0.0) + now - self.last, 3)
        self.last = now


def _flow(loaded: Loaded, config: CompressConfig, say: Progress, start: float) -> tuple[Report, nn.Module]:
    """load → measure → (regularize) → prune → shrink → recover → report → export, verify, commit."""
    clock = _Clock(start)
    torch.manual_seed(config.seed)
    inputs, model = loaded.inputs, loaded.model
    plan = RunPlan.resolve(config, dynamic_length=inputs.has_dynamic_length, batch=inputs.batch)
    if config.data is not None:
        say("data", f"reading {config.data}")
    data = read_data(config, loaded)
    clock.lap("load")

    example = inputs.args(2 if config.dynamic_batch else inputs.batch, config.seed)
    out = check_forward(model, inputs, example)
    check_sources(model, example, data, config.data, out)  # finite data and outputs, labels within the classes
    # the dense model, kept when a later stage reads it (distillation, reconstruction, regularization, a
    # schedule, latency); agreement needs only its logits, taken now: no copy of a large model otherwise
    original = copy.deepcopy(model).eval() if _needs_original(config, plan, data) else None
    measured = measure(model, example, out, data, config)
    reference = dense_reference(model, measured, example, out, config)
    scores = Scores(measured, original, config, data)
    clock.lap("measure")

    model, pruned, surgery = _prune_stage(model, original, config, plan, example, data, scores, say, clock)
    clock.lap("prune")

    strategy = schedule_hooks(config, example, data, pruned)  # a schedule prunes inside the training loop
    recovered = recover(model, original, config, example, data, pruned, say, scores.evaluate, strategy)
    model, pruned, finetune = recovered.model, recovered.pruned, recovered.finetune
    if finetune is not None and strategy:
        pruned, figures = schedule_outcome(strategy, pruned, config)
        finetune.update(figures)
    if recovered.accuracy_after_reconstruct is not None:
        scores.acc["after_reconstruct"] = recovered.accuracy_after_reconstruct
    if recovered.accuracy_after_recalibrate is not None:
        scores.acc["after_recalibrate"] = recovered.accuracy_after_recalibrate
    if pruned.plan is not None and plan.scheduled:  # the schedule's last channel masks, removed once
        pruned, surgery = _shrink(model, pruned, example, say)
    if finetune and finetune.get("steps_done"):
        scores.record("after_finetune", model)
        clock.lap("finetune")
    elif finetune:  # reconstruction or BatchNorm re-estimation without training: not export's time
        clock.lap("recover")

    report = assemble(loaded, config, plan, measured, pruned, surgery, finetune, scores, model, example)
    info = current_dist()
    if info.world_size > 1 and not info.is_main:  # rank 0 alone exports, verifies and writes
        barrier()
        report.status, report.exit_code, report.rank = "ok", 0, info.rank
        return report, model
    try:
        _finish(config, report, model, original, reference, loaded, example, plan, measured, pruned, say, clock, data)
    finally:
        if info.world_size > 1:
            barrier()
    return report, model


def _prune_stage(
    model: nn.Module,
    original: nn.Module | None,
    config: CompressConfig,
    plan: RunPlan,
    example: tuple,
    data: DataSplits | None,
    scores: Scores,
    say: Progress,
    clock: _Clock,
) -> tuple[nn.Module, PruneResult, dict | None]:
    """The regularized phase when asked, then pruning and channel surgery (not under a schedule, which
    starts again from the dense weights and removes channels after fine-tuning), then the after-surgery
    methods. Returns the model to carry on with, the pruning result and what the surgery did."""
    regularized = None
    if plan.regularize:
        from slimmer.regularize import regularize

        regularized = regularize(model, original, config, example, data, say)
        scores.record("after_regularize", model)
        clock.lap("regularize")
    prune_config = regularized.prune_config if regularized else config
    say("prune", f"pruning: {','.join(config.methods)}, {prune_config.stages.prune.criterion}, {_target(config)}")
    if regularized is not None and regularized.chosen is not None:
        from slimmer.regularize import apply_chosen

        pruned = apply_chosen(model, regularized.chosen, keep_dense=config.regrow)  # greg: exactly what was pushed
    else:
        pruned = prune(model, prune_config, example, data)
    if regularized is not None:
        pruned = pruned.detail(regularizer=regularized.details)
    surgery = None
    if plan.scheduled:  # the schedule prunes during fine-tuning, starting from the dense weights
        if scores.evaluate:
            scores.acc["after_prune"] = scores.evaluate(model)  # what the one-shot prune would have given
        model.load_state_dict(original.state_dict())
        pruned = pruned.but(masked_values=None)  # training moves the weights: a rollback keeps the trained ones
    elif pruned.plan is not None:
        pruned, surgery = _shrink(model, pruned, example, say)
    pruned = after_shrink(model, config, example, pruned, data)
    if pruned.model is not None:  # --method search dropped residual blocks: a traced GraphModule without them
        model = pruned.model
    if not plan.scheduled:  # N:M masks and folding included
        scores.record("after_prune", model)
    return model, pruned, surgery


def _needs_original(config: CompressConfig, plan: RunPlan, data: DataSplits | None) -> bool:
    """Whether a stage after pruning reads the dense model: recovery and the text-embedding score
    (any ``--data``), regularization, a schedule (which starts again from the dense weights), latency."""
    return data is not None or plan.regularize or plan.scheduled or config.measure_latency


def _target(config: CompressConfig) -> str:
    if config.macs_target is not None:
        return f"MACs target {config.macs_target:g}"
    if config.speedup is not None:
        return f"measured speedup {config.speedup:g}x"
    return f"sparsity {config.target_sparsity:g}"


def _shrink(model: nn.Module, pruned: PruneResult, example: tuple, say: Progress) -> tuple[PruneResult, dict]:
    """Physically remove the planned channels: the pruning result with the plan really applied, and
    what the surgery did, for the report."""
    say("shrink", "removing pruned channels")
    pruned, surgery = shrink_model(model, pruned, example)
    return pruned, {
        "max_abs_diff": surgery.max_abs_diff,
        "output_scale": surgery.output_scale,
        "rolled_back": surgery.rolled_back,
        "channels_removed": surgery.plan.channels_pruned,
    }


def _finish(
    config: CompressConfig,
    report: Report,
    model: nn.Module,
    original: nn.Module | None,
    reference: Reference,
    loaded: Loaded,
    example: tuple,
    plan: RunPlan,
    measured: Measured,
    pruned: PruneResult,
    say: Progress,
    clock: _Clock,
    data: DataSplits | None = None,
) -> None:
    """Export, verify, then commit (or delete) the file, quantize it when asked, and write the report
    (rank 0 only)."""
    final = config.output_path
    say("export", f"exporting ONNX (opset {config.opset or 'default'}) and verifying with onnxruntime")
    verified = export_and_verify(model, reference, loaded.inputs, example, plan, measured, config)
    committed = False
    try:
        if pruned.nm is not None:
            from slimmer.structures.nm import nm_metadata

            files.add_metadata(verified.temp_path, nm_metadata(pruned.nm.n, pruned.nm.m, pruned.nm.layers))
        report.warnings += list(verified.warnings)
        report.verification = verified.as_dict()
        fails = acceptance.failures(verified.verification, pruned, config.stages.prune, report.macs)
        acc_fails, acc_figures = acceptance.accuracy_failures(report.accuracy, config.stages.verify)
        report.accuracy.update(acc_figures)
        fails += acc_fails
        if pruned.nm is not None:
            nm_fails, figures = acceptance.nm_failures(verified.temp_path, pruned)
            report.pruning.setdefault("nm", {}).update(figures)
            fails += nm_fails
        clock.lap("export_verify")
        if not fails and config.measure_latency:
            if loaded.inputs.single_float:
                say("latency", f"timing the original against the pruned file ({config.latency_pairs} paired runs)")
                report.latency_ms = measure_latency(original, loaded.inputs, example, verified.temp_path, config)
                clock.lap("latency")
            else:
                report.warnings.append("latency not measured: slimmer times graphs with one float input")
        if fails:
            report.status, report.exit_code, report.error = "failed", 5, "; ".join(fails)
            if config.keep_failed:
                kept = files.failed_name(final)
                files.commit(verified.temp_path, kept, replace=config.force)
                report.onnx = onnx_info(kept, verified.opset)
                report.warnings.append(f"the failed artifact was kept as {kept} (--keep-failed)")
            else:
                report.onnx = {"path": None, "sha256": None, "opset": verified.opset, "size_bytes": verified.size_bytes}
        else:
            files.commit(verified.temp_path, final, replace=config.force)
            committed = True
            report.onnx = onnx_info(final, verified.opset)
            report.status, report.exit_code = "ok", 0
            if pruned.plan is not None:
                files.write_atomic(plan_path(final), pruned.plan.to_json().encode(), replace=config.force)
                report.onnx["plan"] = str(plan_path(final))
            if getattr(config, "save_pretrained", None) is not None:
                from slimmer.hf_save import save_for_report

                report.warnings += save_for_report(model, pruned.plan, loaded, config)
    finally:
        if not committed:
            verified.temp_path.unlink(missing_ok=True)
    if committed and config.quantize is not None:
        say("quantize", f"int8: calibrating on {'--data' if data is not None else 'random inputs'} and verifying")
        quantize_run.after_compress(config, report, loaded, measured, data)
        clock.lap("quantize")
    report.timings_s = clock.timings
    files.write_atomic(config.report_path, report.to_json().encode(), replace=config.force)


def plan_path(output: Path) -> Path:
    """Where the PruningPlan of a channel-pruned export is saved: beside the ONNX file."""
    return output.with_name(output.name + ".plan.json")
