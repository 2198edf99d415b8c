"""The stages around pruning, each returning an immutable result: load, measure, export, verify.

:mod:`slimmer.api` chains them (with pruning and recovery in between) and assembles the report
from their results at the end. Nothing here prints or exits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimmer.config import CompressConfig
from slimmer.errors import ConfigError
from slimmer.export import files
from slimmer.export import onnx as onnx_export
from slimmer.export.verify import (
    Verification,
    agreement,
    model_outputs,
    reference_logits,
    verify_onnx,
)
from slimmer.inputs import (
    ExampleInputs,
    InputSpec,
    check_finite_inputs,
    fresh,
    load_example_file,
    parse_dynamic_axis,
    parse_input_spec,
)
from slimmer.outputs import describe, logits_of, register_output_types
from slimmer.runplan import RunPlan
from slimmer.stats import accuracy, count_macs, count_nonzero, count_params
from slimmer.train.data import DataSplits, eval_count

Progress = Callable[[str, str], None]
_ANSI = re.compile(r"\x1b\[[0-9;]*m|\[\d{1,2}(;\d{1,2})*m")


@dataclass(frozen=True)
class Loaded:
    """A model ready to prune: the module, its example inputs, and where it came from."""

    model: nn.Module
    inputs: ExampleInputs
    source: dict[str, Any]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    notes: tuple[str, ...] = ()


def load(config: CompressConfig) -> Loaded:
    """Load the checkpoint safely (:func:`slimmer.checkpoint.load_checkpoint`) and resolve its inputs.

    Raises :class:`InputError` (exit 3) for a refused checkpoint and :class:`ConfigError` (exit 2)
    when the inputs cannot be resolved."""
    from slimmer.checkpoint import load_checkpoint

    if config.model is None:
        raise ConfigError("no model to load: give a checkpoint path, or call slimmer.api.compress with a module")
    from slimmer import hf

    if hf.is_folder(config.model):  # a Hugging Face model folder: built with transformers (slimmer/hf.py)
        return hf.load_folder(config)
    loaded = load_checkpoint(
        config.model,
        arch=config.arch,
        trust_remote_code=config.trust_remote_code,
        expect_sha256=config.expect_sha256,
    )
    arch = loaded.arch
    inputs = resolve_inputs(config, loaded.model, arch.input_shape if arch and arch.input_shape else None)
    source = {
        "path": str(loaded.path),
        "sha256": loaded.sha256,
        "format": loaded.format,
        "arch": arch.name if arch else None,
    }
    return Loaded(
        model=loaded.model,
        inputs=inputs,
        source=source,
        mean=arch.mean if arch and arch.mean else None,
        std=arch.std if arch and arch.std else None,
        notes=tuple(loaded.notes),
    )


def resolve_inputs(config: CompressConfig, model: nn.Module, default_shape: tuple[int, ...] | None) -> ExampleInputs:
    """The example inputs the options describe: ``--example-inputs``, ``--input``, else one float
    input of ``--input-shape`` (or the architecture's shape). Raises :class:`ConfigError`."""
    specs: list[InputSpec] = []
    if config.example_inputs is not None:
        specs = load_example_file(config.example_inputs)
    elif config.inputs:
        specs = [parse_input_spec(t) for t in config.inputs]
    axes = [parse_dynamic_axis(t) for t in config.dynamic_axes]
    if specs:
        return ExampleInputs.bind(model, specs, axes, config.dynamic_batch)
    shape = config.input_shape or default_shape
    if not shape:
        raise ConfigError(
            "the input shape is unknown for this model",
            hint="pass --input-shape 1,3,224,224 for one float input, or --input NAME:DTYPE[SHAPE] for each input",
        )
    if axes:
        return ExampleInputs.bind(model, [InputSpec("input", torch.float32, tuple(shape))], axes, config.dynamic_batch)
    return ExampleInputs.single(tuple(shape), config.dynamic_batch)


def from_module(model: nn.Module, example_inputs: Any, config: CompressConfig) -> Loaded:
    """An in-memory model and its example inputs (a tensor, a tuple of tensors, a dict of named
    tensors, or :class:`ExampleInputs`) as a :class:`Loaded` stage result. ``model`` (the caller's copy) is
    put in eval mode, as a loaded checkpoint is: a module left in training mode would otherwise update its
    BatchNorm statistics and apply dropout in the forwards that measure it before pruning."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"compress() needs an nn.Module, got {type(model).__name__}")
    model.eval()
    if isinstance(example_inputs, ExampleInputs):
        inputs = example_inputs
    else:
        axes = [parse_dynamic_axis(t) for t in config.dynamic_axes]
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        if isinstance(example_inputs, dict):
            named = list(example_inputs.items())
        elif isinstance(example_inputs, (tuple, list)):
            from slimmer.inputs import forward_parameters

            params = [p.name for p in forward_parameters(model)]
            if len(params) < len(example_inputs):
                raise ConfigError(f"forward() of {type(model).__name__} takes {len(params)} inputs, not more")
            named = list(zip(params, example_inputs, strict=False))
        else:
            raise ConfigError("example_inputs: give a tensor, a tuple of tensors, or a dict of named tensors")
        specs = []
        for name, value in named:
            if not isinstance(value, torch.Tensor) or value.ndim == 0:
                raise ConfigError(f"example input {name!r} must be a tensor with a batch dimension")
            specs.append(InputSpec(name, value.dtype, tuple(value.shape), value=value.detach().cpu().contiguous()))
        check_finite_inputs(tuple(s.value for s in specs), [s.name for s in specs])  # finite, at least one sample
        inputs = ExampleInputs.bind(model, specs, axes, config.dynamic_batch)
    return Loaded(
        model=model, inputs=inputs, source={"path": None, "sha256": None, "format": "nn.Module", "arch": None}
    )


def check_forward(model: nn.Module, inputs: ExampleInputs, args: tuple[Any, ...]) -> Any:
    """Run the model once on ``args``; a failure is a wrong input description, not a bug. Registers
    the output's types with the pytree and returns the output. Raises :class:`ConfigError`."""
    try:
        with torch.no_grad():
            out = model(*fresh(args))
    except Exception as exc:  # noqa: BLE001
        text = _ANSI.sub("", str(exc)).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        if len(inputs.specs) == 1 and inputs.first.name == "input":  # --input-shape: the user's shape
            given = f"an input of shape {tuple(inputs.first.shape)}"
        else:
            given = "the inputs " + ", ".join(s.describe() for s in inputs.specs)
        hint = (
            "check --input-shape (batch first, e.g. 1,3,224,224); a model with several inputs or integer token "
            "ids takes --input NAME:DTYPE[SHAPE][:LOW..HIGH] (repeatable) or --example-inputs FILE"
        )
        if inputs.single_float and any(isinstance(m, nn.Embedding) for m in model.modules()):
            hint = "this model starts with an embedding: give integer ids, e.g. --input input_ids:int64[1,128]:0..999"
        raise ConfigError(f"the model fails on {given}: {first}", hint=hint) from None
    register_output_types(out)
    return out


@dataclass(frozen=True)
class Measured:
    """What was measured before pruning: sizes, the output's leaves, accuracy on held-out data."""

    params: int
    nonzero: int
    macs: int
    outputs: dict[str, list[int]]
    accuracy: float | None
    eval_x: torch.Tensor | None = field(default=None, repr=False)
    eval_y: torch.Tensor | None = field(default=None, repr=False)
    evaluation: dict[str, Any] | None = None  # the report's accuracy.evaluation: samples used, split size and kind
    eval_feed: Callable[[torch.Tensor], tuple] | None = field(default=None, repr=False)  # text: packed inputs


def measure(
    model: nn.Module, args: tuple[Any, ...], out: Any, data: DataSplits | None, config: CompressConfig
) -> Measured:
    """Sizes, MACs at batch 1, the output leaves and accuracy before pruning."""
    eval_x = eval_y = evaluation = None
    if data is not None:
        n = eval_count(data, config.eval_samples)
        eval_x = data.eval.x[:n]
        eval_y = data.eval.y[:n] if data.eval.y is not None else None
        split = "official test split" if data.official_split else f"held out ({config.val_fraction:g} of --data)"
        evaluation = {"samples": n, "split_size": len(data.eval), "split": split}
    acc = None
    if eval_y is not None:
        logits_of(out, config.output_name)  # an unknown --output-name fails here, before any work
        acc = accuracy(model, eval_x, eval_y, output_name=config.output_name, feed=data.eval.feed)
    return Measured(
        params=count_params(model),
        nonzero=count_nonzero(model),
        macs=count_macs(model, args),
        outputs=describe(out),
        accuracy=acc,
        eval_x=eval_x,
        eval_y=eval_y,
        evaluation=evaluation,
        eval_feed=data.eval.feed if data is not None else None,
    )


@dataclass(frozen=True)
class Verified:
    """The export checked in onnxruntime, and the pruned model compared with the original."""

    verification: Verification
    temp_path: Path
    opset: int
    size_bytes: int
    warnings: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        v = self.verification
        return {
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


def verification_inputs(inputs: ExampleInputs, plan: RunPlan, seed: int) -> list[tuple[Any, ...]]:
    """One argument tuple per verified batch size and sequence-length scale, each freshly seeded."""
    out = []
    k = 1
    for scale in plan.verify_length_scales:
        for b in plan.verify_batches:
            out.append(inputs.args(b, seed + k, scale))
            k += 1
    return out


@dataclass(frozen=True)
class Reference:
    """The original's logits on the agreement inputs, taken before pruning (no dense copy kept for it)."""

    inputs: Any
    logits: torch.Tensor


def dense_reference(
    model: nn.Module, measured: Measured, example: tuple[Any, ...], out: Any, config: CompressConfig
) -> Reference:
    """``model``'s (still dense) logits on the agreement inputs: the first 256 held-out samples when
    there is data, else the example the model was checked on (positional arguments), whose output
    ``out`` (from :func:`check_forward`) is reused: no second forward of the dense model."""
    if measured.eval_x is None:
        return Reference(example, logits_of(out, config.output_name).detach().to(torch.float64, copy=True).cpu())
    compare: Any = measured.eval_x[:256]
    compare = measured.eval_feed(compare) if measured.eval_feed is not None else compare
    return Reference(compare, reference_logits(model, compare, config.output_name))


def export_and_verify(
    model: nn.Module,
    reference: Reference,
    inputs: ExampleInputs,
    example: tuple[Any, ...],
    plan: RunPlan,
    measured: Measured,
    config: CompressConfig,
) -> Verified:
    """Export ``model`` to a temporary file beside the output and verify it; the caller commits or
    deletes the temporary file. ``reference`` is the original's output from :func:`dense_reference`. Raises
    :class:`ExportError` (exit 4) when the export fails.

    The model runs once per verification batch: those outputs name the graph's outputs and are what onnxruntime
    is compared with."""
    batches = verification_inputs(inputs, plan, config.seed)
    outputs = model_outputs(model.eval(), batches)
    exported = onnx_export.export_onnx(
        model,
        example,
        config.output_path,
        opset=config.opset,
        dynamic_batch=config.dynamic_batch,
        exporter=config.exporter,
        inputs=inputs,
        output=outputs[0],
    )
    try:
        verification = verify_onnx(
            exported.temp_path, model, batches, atol=config.atol, rtol=config.rtol, outputs=outputs
        )
        # one forward on the reference's own inputs: an output may mix the rows of a batch (CLIP's (B, B) logits,
        # a batch-centred output), so logits stitched from the verification batches would not be comparable
        verification.cosine, verification.top1_agreement = agreement(
            reference.logits, model, reference.inputs, config.output_name
        )
    except BaseException:
        exported.temp_path.unlink(missing_ok=True)
        raise
    return Verified(
        verification=verification,
        temp_path=exported.temp_path,
        opset=exported.opset,
        size_bytes=exported.size_bytes,
        warnings=tuple(exported.warnings) + tuple(verification.warnings),
    )


LATENCY_WARMUP = 5


def measure_latency(
    original: nn.Module, inputs: ExampleInputs, example: tuple[Any, ...], pruned_onnx: Path, config: CompressConfig
) -> dict[str, Any]:
    """Paired, interleaved onnxruntime latency of the original model's export against the pruned
    file (CPU, 1 thread, batch 1; :func:`slimmer.export.bench.paired_latency`): medians in ms, the
    median per-pair speedup (> 1: the pruned file is faster) and both file sizes in bytes.

    The original is exported to a temporary folder that is removed afterwards."""
    import tempfile

    from slimmer.export.bench import paired_latency

    with tempfile.TemporaryDirectory(prefix="slimmer-latency-") as tmp:
        dense = Path(tmp) / "original.onnx"
        exported = onnx_export.export_onnx(
            original, example, dense, dynamic_batch=config.dynamic_batch, exporter=config.exporter, inputs=inputs
        )
        files.commit(exported.temp_path, dense)
        timed = paired_latency(
            dense, pruned_onnx, warmup=LATENCY_WARMUP, pairs=config.latency_pairs, threads=1, batch=1, seed=config.seed
        )
        size_before = dense.stat().st_size
    return {
        "before": timed.a.p50_ms,
        "after": timed.b.p50_ms if timed.b is not None else None,
        "speedup": timed.speedup,
        "pairs": config.latency_pairs,
        "threads": 1,
        "batch": 1,
        "size_bytes_before": size_before,
        "size_bytes_after": Path(pruned_onnx).stat().st_size,
    }


def onnx_info(path: Path, opset: int) -> dict[str, Any]:
    data = Path(path).read_bytes()
    return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "opset": opset, "size_bytes": len(data)}
