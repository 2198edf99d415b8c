"""Checks on what a run starts from — the original model's outputs, ``--data`` and its labels, the
normalization — made once, before anything is pruned or computed, so that a fault in the sources is
named as such (and not blamed on the export or the verification later).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from slimmer.errors import ConfigError, InputError

CHECK_SAMPLES = 32
"""Samples of ``--data`` the original model is run on to check its outputs are finite."""


def first_float_output(out: Any) -> torch.Tensor | None:
    """The first floating-point tensor in a model's output (a tensor, or nested tuples/lists/dicts)."""
    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else ()
    for v in values:
        found = first_float_output(v)
        if found is not None:
            return found
    return None


def all_float_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else ()
    return [t for v in values for t in all_float_outputs(v)]


def check_normalization(
    mean: tuple[float, ...] | None, std: tuple[float, ...] | None, input_shape: tuple[int, ...]
) -> None:
    """``--mean``/``--std`` hold one value or one per input channel (``input_shape[1]`` for images).

    Raises :class:`ConfigError` (exit 2) naming the option, its count and the channel count.
    """
    image = len(input_shape) == 4
    channels = input_shape[1] if image else input_shape[-1]
    what = "channels" if image else "features in the last dimension"
    for option, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) not in (1, channels):
            raise ConfigError(
                f"{option} has {len(values)} values, but the model's input has {channels} {what} "
                f"(input shape {tuple(input_shape)})",
                hint=f"give one value, or {channels} comma-separated values",
            )


def check_sources(model: nn.Module, example: Any, data: Any, data_spec: str | None, out: Any = None) -> None:
    """Before any work: ``--data`` is finite, its labels fit the model's classes, and the original
    model's own outputs are finite on the example input and on a few data samples.

    ``data`` is a :class:`slimmer.train.data.DataSplits` or ``None``; ``out``, when given, is the
    model's output on ``example`` already computed (no second forward). Raises :class:`InputError`
    (exit 3) naming the data file or the model as the source of the fault.
    """
    if data is not None:
        values = samples = 0
        for split in (data.train, data.eval):
            bad = ~torch.isfinite(split.x)
            values += int(bad.sum())
            samples += int(bad.flatten(1).any(1).sum()) if bad.ndim > 1 else int(bad.sum())
        if values:
            raise InputError(
                f"--data {data_spec}: the inputs hold {values} non-finite values (NaN/Inf), in {samples} samples",
                hint="clean the data file (or check --mean/--std); the model cannot be judged on NaN inputs",
            )
    from slimmer.inputs import as_args, fresh

    args = as_args(example)
    if out is None:
        with torch.no_grad():
            out = model(*fresh(args))
    shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))
    _check_finite_outputs(out, f"a random input of shape {shapes}")
    logits = first_float_output(out)
    if data is None:
        return
    sample = data.eval.x[:CHECK_SAMPLES] if len(data.eval) else data.train.x[:CHECK_SAMPLES]
    if len(sample):
        try:
            with torch.no_grad():
                on_data = model(*data.eval.args(sample) if len(data.eval) else data.train.args(sample))
        except Exception:  # noqa: BLE001 - e.g. a model fixed to one batch size: the later stages say so
            on_data = None
        if on_data is not None:
            _check_finite_outputs(on_data, f"{len(sample)} samples of --data {data_spec}")
    if logits is None or logits.ndim != 2:
        return
    classes = int(logits.shape[1])
    if classes < 2:  # a single score: labels are not class indices of it
        return
    labels = [split.y for split in (data.train, data.eval) if split.y is not None and len(split.y)]
    if labels:
        low, high = min(int(y.min()) for y in labels), max(int(y.max()) for y in labels)
        if low < 0 or high >= classes:
            raise InputError(
                f"--data {data_spec}: labels range over {low}..{high}, but the model has {classes} outputs "
                f"(classes 0..{classes - 1})",
                hint="check that the data and the checkpoint belong together (the label encoding and the number "
                "of classes)",
            )
    names = getattr(data.train, "classes", None)
    if names and len(names) > classes:
        raise InputError(
            f"--data {data_spec}: {len(names)} class folders, but the model has {classes} outputs",
            hint="check that the data and the checkpoint belong together",
        )


def _check_finite_outputs(out: Any, on_what: str) -> None:
    for i, t in enumerate(all_float_outputs(out)):
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            raise InputError(
                f"the original model itself produces non-finite outputs (output {i}: {int(bad.sum())} of "
                f"{t.numel()} values NaN/Inf) on {on_what}, before any pruning",
                hint="the checkpoint or the model's forward is at fault (e.g. log or sqrt of negative values, "
                "NaN in running statistics); an export cannot be verified against NaN",
            )


def physical_memory_bytes() -> int | None:
    """Total physical memory of this machine, or None when the system does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_input_size(dims: tuple[int, ...], option: str = "--input-shape") -> None:
    """Refuse an input shape whose example batches (float32, up to 3 samples for verification) would
    take more than a quarter of this machine's memory: allocating it would fail or start swapping
    before anything useful happened. Raises :class:`ConfigError` (exit 2) with the size in GB."""
    elements = math.prod(max(d, 1) for d in dims[1:]) * max(dims[0], 3)
    need = elements * 4
    total = physical_memory_bytes()
    if elements >= 2**62 or (total is not None and need > total // 4):
        have = f"; this machine has {total / 1e9:.1f} GB" if total else ""
        raise ConfigError(
            f"{option} {','.join(map(str, dims))}: the example inputs alone would need {need / 1e9:.3g} GB{have}",
            hint="check the shape (batch first, e.g. 1,3,224,224)",
        )
