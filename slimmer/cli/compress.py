"""``slimmer compress MODEL``: load → prune → recover → shrink → export → verify → report.

Options are declared once, grouped into help panels, in :mod:`slimmer.cli.compress_options`; this
module turns their values into a :class:`CompressConfig` (or replays one from a report) and runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from slimmer.cli import compress_options as options
from slimmer.cli.render import emit_report, run_guarded, stage_printer
from slimmer.config import CompressConfig, parse_floats, parse_shape
from slimmer.errors import ConfigError, InputError
from slimmer.paths import check_paths, compress_writes
from slimmer.structures.rounding import parse_round_to


def build_config(**opts) -> CompressConfig:
    """Turn raw option values into the validated config (shared by compress and demo)."""
    opts["input_shape"] = parse_shape(opts.get("input_shape"))
    opts["round_to"] = parse_round_to(opts.get("round_to"))
    opts["methods"] = tuple(m.strip() for m in str(opts.pop("method")).split(",") if m.strip())
    opts["mean"] = parse_floats(opts.get("mean"), "--mean")
    opts["std"] = parse_floats(opts.get("std"), "--std")
    for key in ("inputs", "dynamic_axes"):
        if key in opts:
            opts[key] = tuple(opts[key] or ())
    return CompressConfig(**opts)


def replay_config(report_path: Path, overrides: dict[str, Any]) -> CompressConfig:
    """The config recorded in a report's ``config`` section, with the options given on the command
    line applied on top. Raises :class:`InputError` for an unreadable report."""
    try:
        recorded = json.loads(Path(report_path).read_text(encoding="utf-8"))["config"]
    except FileNotFoundError:
        raise InputError(f"--replay {report_path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--replay {report_path}: not a slimmer report with a config ({exc})") from None
    if "output" in overrides and "report" not in overrides:
        overrides["report"] = None  # beside the new output, not the recorded run's
    if "method" in overrides:
        overrides["methods"] = tuple(m.strip() for m in str(overrides.pop("method")).split(",") if m.strip())
    for key, parse in (("input_shape", parse_shape), ("round_to", parse_round_to)):
        if key in overrides:
            overrides[key] = parse(overrides[key])
    for key in ("mean", "std"):
        if key in overrides:
            overrides[key] = parse_floats(overrides[key], f"--{key}")
    for key in ("inputs", "dynamic_axes"):
        if key in overrides:
            overrides[key] = tuple(overrides[key] or ())
    return CompressConfig.from_dict(recorded, **overrides)


def run_compress(json_output: bool, debug: bool, replay: Path | None = None, given: dict | None = None, **opts) -> None:
    def go():
        from slimmer.api import run

        if replay is not None:
            config = replay_config(replay, dict(given or {}))
            check_paths([replay], compress_writes(config), force=True)  # the report replayed is an input too
        else:
            if opts.get("model") is None:
                raise ConfigError(
                    "missing the MODEL argument (a model checkpoint path)", hint="or pass --replay REPORT.json"
                )
            config = build_config(**opts)
        with stage_printer(json_output) as say:
            return run(config, progress=say)

    report = run_guarded(go, debug=debug, json_mode=json_output)
    emit_report(report, json_output)
    raise typer.Exit(report.exit_code)


def _given(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The options typed on the command line (``--replay`` overrides the recorded config with these)."""
    from typer._click.core import ParameterSource

    skip = {"replay", "json_output", "debug"}
    renamed = {"progress_every": "progress_every_s", "input_spec": "inputs", "dynamic_axis": "dynamic_axes"}
    out = {}
    for name, value in values.items():
        if name in skip:
            continue
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            out[renamed.get(name, name)] = value
    if "trust_remote_code" not in out:
        out["trust_remote_code"] = False  # never from a file: only the command line sets it
    return out


def compress_command(
    ctx: typer.Context,
    model: Path | None = options.model,
    arch: str | None = options.arch,
    input_shape: str | None = options.input_shape,
    input_spec: list[str] | None = options.input_spec,
    example_inputs: Path | None = options.example_inputs,
    dynamic_axis: list[str] | None = options.dynamic_axis,
    output_name: str | None = options.output_name,
    data: str | None = options.data,
    mean: str | None = options.mean,
    std: str | None = options.std,
    eval_samples: int | None = options.eval_samples,
    max_accuracy_drop: float | None = options.max_accuracy_drop,
    val_fraction: float = options.val_fraction,
    max_length: int | None = options.max_length,
    expect_sha256: str | None = options.expect_sha256,
    trust_remote_code: bool = options.trust_remote_code,
    task: str | None = options.task,
    method: str = options.method,
    sparsity: float | None = options.sparsity,
    macs_target: float | None = options.macs_target,
    nm: str = options.nm,
    criterion: str | None = options.criterion,
    scope: str = options.scope,
    schedule: str = options.schedule,
    round_to: str | None = options.round_to,
    prune_parts: str | None = options.prune_parts,
    speedup: float | None = options.speedup,
    latency_aware: bool = options.latency_aware,
    latency_costs: Path | None = options.latency_costs,
    sparsity_tolerance: float = options.sparsity_tolerance,
    regularizer: str | None = options.regularizer,
    reg_steps: int | None = options.reg_steps,
    search_steps: int = options.search_steps,
    finetune_steps: int = options.finetune_steps,
    batch_size: int = options.batch_size,
    lr: float | None = options.lr,
    optimizer: str = options.optimizer,
    kd: bool | None = options.kd,
    kd_weight: float | None = options.kd_weight,
    kd_layers: float = options.kd_layers,
    regrow: bool = options.regrow,
    nm_fixed_mask: bool = options.nm_fixed_mask,
    reconstruct: bool | None = options.reconstruct,
    fold_latency_gate: str = options.fold_latency_gate,
    fold_alpha_start: float = options.fold_alpha_start,
    recon_samples: int = options.recon_samples,
    augment: bool = options.augment,
    progress_every: float = options.progress_every,
    amp: bool = options.amp,
    device: str = options.device,
    opset: int | None = options.opset,
    dynamic_batch: bool = options.dynamic_batch,
    exporter: str = options.exporter,
    quantize: str | None = options.quantize,
    calibration_method: str = options.calibration_method,
    calibration_samples: int = options.calibration_samples,
    max_quantization_drop: float = options.max_quantization_drop,
    min_agreement: float = options.min_agreement,
    min_cosine: float = options.min_cosine,
    quantize_anyway: bool = options.quantize_anyway,
    measure_latency: bool = options.measure_latency,
    latency_pairs: int = options.latency_pairs,
    atol: float = options.atol,
    rtol: float = options.rtol,
    keep_failed: bool = options.keep_failed,
    output: Path | None = options.output,
    report: Path | None = options.report,
    save_pretrained: Path | None = options.save_pretrained,
    replay: Path | None = options.replay,
    seed: int = options.seed,
    force: bool = options.force,
    json_output: bool = options.json_output,
    debug: bool = options.debug,
) -> None:
    """Prune MODEL, export it to ONNX, verify the export with onnxruntime, and write a report."""
    values = dict(locals())
    values.pop("ctx")
    given = _given(ctx, values) if replay is not None else None
    if replay is not None and model is not None:
        given["model"] = model
    run_compress(
        json_output,
        debug,
        replay=replay,
        given=given,
        model=model,
        arch=arch,
        input_shape=input_shape,
        inputs=input_spec,
        example_inputs=example_inputs,
        dynamic_axes=dynamic_axis,
        output_name=output_name,
        method=method,
        sparsity=sparsity,
        nm=nm,
        macs_target=macs_target,
        round_to=round_to,
        prune_parts=prune_parts,
        latency_aware=latency_aware,
        latency_costs=latency_costs,
        speedup=speedup,
        sparsity_tolerance=sparsity_tolerance,
        schedule=schedule,
        finetune_steps=finetune_steps,
        regularizer=regularizer,
        reg_steps=reg_steps,
        search_steps=search_steps,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        kd=kd,
        kd_weight=kd_weight,
        kd_layers=kd_layers,
        regrow=regrow,
        nm_fixed_mask=nm_fixed_mask,
        reconstruct=reconstruct,
        recon_samples=recon_samples,
        fold_latency_gate=fold_latency_gate,
        fold_alpha_start=fold_alpha_start,
        amp=amp,
        progress_every_s=progress_every,
        augment=augment,
        device=device,
        criterion=criterion,
        scope=scope,
        data=data,
        mean=mean,
        std=std,
        eval_samples=eval_samples,
        max_accuracy_drop=max_accuracy_drop,
        val_fraction=val_fraction,
        max_length=max_length,
        expect_sha256=expect_sha256,
        keep_failed=keep_failed,
        output=output,
        report=report,
        opset=opset,
        dynamic_batch=dynamic_batch,
        exporter=exporter,
        quantize=quantize,
        calibration_method=calibration_method,
        calibration_samples=calibration_samples,
        max_quantization_drop=max_quantization_drop,
        min_agreement=min_agreement,
        min_cosine=min_cosine,
        quantize_anyway=quantize_anyway,
        measure_latency=measure_latency,
        latency_pairs=latency_pairs,
        atol=atol,
        rtol=rtol,
        seed=seed,
        force=force,
        trust_remote_code=trust_remote_code,
        task=task,
        save_pretrained=save_pretrained,
    )
