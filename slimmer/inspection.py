"""The read-only verbs: ``inspect_model`` (what a checkpoint holds, and what blocks its channels)
and ``verify_exported`` (re-check an ONNX graph against the checkpoint it came from)."""

from __future__ import annotations

from pathlib import Path

import torch

from slimmer.api import VERIFY_BATCHES, check_forward, example_input, load
from slimmer.config import CompressConfig
from slimmer.export.verify import Verification, verify_onnx
from slimmer.stats import count_macs, count_params
from slimmer.structures.unstructured import prunable_weights


def inspect_model(
    path: Path, *, arch: str | None = None, input_shape: str | None = None, trust_remote_code: bool = False
) -> dict:
    """Parameters, MACs and prunable layers of a checkpoint, as a plain dict."""
    from slimmer.config import parse_shape

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
    return {
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
    beside = [p.name for p in (onnx_path.with_name(onnx_path.name + s) for s in (".plan.json", ".report.json"))
              if p.is_file()]
    where = f" ({' and '.join(beside)} beside it)" if beside else ""
    return (
        f"{onnx_path} is a pruned graph: {what}. A pruned graph cannot equal the unpruned checkpoint's outputs; "
        f"verify it against the pruned model instead (the checkpoint of the pruned model, or the pruning plan"
        f"{where}); the check compress made at export time is recorded in its report"
    )
