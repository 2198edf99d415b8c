"""The read-only verbs: ``inspect_model`` (what a checkpoint holds, and what blocks its channels)
and ``verify_exported`` (re-check an ONNX graph against the checkpoint it came from)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from slimmer.api import VERIFY_BATCHES, check_forward, example_input, load
from slimmer.checkpoint import LoadedModel
from slimmer.config import CompressConfig
from slimmer.errors import ConfigError
from slimmer.export.verify import Verification, verify_onnx
from slimmer.limit import LimitConfig
from slimmer.stats import count_macs, count_params
from slimmer.structures.unstructured import prunable_weights


def inspect_model(
    path: Path,
    *,
    arch: str | None = None,
    input_shape: str | None = None,
    trust_remote_code: bool = False,
    limit: LimitConfig | None = None,
    data: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Parameters, MACs and prunable layers of a checkpoint, as a plain dict; with ``limit``, also the
    predicted pruning limit (:func:`slimmer.limit.estimate_limit`) on the training split of ``data``,
    under the key ``"limit"``. Raises :class:`ConfigError` when ``limit`` and ``data`` come apart."""
    from slimmer.config import parse_shape

    _check_limit_options(limit, data)
    config = CompressConfig(
        model=Path(path), arch=arch, input_shape=parse_shape(input_shape), trust_remote_code=trust_remote_code
    )
    loaded, shape = load(config)
    model = loaded.model
    layers = [
        {
            "name": name,
            "shape": list(p.shape),
            "numel": p.numel(),
            "sparsity": 1.0 - int(torch.count_nonzero(p)) / p.numel(),
        }
        for name, p in prunable_weights(model).items()
    ]
    from slimmer.graph.groups import build_groups

    example = example_input(shape, 2, 0)
    check_forward(model, example)
    groups = build_groups(model, (example,))
    info = {
        "input": {
            "path": str(loaded.path),
            "sha256": loaded.sha256,
            "format": loaded.format,
            "arch": loaded.arch.name if loaded.arch else None,
        },
        "input_shape": list(shape),
        "params": count_params(model),
        "macs": count_macs(model, example),
        "layers": layers,
        "groups": [
            {"id": g.id, "channels": g.channels, "layers": g.layers, "prunable": g.prunable, "blocked_by": g.blocked_by}
            for g in groups.groups
        ],
    }
    if limit is not None and data is not None:
        info["limit"] = _limit(loaded, shape, data, limit, progress)
    return info


def _check_limit_options(limit: LimitConfig | None, data: str | None) -> None:
    if limit is not None and data is None:
        raise ConfigError(
            "--limit needs --data: the estimate uses the training loss and its Hessian",
            hint="pass labelled training data, e.g. --data fashion-mnist or --data train.npz",
        )
    if limit is None and data is not None:
        raise ConfigError("--data is only read with --limit", hint="add --limit, or drop --data")


def _limit(
    loaded: LoadedModel, shape: tuple[int, ...], data: str, config: LimitConfig, progress: Callable[[str], None] | None
) -> dict:
    """The limit estimate on the training split of ``data``, normalized with the architecture's mean/std."""
    from slimmer.limit import estimate_limit
    from slimmer.train.data import load_data

    mean = loaded.arch.mean if loaded.arch and loaded.arch.mean else (0.0,)
    std = loaded.arch.std if loaded.arch and loaded.arch.std else (1.0,)
    splits = load_data(data, shape, mean, std, seed=config.seed)
    return estimate_limit(loaded.model, splits.train, config, progress=progress).to_dict()


def verify_exported(
    model_path: Path,
    onnx_path: Path,
    *,
    arch: str | None = None,
    input_shape: str | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    seed: int = 0,
    trust_remote_code: bool = False,
) -> Verification:
    """Compare an ONNX file with the checkpoint it was exported from, at two batch sizes."""
    from slimmer.config import parse_shape
    from slimmer.errors import InputError
    from slimmer.export.verify import check_external_data

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: no such ONNX file")
    check_external_data(onnx_path)
    config = CompressConfig(
        model=Path(model_path),
        arch=arch,
        input_shape=parse_shape(input_shape),
        atol=atol,
        rtol=rtol,
        seed=seed,
        trust_remote_code=trust_remote_code,
    )
    loaded, shape = load(config)
    inputs = [example_input(shape, b, seed + i + 1) for i, b in enumerate(VERIFY_BATCHES)]
    v = verify_onnx(onnx_path, loaded.model, inputs, atol=atol, rtol=rtol)
    return v
