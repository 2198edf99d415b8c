"""The public verbs. ``compress`` is the one flow: load → prune → (fine-tune) → export → verify → report.

Every stage is a plain function call here; the CLI only builds a :class:`CompressConfig`, calls
:func:`compress`, renders the :class:`Report` and maps errors to exit codes. Nothing here prints
or exits; progress is reported through the optional ``progress`` callback.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slimmer.checkpoint import LoadedModel, load_checkpoint
from slimmer.config import CompressConfig
from slimmer.errors import ConfigError
from slimmer.export import onnx as onnx_export
from slimmer.export.verify import Verification, agreement, verify_onnx
from slimmer.paths import check_paths, compress_reads, compress_writes
from slimmer.prune import PruneResult, after_shrink, prune, shrink_model
from slimmer.recover import recover, scheduled
from slimmer.report import Report
from slimmer.sources import check_normalization, check_sources
from slimmer.stats import accuracy, count_macs, count_nonzero, count_params
from slimmer.train.data import DataSplits, load_data
from slimmer.train.distributed import barrier, init_from_env
from slimmer.train.distributed import current as current_dist

Progress = Callable[[str, str], None]
VERIFY_BATCHES = (1, 3)


def _no_progress(stage: str, message: str) -> None:
    return None


def load(config: CompressConfig) -> tuple[LoadedModel, tuple[int, ...]]:
    """Load the checkpoint safely and resolve the input shape (option, else the architecture's)."""
    loaded = load_checkpoint(
        config.model,
        arch=config.arch,
        trust_remote_code=config.trust_remote_code,
        expect_sha256=config.expect_sha256,
    )
    shape = config.input_shape or (loaded.arch.input_shape if loaded.arch and loaded.arch.input_shape else None)
    if not shape:
        raise ConfigError(
            "the input shape is unknown for this model",
            hint="pass --input-shape, e.g. --input-shape 1,3,224,224",
        )
    return loaded, tuple(shape)


def example_input(shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *shape[1:]), generator=gen)


def check_forward(model: nn.Module, example: torch.Tensor) -> None:
    """Run the model once on the example input; a failure here is a wrong input shape, not a bug."""
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"the model fails on an input of shape {tuple(example.shape)}: {first}",
            hint="check --input-shape (batch first, e.g. 1,3,224,224)",
        ) from None


def compress(config: CompressConfig, progress: Progress | None = None) -> Report:
    """Run the whole flow and return the report. Raises :class:`SlimmerError` on bad input or export
    failure; a verification failure returns a report with ``status="failed"`` and ``exit_code=5``."""
    say = progress or _no_progress
    report = Report(config=config.to_dict())
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        timings[stage] = round(now - t0, 3)
        t0 = now

    onnx_export.preflight()
    init_from_env()  # joins the torchrun process group when there is one
    final = config.output_path
    check_paths(compress_reads(config), compress_writes(config), config.force)  # issue 19: no aliasing/clobbering
    for path in (final, config.report_path, plan_path(final)):
        onnx_export.check_writable(path, config.force)

    say("load", f"loading {config.model}")
    loaded, shape = load(config)
    report.input = {
        "path": str(loaded.path),
        "sha256": loaded.sha256,
        "format": loaded.format,
        "arch": loaded.arch.name if loaded.arch else None,
        "input_shape": list(shape),
    }
    report.warnings += loaded.notes
    torch.manual_seed(config.seed)
    model = loaded.model
    data = None
    if config.data is not None:
        mean = config.mean or (loaded.arch.mean if loaded.arch and loaded.arch.mean else (0.0,))
        std = config.std or (loaded.arch.std if loaded.arch and loaded.arch.std else (1.0,))
        check_normalization(config.mean, config.std, shape)
        say("data", f"reading {config.data}")
        data = load_data(config.data, shape, mean, std, seed=config.seed, val_fraction=config.val_fraction)
    lap("load")

    original = copy.deepcopy(model).eval()
    example = example_input(shape, 2 if config.dynamic_batch else shape[0], config.seed)
    check_forward(model, example)
    check_sources(model, example, data, config.data)  # finite model outputs and data, labels in range
    report.params = {"before": count_params(model), "nonzero_before": count_nonzero(model)}
    report.macs = {"before": count_macs(model, example)}
    eval_x, eval_y = _eval_set(data, config.eval_samples)
    if eval_y is not None:
        report.accuracy["before"] = accuracy(original, eval_x, eval_y)
    lap("measure")

    target = (
        f"MACs target {config.macs_target:g}"
        if config.macs_target is not None
        else f"measured speedup {config.speedup:g}x"
        if config.speedup is not None
        else f"sparsity {config.target_sparsity:g}"
    )
    regularized = None
    if config.regularizer is not None:
        from slimmer.regularize import regularize

        regularized = regularize(model, original, config, example, data, say)
        if eval_y is not None:
            report.accuracy["after_regularize"] = accuracy(model, eval_x, eval_y)
        lap("regularize")
    prune_config = regularized.prune_config if regularized else config
    say("prune", f"pruning: {','.join(config.methods)}, {prune_config.criterion}, {target}")
    if regularized is not None and regularized.chosen is not None:
        from slimmer.regularize import apply_chosen

        pruned = regularized.chosen  # greg: remove exactly what was pushed towards zero
        apply_chosen(model, pruned, keep_dense=config.regrow)
    else:
        pruned = prune(model, prune_config, example, data)
    if regularized is not None:
        pruned.details["regularizer"] = regularized.details
    report.warnings += pruned.warnings
    report.sparsity = {
        "requested": pruned.sparsity_requested,
        "achieved": pruned.sparsity_achieved,
        "per_layer": pruned.per_layer,
        "tolerance": config.sparsity_tolerance,
    }
    if scheduled(config):  # the schedule prunes during fine-tuning, starting from the dense weights
        if eval_y is not None:  # what the one-shot prune would have given
            report.accuracy["after_prune"] = accuracy(model, eval_x, eval_y)
        model.load_state_dict(original.state_dict())
    if pruned.plan is not None and not scheduled(config):
        _shrink(model, pruned, example, report, say)
    after_shrink(model, config, example, pruned)
    if eval_y is not None and not scheduled(config):  # N:M masks and folding included
        report.accuracy["after_prune"] = accuracy(model, eval_x, eval_y)
    if pruned.nm is not None or pruned.fold is not None:
        report.sparsity.update(
            requested=pruned.sparsity_requested, achieved=pruned.sparsity_achieved, per_layer=pruned.per_layer
        )
        report.warnings += [w for w in pruned.warnings if w not in report.warnings]
    lap("prune")
    evaluate = (lambda m: accuracy(m, eval_x, eval_y)) if eval_y is not None else None
    report.finetune = recover(model, original, config, example, data, pruned, say, evaluate)
    if report.finetune and "accuracy_after_reconstruct" in report.finetune:
        report.accuracy["after_reconstruct"] = report.finetune.pop("accuracy_after_reconstruct")
    if pruned.model is not None:  # layer folding collapsed a region: the model is now a traced GraphModule
        model = pruned.model
    if pruned.plan is not None and scheduled(config):  # the schedule's last channel masks, removed once
        _shrink(model, pruned, example, report, say)
    info = current_dist()
    if info.world_size > 1 and not info.is_main:  # rank 0 alone exports, verifies and writes
        barrier()
        report.status, report.exit_code, report.rank = "ok", 0, info.rank
        return report
    try:
        return _finish(config, report, _Run(model, original, example, shape, eval_x, eval_y, pruned, say, lap, timings))
    finally:
        if info.world_size > 1:
            barrier()


def _shrink(model: nn.Module, pruned: PruneResult, example: torch.Tensor, report: Report, say: Progress) -> None:
    """Physically remove the planned channels and record the surgery in the report."""
    say("shrink", "removing pruned channels")
    surgery = shrink_model(model, pruned, example)
    report.surgery = {
        "max_abs_diff": surgery.max_abs_diff,
        "output_scale": surgery.output_scale,
        "rolled_back": surgery.rolled_back,
        "channels_removed": surgery.plan.channels_pruned,
    }
    report.warnings += [w for w in pruned.warnings if w not in report.warnings]


@dataclass
class _Run:
    """What the second half of ``compress`` works on."""

    model: nn.Module
    original: nn.Module
    example: torch.Tensor
    shape: tuple[int, ...]
    eval_x: torch.Tensor | None
    eval_y: torch.Tensor | None
    pruned: PruneResult
    say: Progress
    lap: Callable[[str], None]
    timings: dict[str, float]


def _finish(config: CompressConfig, report: Report, run: _Run) -> Report:
    """Measure, export, verify and write (rank 0 only under torchrun)."""
    final = config.output_path
    model, original, example, shape = run.model, run.original, run.example, run.shape
    eval_x, eval_y, pruned, say, lap, timings = run.eval_x, run.eval_y, run.pruned, run.say, run.lap, run.timings
    if report.finetune and report.finetune.get("steps_done"):
        if eval_y is not None:
            report.accuracy["after_finetune"] = accuracy(model, eval_x, eval_y)
        report.sparsity.update(achieved=pruned.sparsity_achieved, per_layer=pruned.per_layer)
        report.warnings += [w for w in pruned.warnings if w not in report.warnings]
        lap("finetune")
    report.pruning = pruned.details
    report.params.update(after=count_params(model), nonzero_after=count_nonzero(model))
    report.macs["after"] = count_macs(model, example)
    if config.macs_target is not None:
        report.macs["target"] = config.macs_target
    if "unstructured" in config.methods:
        report.warnings.append(
            "unstructured zeros do not reduce dense MACs or onnxruntime CPU latency; the file compresses better"
        )
    if config.finetune_steps == 0:
        report.warnings.append("no fine-tuning was run (pass --data and --finetune-steps to recover accuracy)")

    say("export", f"exporting ONNX (opset {config.opset or 'default'})")
    exported = onnx_export.export_onnx(
        model, example, final, opset=config.opset, dynamic_batch=config.dynamic_batch, exporter=config.exporter
    )
    report.warnings += exported.warnings
    if pruned.nm is not None:
        from slimmer.structures.nm import nm_metadata

        onnx_export.add_metadata(exported.temp_path, nm_metadata(pruned.nm.n, pruned.nm.m, pruned.nm.layers))
    committed = False
    try:
        lap("export")
        say("verify", "verifying with onnxruntime")
        batches = VERIFY_BATCHES if config.dynamic_batch else (shape[0],)
        inputs = [example_input(shape, b, config.seed + i + 1) for i, b in enumerate(batches)]
        verification = verify_onnx(exported.temp_path, model, inputs, atol=config.atol, rtol=config.rtol)
        compare_x = eval_x[:256] if eval_x is not None else torch.cat(inputs)
        verification.cosine, verification.top1_agreement = agreement(original, model, compare_x)
        report.warnings += verification.warnings
        _fill_verification(report, verification)
        failures = _failures(verification, pruned, config, report.macs)
        if pruned.nm is not None:
            failures += _nm_failures(exported.temp_path, pruned, report)
        lap("verify")
        if failures:
            report.status, report.exit_code, report.error = "failed", 5, "; ".join(failures)
            if config.keep_failed:
                kept = onnx_export.failed_name(final)
                onnx_export.commit(exported.temp_path, kept, replace=config.force)
                report.onnx = _onnx_info(kept, exported.opset)
                report.warnings.append(f"the failed artifact was kept as {kept} (--keep-failed)")
            else:
                exported.temp_path.unlink(missing_ok=True)
                report.onnx = {"path": None, "sha256": None, "opset": exported.opset, "size_bytes": exported.size_bytes}
        else:
            onnx_export.commit(exported.temp_path, final, replace=config.force)
            committed = True
            report.onnx = _onnx_info(final, exported.opset)
            report.status, report.exit_code = "ok", 0
            if pruned.plan is not None:
                onnx_export.write_atomic(plan_path(final), pruned.plan.to_json().encode(), replace=config.force)
                report.onnx["plan"] = str(plan_path(final))
    finally:
        if not committed:
            exported.temp_path.unlink(missing_ok=True)
    report.timings_s = timings
    onnx_export.write_atomic(config.report_path, report.to_json().encode(), replace=config.force)
    return report


def _eval_set(data: DataSplits | None, limit: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if data is None:
        return None, None
    x = data.eval.x[:limit]
    y = data.eval.y[:limit] if data.eval.y is not None else None
    return x, y


def _fill_verification(report: Report, v: Verification) -> None:
    report.verification = {
        "passed": v.passed,
        "max_abs_diff": v.max_abs_diff,
        "max_rel_diff": v.max_rel_diff,
        "cosine": v.cosine,
        "top1_agreement": v.top1_agreement,
        "atol": v.atol,
        "rtol": v.rtol,
        "provider": v.provider,
        "outputs": [c.__dict__ for c in v.checks],
    }


def _nm_failures(path: Path, pruned: PruneResult, report: Report) -> list[str]:
    """Read the exported initializers back and check the N:M pattern in each of them."""
    from slimmer.structures.nm import check_onnx_nm, compressed_size

    skipped = {f"{layer}.weight" for layer in pruned.nm.skipped}
    checked = {k: v for k, v in check_onnx_nm(path, pruned.nm.n, pruned.nm.m).items() if k not in skipped}
    bad = sorted(name for name, ok in checked.items() if not ok)
    report.pruning.setdefault("nm", {}).update(
        onnx_initializers_checked=len(checked),
        onnx_initializers_with_pattern=len(checked) - len(bad),
        compressed_size_bytes=compressed_size(path),
    )
    return [f"N:M pattern broken in the exported initializers: {', '.join(bad[:5])}"] if bad else []


def plan_path(output: Path) -> Path:
    """Where the PruningPlan of a channel-pruned export is saved: beside the ONNX file."""
    return output.with_name(output.name + ".plan.json")


def _failures(v: Verification, pruned: PruneResult, config: CompressConfig, macs: dict) -> list[str]:
    failures = []
    if config.macs_target is not None and macs.get("before"):
        kept = macs["after"] / macs["before"]
        if kept > config.macs_target + config.sparsity_tolerance:
            failures.append(
                f"MACs target not reached: requested {config.macs_target:.4f} of the original, kept {kept:.4f} "
                f"(tolerance {config.sparsity_tolerance:g}; see warnings for what blocked further pruning)"
            )
    wanted = pruned.details.get("speedup")
    if wanted and not wanted["reached"]:
        failures.append(
            f"speedup not reached: requested {wanted['requested']:g}x, best measured {wanted['measured']:.2f}x "
            "(onnxruntime CPU, 1 thread, batch 1)"
        )
    if not v.passed:
        failures.append("verification failed: " + v.failure_summary())
    if pruned.sparsity_achieved is not None and pruned.sparsity_requested is not None:
        short = pruned.sparsity_requested - pruned.sparsity_achieved
        if short > config.sparsity_tolerance:
            failures.append(
                f"sparsity not reached: requested {pruned.sparsity_requested:.4f}, achieved "
                f"{pruned.sparsity_achieved:.4f} (tolerance {config.sparsity_tolerance:g})"
            )
    return failures


def _onnx_info(path: Path, opset: int) -> dict:
    data = path.read_bytes()
    return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "opset": opset, "size_bytes": len(data)}
