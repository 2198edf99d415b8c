"""onnxruntime static int8 quantization (QDQ): the mechanics behind :mod:`slimmer.quantize`.

The steps follow onnxruntime's own recipe for CPU inference: pre-processing
(``onnxruntime.quantization.shape_inference.quant_pre_process``: symbolic and ONNX shape inference,
then onnxruntime's basic graph optimizations, which fold BatchNormalization into the preceding Conv),
then ``quantize_static`` in the QDQ format (QuantizeLinear/DequantizeLinear pairs that the CPU
provider fuses into integer kernels). Calibration feeds are dicts ``{input name: array}``, so graphs
with several inputs of any dtype work: integer inputs pass through unchanged, only float tensors get
observed and quantized. Nothing here prints; onnxruntime's Python logging is muted while it runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from slimmer.errors import ExportError, InputError

Feed = Mapping[str, np.ndarray]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")
STALE_GRAPH_METADATA = "pkg.torch.export."


class FeedReader:
    """A ``CalibrationDataReader`` over a fixed list of feeds (``get_next`` → the next dict, then None)."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self._feeds = [dict(f) for f in feeds]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizer logs and warns through Python logging and ``print``; keep it off stdout."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield sink
    finally:
        root.setLevel(level)


def graph_inputs(path: Path) -> list[tuple[str, np.dtype, list[int | str | None]]]:
    """The graph's real inputs (initializers excluded): name, numpy dtype, declared shape."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a rejected input
        first = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise InputError(f"{path} is not a readable ONNX file: {first}") from None
    inits = {t.name for t in proto.graph.initializer}
    found = []
    for value in proto.graph.input:
        if value.name in inits:
            continue
        ttype = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in ttype.shape.dim]
        found.append((value.name, dtype, dims))
    return found


def random_feeds(path: Path, count: int, seed: int, batch: int = 1) -> list[dict[str, np.ndarray]]:
    """``count`` feeds of standard-normal floats (integer inputs: zeros; booleans: True) with a dynamic
    batch axis of ``batch`` and any other unnamed dimension of 1. Calibration on these is unreliable."""
    rng = np.random.default_rng(seed)
    specs = graph_inputs(path)
    feeds = []
    for _ in range(count):
        feed = {}
        for name, dtype, dims in specs:
            shape = [d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1) for i, d in enumerate(dims)]
            if np.issubdtype(dtype, np.floating):
                feed[name] = rng.standard_normal(shape).astype(dtype)
            elif dtype == np.bool_:
                feed[name] = np.ones(shape, dtype=bool)
            else:
                feed[name] = np.zeros(shape, dtype=dtype)
        feeds.append(feed)
    return feeds


def preprocess(src: Path, dst: Path) -> list[str]:
    """Shape inference and BN folding into ``dst``. Symbolic shape inference (it needs sympy) is tried
    first; when it fails on this graph the ONNX shape inference alone is used and a warning says so.
    Raises :class:`ExportError` when neither works."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    notes: list[str] = []
    last: Exception | None = None
    for symbolic in (True, False):
        try:
            with _quiet():
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=not symbolic, auto_merge=True)
            if not symbolic:
                notes.append(
                    f"symbolic shape inference failed before quantization ({_first_line(last)}); "
                    "ONNX shape inference alone was used"
                )
            return notes
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - retried without symbolic inference, then exit 4
            last = exc
    raise ExportError(
        f"pre-processing for quantization failed: {_first_line(last)}",
        hint="check the graph with onnx.checker; run with --debug for the full message",
    )


def quantize_file(
    src: Path,
    dst: Path,
    feeds: Sequence[Feed],
    *,
    calibration_method: str,
    per_channel: bool,
    activation_type: str,
    reduce_range: bool,
) -> None:
    """Static QDQ quantization of ``src`` into ``dst``: weights symmetric int8 (per output channel when
    ``per_channel``), activations ``activation_type`` per tensor, ranges from ``feeds``.
    Raises :class:`ExportError` (exit 4) when onnxruntime's quantizer fails."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    act = QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8
    try:
        with _quiet():
            quantize_static(
                str(src),
                str(dst),
                FeedReader(feeds),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=act,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[calibration_method],
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": activation_type == "int8"},
            )
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - every quantizer failure is exit 4
        raise ExportError(
            f"onnxruntime static quantization failed: {_first_line(exc)}",
            hint="run with --debug for the quantizer's full message",
        ) from exc


def run_feeds(session, feeds: Sequence[Feed]) -> list[np.ndarray]:
    """The first output of ``session`` on every feed, concatenated along the batch axis (float64)."""
    outs = []
    for feed in feeds:
        try:
            outs.append(np.asarray(session.run(None, dict(feed))[0], dtype=np.float64))
        except Exception as exc:  # noqa: BLE001 - onnxruntime's message is the useful part
            raise InputError(f"onnxruntime failed on a held-out input: {_first_line(exc)}") from None
    return outs


def compare_outputs(
    ref: Sequence[np.ndarray], got: Sequence[np.ndarray], labels: np.ndarray | None
) -> tuple[float, float | None, float | None, float | None, bool]:
    """``(cosine, top1_agreement, accuracy_ref, accuracy_got, finite)`` of two runs' first outputs.

    Cosine is over all outputs flattened; agreement and accuracy need (N, classes) scores with more
    than one class, accuracy also ``labels`` (N,) int. Accuracies are fractions in [0, 1]."""
    a = np.concatenate([r.reshape(r.shape[0], -1) if r.ndim else r.reshape(1, 1) for r in ref])
    b = np.concatenate([g.reshape(g.shape[0], -1) if g.ndim else g.reshape(1, 1) for g in got])
    finite = bool(np.isfinite(b).all())
    if not finite:
        return float("nan"), None, None, None, False
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float((a * b).sum() / denom) if denom > 0 else float(np.array_equal(a, b))
    classify = all(r.ndim == 2 for r in ref) and a.shape[1] > 1
    if not classify:
        return cosine, None, None, None, True
    pa, pb = a.argmax(1), b.argmax(1)
    agree = float((pa == pb).mean())
    if labels is None or len(labels) != len(pa):
        return cosine, agree, None, None, True
    return cosine, agree, float((pa == labels).mean()), float((pb == labels).mean()), True


def count_depthwise(path: Path) -> int:
    """How many Conv nodes of ``path`` are depthwise (group equal to the input channels, group > 1)."""
    proto = onnx.load(str(path), load_external_data=False)
    weights = {t.name: list(t.dims) for t in proto.graph.initializer}
    n = 0
    for node in proto.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        dims = weights.get(node.input[1])
        if group > 1 and dims is not None and len(dims) >= 2 and dims[1] == 1:
            n += 1
    return n


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}" if exc is not None else "unknown"


def compact_names(src: Path, dst: Path) -> None:
    """Rewrite ``src`` into ``dst`` with short internal names: every tensor that is not a graph input or
    output becomes ``t<hex>``, every node ``n<hex>``; the exporter's per-node provenance
    (``metadata_props``: module namespaces, class hierarchies), the graph-level record of the float
    program's signature (``pkg.torch.export.*``: it names BatchNorm parameters that folding removed) and
    inferred ``value_info`` are dropped.
    The quantizer names each scale, zero point and QDQ node after its tensor
    (``layer1.0.conv1.weight_bias_quantized_zero_point``); on the bundled ResNet-20 pruned to half its
    MACs, these names and records took the int8 file from 75,727 to 127,255 bytes (measured; the two
    files give identical outputs). Computation, graph inputs and outputs and model-level metadata are unchanged."""
    proto = onnx.load(str(src), load_external_data=False)
    graph = proto.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in mapping:
            mapping[name] = f"t{len(mapping):x}"
        return mapping[name]

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for i, node in enumerate(graph.node):
        node.name = f"n{i:x}"
        node.doc_string = ""
        del node.metadata_props[:]
        for j, name in enumerate(node.input):
            node.input[j] = short(name)
        for j, name in enumerate(node.output):
            node.output[j] = short(name)
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ExportError("compact_names does not rewrite graphs with subgraphs")  # callers skip those graphs
    del graph.value_info[:]
    kept = [p for p in graph.metadata_props if not p.key.startswith(STALE_GRAPH_METADATA)]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    onnx.save(proto, str(dst))


def has_subgraphs(path: Path) -> bool:
    """Whether any node of ``path`` carries a subgraph (If, Loop, Scan)."""
    proto = onnx.load(str(path), load_external_data=False)
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in proto.graph.node for a in n.attribute
    )
