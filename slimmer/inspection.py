"""The read-only verbs: ``inspect_model`` (what a checkpoint holds, and what blocks its channels)
and ``verify_exported`` (re-check an ONNX graph against the checkpoint it came from)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from slimmer.config import CompressConfig
from slimmer.errors import ConfigError
from slimmer.export.verify import Verification, verify_onnx
from slimmer.limit import LimitConfig
from slimmer.runplan import VERIFY_BATCHES
from slimmer.stages import Loaded, check_forward, load
from slimmer.stats import count_macs, count_params
from slimmer.structures.unstructured import prunable_weights


def inspect_model(
    path: Path,
    *,
    arch: str | None = None,
    input_shape: str | None = None,
    trust_remote_code: bool = False,
    inputs: tuple[str, ...] = (),
    example_inputs: Path | None = None,
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
        model=Path(path),
        arch=arch,
        input_shape=parse_shape(input_shape),
        trust_remote_code=trust_remote_code,
        inputs=tuple(inputs),
        example_inputs=example_inputs,
    )
    loaded = load(config)
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

    example = loaded.inputs.args(2, 0)
    check_forward(model, loaded.inputs, example)
    groups = build_groups(model, example)
    info = {
        "input": loaded.source,
        "input_shape": list(loaded.inputs.first.shape) if len(loaded.inputs.slots) == 1 else None,
        "inputs": loaded.inputs.to_dict(),
        "params": count_params(model),
        "macs": count_macs(model, example),
        "layers": layers,
        "groups": [
            {"id": g.id, "channels": g.channels, "layers": g.layers, "prunable": g.prunable, "blocked_by": g.blocked_by}
            for g in groups.groups
        ],
    }
    if limit is not None and data is not None:
        info["limit"] = _limit(loaded, data, limit, progress)
    return info


def _check_limit_options(limit: LimitConfig | None, data: str | None) -> None:
    if limit is not None and data is None:
        raise ConfigError(
            "--limit needs --data: the estimate uses the training loss and its Hessian",
            hint="pass labelled training data, e.g. --data fashion-mnist or --data train.npz",
        )
    if limit is None and data is not None:
        raise ConfigError("--data is only read with --limit", hint="add --limit, or drop --data")


def _limit(loaded: Loaded, data: str, config: LimitConfig, progress: Callable[[str], None] | None) -> dict:
    """The limit estimate on the training split of ``data``, normalized with the architecture's mean/std."""
    from slimmer.limit import estimate_limit
    from slimmer.train.data import load_data

    if not loaded.inputs.single_float:
        raise ConfigError("--limit reads images from --data: it needs a model with one float input")
    splits = load_data(data, loaded.inputs.first.shape, loaded.mean or (0.0,), loaded.std or (1.0,), seed=config.seed)
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
    loaded = load(config)
    inputs = [loaded.inputs.args(b, seed + i + 1) for i, b in enumerate(VERIFY_BATCHES)]
    v = verify_onnx(onnx_path, loaded.model, inputs, atol=atol, rtol=rtol)
    if not v.passed:
        note = pruned_graph_note(onnx_path, loaded.model)
        if note:
            v.warnings.insert(0, note)
    return v


def pruned_graph_note(onnx_path: Path, model: torch.nn.Module) -> str | None:
    """When verification failed: say so if the graph is a pruned one (fewer weights, or many more zero
    weights, than the checkpoint), which cannot equal the unpruned checkpoint's outputs."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
        arrays = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    except Exception:  # noqa: BLE001 - only a note: never fail verification over it
        return None
    # weight matrices and kernels only (2-D and up): folding BatchNorm into a conv changes biases, not these
    arrays = [a for a in arrays if a.ndim >= 2]
    params = [p.detach() for p in model.parameters() if p.ndim >= 2]
    g_total = sum(a.size for a in arrays)
    g_zero = sum(int(np.count_nonzero(a == 0)) for a in arrays)
    m_total = sum(p.numel() for p in params)
    m_zero = sum(int((p == 0).sum()) for p in params)
    if not g_total or not m_total:
        return None
    if g_total < 0.98 * m_total:
        what = f"it holds {g_total:,} weights, the checkpoint {m_total:,} (channels were removed)"
    elif g_zero / g_total > m_zero / m_total + 0.05:
        what = f"{g_zero / g_total:.0%} of its weights are zero, {m_zero / m_total:.0%} of the checkpoint's"
    else:
        return None
    beside = [
        p.name for p in (onnx_path.with_name(onnx_path.name + s) for s in (".plan.json", ".report.json")) if p.is_file()
    ]
    where = f" ({' and '.join(beside)} beside it)" if beside else ""
    return (
        f"{onnx_path} is a pruned graph: {what}. A pruned graph cannot equal the unpruned checkpoint's outputs; "
        f"verify it against the pruned model instead (the checkpoint of the pruned model, or the pruning plan"
        f"{where}); the check compress made at export time is recorded in its report"
    )
