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
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from slimmer.errors import InputError
from slimmer.inputs import as_args, batch_size_of, fresh
from slimmer.outputs import logits_of, named_leaves
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
    input_shapes: str = ""


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


def named_arrays(out: Any) -> list[tuple[str, np.ndarray]]:
    """``(leaf name, float array)`` for every tensor leaf of a model output, in pytree (ONNX) order."""
    return [(name, t.detach().float().cpu().numpy()) for name, t in named_leaves(out)]


def _feed(session, x) -> dict[str, np.ndarray]:
    """onnxruntime's input dict for positional arguments ``x``: by position over the graph's inputs
    (``None`` arguments are not graph inputs), each array in the dtype the graph declares."""
    args = [a for a in as_args(x) if a is not None]
    declared = session.get_inputs()
    if len(declared) != len(args):
        raise InputError(
            f"the ONNX graph takes {len(declared)} inputs ({', '.join(i.name for i in declared)}), "
            f"{len(args)} were given",
            hint="give every graph input (--input NAME:DTYPE[SHAPE] or --example-inputs)",
        )
    feed = {}
    for spec, a in zip(declared, args, strict=True):
        if len(spec.shape) != a.ndim:
            raise InputError(
                f"invalid rank for input {spec.name!r}: got {a.ndim} ({tuple(a.shape)}), the graph expects "
                f"{len(spec.shape)} ({spec.shape})",
                hint="pass --input-shape with the model's full input shape, batch first",
            )
        arr = a.detach().cpu().numpy()
        want = _ORT_DTYPES.get(spec.type)
        feed[spec.name] = arr.astype(want) if want is not None and arr.dtype != want else arr
    return feed


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _shapes(x) -> str:
    shapes = [tuple(a.shape) for a in as_args(x) if isinstance(a, torch.Tensor)]
    return str(shapes[0]) if len(shapes) == 1 else ", ".join(map(str, shapes))


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


def model_outputs(model: nn.Module, inputs: list) -> list[Any]:
    """``model``'s output on each entry of ``inputs`` (as :func:`verify_onnx` takes them), without grad.
    Raises :class:`InputError` naming the batch's shapes when the model fails on one."""
    outputs = []
    for x in inputs:
        try:
            with torch.no_grad():
                outputs.append(model(*fresh(x)))
        except Exception as exc:  # noqa: BLE001
            raise InputError(
                f"the torch model fails on a batch of shape {_shapes(x)}: {str(exc).splitlines()[0]}"
            ) from None
    return outputs


def verify_onnx(
    onnx_path: Path,
    model: nn.Module,
    inputs: list,
    *,
    atol: float,
    rtol: float,
    outputs: list[Any] | None = None,
) -> Verification:
    """Run ``onnx_path`` in onnxruntime on each input batch and compare every output leaf with ``model``.

    ``inputs`` holds one entry per batch: a tensor (a one-input model) or a tuple of positional
    arguments; ``outputs``, when given, is ``model``'s output on each (:func:`model_outputs`), taken
    once by a caller that reads them too. Outputs are matched in order (the pytree order the exporter
    keeps) and named by the torch output's leaf names (``logits``, ``0``, ...). Raises
    :class:`InputError` when onnxruntime or the torch model cannot run an input.
    """
    session = open_session(onnx_path)
    output_names = [o.name for o in session.get_outputs()]
    checks: list[OutputCheck] = []
    warnings: list[str] = []
    for index, x in enumerate(inputs):
        feed = _feed(session, x)
        batch = batch_size_of(x)
        try:
            got = session.run(None, feed)
        except Exception as exc:  # noqa: BLE001 - ORT's message is the useful part
            raise InputError(
                f"onnxruntime failed on a batch of shape {_shapes(x)}: {str(exc).splitlines()[0]}"
            ) from None
        want = named_arrays(outputs[index] if outputs is not None else model_outputs(model, [x])[0])
        if len(got) != len(want):
            checks.append(
                OutputCheck(
                    "*",
                    batch,
                    float("inf"),
                    float("inf"),
                    True,
                    False,
                    f"{len(got)} ONNX outputs vs {len(want)} torch outputs",
                )
            )
            continue
        for onnx_name, g, (leaf, w) in zip(output_names, got, want, strict=True):
            name = leaf if leaf != "output" or len(want) > 1 else onnx_name
            check = compare(name, batch, g, w, atol, rtol)
            check.input_shapes = _shapes(x)
            checks.append(check)
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


def reference_logits(original: nn.Module, x, output_name: str | None = None) -> torch.Tensor:
    """The logits leaf (:func:`slimmer.outputs.logits_of`) of ``original`` on ``x`` (a tensor or
    positional arguments), float64 on the CPU: what :func:`agreement` compares the pruned model with.
    Taken before pruning, so that no copy of the dense model has to be kept for the comparison."""
    with torch.no_grad():
        return logits_of(original(*fresh(x)), output_name).detach().double().cpu()


def agreement(
    reference: torch.Tensor, pruned: nn.Module, x, output_name: str | None = None
) -> tuple[float, float | None]:
    """Cosine similarity of the logits leaves of the original (``reference``, from
    :func:`reference_logits` on the same ``x``) and of ``pruned`` on ``x``, and top-1 agreement
    when they are (N, classes) scores."""
    a = reference
    with torch.no_grad():
        b = logits_of(pruned(*fresh(x)), output_name).detach().double().cpu()
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    top1 = None
    if a.ndim == 2 and a.shape[1] > 1:
        top1 = float((a.argmax(1) == b.argmax(1)).double().mean())
    return float(cos), top1
