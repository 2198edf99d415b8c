"""Verification: the ONNX graph under onnxruntime against the torch model it came from.

Every output is checked for finiteness first (NaN never equals NaN), then elementwise with
``|onnx − torch| ≤ atol·max(1, scale) + rtol·|torch|``, where ``scale`` is the output's largest
magnitude: float32 rounding grows with the magnitude of the whole output (a logit near zero in an
output that reaches 1e9 carries an error of ~1e2), so the absolute tolerance follows the output's
scale once it exceeds 1 and is plain ``atol`` below that. ``max_rel_diff`` is the largest absolute difference
divided by the output's scale (its largest magnitude), so it stays meaningful near zero.
The pruned model is also compared with the original: cosine similarity and top-1 agreement.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from slimmer.errors import InputError
from slimmer.paths import ort_model_arg

PROVIDER = "CPUExecutionProvider"


@dataclass
class OutputCheck:
    """One output at one batch size."""

    output: str
    batch_size: int
    max_abs_diff: float
    max_rel_diff: float
    finite: bool
    passed: bool
    reason: str = ""


@dataclass
class Verification:
    passed: bool
    max_abs_diff: float
    max_rel_diff: float
    atol: float
    rtol: float
    provider: str
    checks: list[OutputCheck] = field(default_factory=list)
    cosine: float | None = None
    top1_agreement: float | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["checks"] = [asdict(c) for c in self.checks]
        return d

    def failure_summary(self) -> str:
        bad = [c for c in self.checks if not c.passed]
        if not bad:
            return ""
        c = bad[0]
        return (
            f"output {c.output!r} at batch {c.batch_size}: {c.reason} "
            f"(max abs diff {c.max_abs_diff:.3g}, max rel diff {c.max_rel_diff:.3g}, "
            f"atol {self.atol:g}, rtol {self.rtol:g})"
        )


def check_external_data(path: Path) -> None:
    """Refuse an ONNX file whose external data points outside its folder, through a link, or nowhere."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            f"{path} is not a readable ONNX file: {str(exc).splitlines()[0] if str(exc) else exc}"
        ) from None
    base = path.resolve().parent
    for tensor in _all_initializers(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not location or os.path.isabs(location) or ".." in Path(location).parts:
            raise InputError(
                f"{path}: tensor {tensor.name!r} points to external data {location!r} outside its folder; refused"
            )
        target = base / location
        if target.is_symlink():
            raise InputError(f"{path}: external data {location!r} is a symbolic link; refused")
        if not target.is_file():
            raise InputError(f"{path}: external data file {location!r} is missing")


def _all_initializers(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_initializers(attr.g)
            for g in attr.graphs:
                yield from _all_initializers(g)


def open_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(ort_model_arg(path), sess_options=opts, providers=[PROVIDER])
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None


def _as_list(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    if isinstance(out, (list, tuple)):
        flat: list[torch.Tensor] = []
        for o in out:
            flat.extend(_as_list(o))
        return flat
    return []


def torch_outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.detach().float().cpu().numpy() for t in _as_list(model(x))]


def compare(name: str, batch: int, got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> OutputCheck:
    """Compare one output: finiteness, then shape, then ``|got−want| ≤ atol·max(1, scale) + rtol·|want|``."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    finite = bool(np.isfinite(got).all() and np.isfinite(want).all())
    if not finite:
        which = "onnxruntime" if not np.isfinite(got).all() else "torch"
        return OutputCheck(
            name, batch, float("inf"), float("inf"), False, False, f"non-finite values in the {which} output"
        )
    if got.shape != want.shape:
        return OutputCheck(
            name, batch, float("inf"), float("inf"), True, False, f"shape {got.shape} != torch {want.shape}"
        )
    diff = np.abs(got - want)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(want).max()) if want.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    ok = bool((diff <= atol * max(1.0, scale) + rtol * np.abs(want)).all())
    return OutputCheck(name, batch, max_abs, max_rel, True, ok, "" if ok else "outputs differ beyond tolerance")


def verify_onnx(
    onnx_path: Path,
    model: nn.Module,
    inputs: list[torch.Tensor],
    *,
    atol: float,
    rtol: float,
) -> Verification:
    """Run ``onnx_path`` in onnxruntime on each input batch and compare with ``model``."""
    session = open_session(onnx_path)
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    checks: list[OutputCheck] = []
    warnings: list[str] = []
    declared = session.get_inputs()[0].shape
    for x in inputs:
        if len(declared) != x.ndim:
            raise InputError(
                f"invalid rank for input {input_name!r}: got {x.ndim} ({tuple(x.shape)}), the graph expects "
                f"{len(declared)} ({declared})",
                hint="pass --input-shape with the model's full input shape, batch first",
            )
        try:
            got = session.run(None, {input_name: x.detach().cpu().numpy().astype(np.float32)})
        except Exception as exc:  # noqa: BLE001 - ORT's message is the useful part
            raise InputError(
                f"onnxruntime failed on a batch of shape {tuple(x.shape)}: {str(exc).splitlines()[0]}"
            ) from None
        try:
            want = torch_outputs(model, x)
        except Exception as exc:  # noqa: BLE001
            raise InputError(
                f"the torch model fails on a batch of shape {tuple(x.shape)}: {str(exc).splitlines()[0]}"
            ) from None
        if len(got) != len(want):
            checks.append(
                OutputCheck(
                    "*",
                    x.shape[0],
                    float("inf"),
                    float("inf"),
                    True,
                    False,
                    f"{len(got)} ONNX outputs vs {len(want)} torch outputs",
                )
            )
            continue
        for name, g, w in zip(output_names, got, want, strict=True):
            checks.append(compare(name, int(x.shape[0]), g, w, atol, rtol))
            if w.ndim >= 1 and w.shape[0] > 1 and np.ptp(w.reshape(w.shape[0], -1), axis=0).max(initial=0) == 0:
                warnings.append(f"output {name!r} is the same for every input: the comparison proves little")
    finite_abs = [c.max_abs_diff for c in checks]
    return Verification(
        passed=bool(checks) and all(c.passed for c in checks),
        max_abs_diff=max(finite_abs, default=0.0),
        max_rel_diff=max((c.max_rel_diff for c in checks), default=0.0),
        atol=atol,
        rtol=rtol,
        provider=session.get_providers()[0],
        checks=checks,
        warnings=sorted(set(warnings)),
    )


def agreement(original: nn.Module, pruned: nn.Module, x: torch.Tensor) -> tuple[float, float | None]:
    """Cosine similarity of the first outputs, and top-1 agreement when they are (N, classes) scores."""
    a = torch.from_numpy(torch_outputs(original, x)[0]).double()
    b = torch.from_numpy(torch_outputs(pruned, x)[0]).double()
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    top1 = None
    if a.ndim == 2 and a.shape[1] > 1:
        top1 = float((a.argmax(1) == b.argmax(1)).double().mean())
    return float(cos), top1
