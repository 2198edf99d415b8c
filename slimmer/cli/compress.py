"""``slimmer compress MODEL``: load → prune → fine-tune → export → verify → report."""

from __future__ import annotations

from pathlib import Path

import typer

from slimmer.cli.render import emit_report, run_guarded, stage_printer
from slimmer.config import CompressConfig, parse_floats, parse_shape


def build_config(**opts) -> CompressConfig:
    """Turn raw option values into the validated config (shared by compress and demo)."""
    opts["input_shape"] = parse_shape(opts.get("input_shape"))
    opts["methods"] = tuple(m.strip() for m in str(opts.pop("method")).split(",") if m.strip())
    opts["mean"] = parse_floats(opts.get("mean"), "--mean")
    opts["std"] = parse_floats(opts.get("std"), "--std")
    return CompressConfig(**opts)


def run_compress(json_output: bool, debug: bool, **opts) -> None:
    def go():
        from slimmer.api import compress

        config = build_config(**opts)
        return compress(config, progress=stage_printer(json_output))

    report = run_guarded(go, debug=debug, json_mode=json_output)
    emit_report(report, json_output)
    raise typer.Exit(report.exit_code)


def compress_command(
    model: Path = typer.Argument(..., help="checkpoint: .pt/.pth/.bin state_dict or .safetensors"),
    arch: str | None = typer.Option(
        None, "--arch", help="architecture: built-in name, torchvision:NAME, timm:NAME or pkg.module:callable"
    ),
    input_shape: str | None = typer.Option(
        None, "--input-shape", help="e.g. 1,3,224,224 (default: the architecture's)"
    ),
    method: str = typer.Option("unstructured", "--method", help="unstructured or channel; comma-separated to combine"),
    sparsity: float | None = typer.Option(
        None, "--sparsity", help="fraction of weights (or channels) to remove, in [0, 1); default 0.5"
    ),
    nm: str = typer.Option("2:4", "--nm", help="N:M pattern for --method nm"),
    macs_target: float | None = typer.Option(
        None, "--macs-target", help="channel: keep this fraction of the MACs, in (0, 1]"
    ),
    round_to: int | None = typer.Option(
        None,
        "--round-to",
        help="channel: kept channel counts are multiples of this (default 16, measured fastest in onnxruntime)",
    ),
    speedup: float | None = typer.Option(
        None,
        "--speedup",
        help="channel: prune until onnxruntime (CPU, 1 thread, batch 1) measures this speedup, e.g. 2.0 "
        "(latency-aware ranking; exit 5 when it cannot be reached)",
    ),
    latency_aware: bool = typer.Option(
        False,
        "--latency-aware",
        help="channel: prune first the channels that cost more time than their MACs suggest (depthwise convs, "
        "wide activations at high resolution); same MACs target",
    ),
    sparsity_tolerance: float = typer.Option(
        0.01, "--sparsity-tolerance", help="exit 5 when achieved sparsity falls short by more"
    ),
    criterion: str = typer.Option(
        "magnitude", "--criterion", help="importance criterion: magnitude, lamp, random; channel: also l2, bn-scale"
    ),
    scope: str = typer.Option("global", "--scope", help="global or layer"),
    schedule: str = typer.Option(
        "oneshot", "--schedule", help="oneshot, iterative, gradual or cyclical (spread over fine-tuning)"
    ),
    finetune_steps: int = typer.Option(0, "--finetune-steps", help="optimizer steps of fine-tuning (needs --data)"),
    regularizer: str | None = typer.Option(
        None,
        "--regularizer",
        help="train with a penalty before the final pruning: slimming (channel), greg (unstructured or channel), "
        "greg2 or halo (unstructured); needs --data",
    ),
    reg_steps: int | None = typer.Option(
        None, "--reg-steps", help="optimizer steps of the --regularizer phase (default: as many as --finetune-steps)"
    ),
    batch_size: int = typer.Option(128, "--batch-size", help="fine-tuning batch size"),
    lr: float = typer.Option(0.01, "--lr", help="fine-tuning peak learning rate (cosine with warm-up)"),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd (Nesterov momentum) or adamw"),
    kd: bool = typer.Option(True, "--kd/--no-kd", help="distill from the original model while fine-tuning"),
    kd_weight: float = typer.Option(
        0.5,
        "--kd-weight",
        help="with labels, distillation's share of the loss, in (0, 1]; the rest is cross-entropy "
        "(without labels: distillation only)",
    ),
    kd_layers: float = typer.Option(
        0.0,
        "--kd-layers",
        help="weight of layer-wise distillation: every Conv/Linear output also learns the original's "
        "(normalized squared error); 0 = logits only",
    ),
    regrow: bool = typer.Option(
        False,
        "--regrow/--no-regrow",
        help="unstructured: fine-tune from the weights before masking and re-choose each layer's largest "
        "weights every step (pruned by mistake can come back; counts per layer stay)",
    ),
    reconstruct: bool | None = typer.Option(
        None,
        "--reconstruct/--no-reconstruct",
        help="re-solve each pruned layer by least squares to match the original's outputs (needs --data); "
        "default: only when no fine-tuning follows",
        show_default=False,
    ),
    augment: bool = typer.Option(
        False,
        "--augment/--no-augment",
        help="pad-crop-flip augmentation while fine-tuning (off by default: a brief fine-tune recovers more "
        "accuracy on the images as they are)",
    ),
    progress_every: float = typer.Option(10.0, "--progress-every", help="seconds between fine-tuning progress lines"),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="mixed precision when fine-tuning on CUDA (ignored on CPU)"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda or cuda:N"),
    data: str | None = typer.Option(None, "--data", help=".npz (x, y), a folder of IDX files, or fashion-mnist"),
    mean: str | None = typer.Option(None, "--mean", help="input normalization mean (one value or per channel)"),
    std: str | None = typer.Option(None, "--std", help="input normalization std (one value or per channel)"),
    eval_samples: int = typer.Option(2000, "--eval-samples", help="held-out samples used for accuracy"),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="fraction of a .npz held out for evaluation"),
    expect_sha256: str | None = typer.Option(None, "--expect-sha256", help="refuse a checkpoint whose sha256 differs"),
    keep_failed: bool = typer.Option(
        False, "--keep-failed", help="keep an artifact that failed verification, marked as failed"
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="ONNX file (default: <model stem>.slim.onnx beside the model)"
    ),
    report: Path | None = typer.Option(None, "--report", help="JSON report (default: <output>.report.json)"),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's)"),
    dynamic_batch: bool = typer.Option(
        True, "--dynamic-batch/--static-batch", help="dynamic batch axis in the ONNX graph"
    ),
    exporter: str = typer.Option(
        "dynamo", "--exporter", help="dynamo (torch.export-based, default) or legacy (TorchScript tracing)"
    ),
    atol: float = typer.Option(1e-4, "--atol", help="verification absolute tolerance"),
    rtol: float = typer.Option(1e-3, "--rtol", help="verification relative tolerance"),
    seed: int = typer.Option(
        0,
        "--seed",
        help="seed for every random choice; byte-identical files need the same seed, inputs, machine, versions "
        "and thread count (OMP_NUM_THREADS)",
    ),
    force: bool = typer.Option(False, "--force", help="allow replacing existing outputs"),
    json_output: bool = typer.Option(False, "--json", help="print exactly one JSON object (the report) on stdout"),
    trust_remote_code: bool = typer.Option(
        False,
        "--trust-remote-code",
        help="allow formats that run code when loaded (pickled modules, TorchScript, .pt2)",
    ),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Prune MODEL, export it to ONNX, verify the export with onnxruntime, and write a report."""
    run_compress(
        json_output,
        debug,
        model=model,
        arch=arch,
        input_shape=input_shape,
        method=method,
        sparsity=sparsity,
        nm=nm,
        macs_target=macs_target,
        round_to=round_to,
        latency_aware=latency_aware,
        speedup=speedup,
        sparsity_tolerance=sparsity_tolerance,
        schedule=schedule,
        finetune_steps=finetune_steps,
        regularizer=regularizer,
        reg_steps=reg_steps,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        kd=kd,
        kd_weight=kd_weight,
        kd_layers=kd_layers,
        regrow=regrow,
        reconstruct=reconstruct,
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
        val_fraction=val_fraction,
        expect_sha256=expect_sha256,
        keep_failed=keep_failed,
        output=output,
        report=report,
        opset=opset,
        dynamic_batch=dynamic_batch,
        exporter=exporter,
        atol=atol,
        rtol=rtol,
        seed=seed,
        force=force,
        trust_remote_code=trust_remote_code,
    )
