"""int8 for the edge: static QDQ quantization of a float ONNX file, gated on accuracy and on latency.

``quantize(onnx_path, calibration, config)`` pre-processes the float graph (shape inference, Conv+BN
folding), quantizes it with onnxruntime's ``quantize_static`` in the QDQ format (weights symmetric
int8 per output channel, activations per tensor, ranges from the calibration feeds), then checks the
int8 file against the float file on held-out feeds (top-1 agreement, output cosine, accuracy when
labels are given) and times both with the paired interleaved protocol of :mod:`slimmer.export.bench`.

Choices made by measurement on this project's CPU (AMD EPYC, AVX2 without VNNI; docs/BENCHMARKS.md):

* activations ``uint8`` (asymmetric) with 7-bit weights (``reduce_range``): the x86 integer kernels
  of onnxruntime multiply unsigned by signed bytes; without VNNI the pairwise int16 sums can saturate
  with full 8-bit weights, which ``reduce_range`` avoids (onnxruntime's own CPU guidance).
* per-channel weights everywhere, depthwise convolutions included: with one scale per tensor a
  depthwise kernel's small channels round to zero and a MobileNetV2 block's output collapses.

Gates: the int8 accuracy may fall at most ``max_quantization_drop`` points below the float accuracy and
the top-1 agreement must reach ``min_agreement`` and the cosine of the outputs ``min_cosine`` (the one
gate for outputs that are not class scores, and the meaningful one for random-weight networks, whose
near-equal logits make top-1 agreement a coin toss); otherwise :class:`QuantizationFailed` (exit 5) is
raised and nothing exists under the int8 name (the file is written to a temporary name beside it and
renamed only after both gates passed). When the int8 file is not faster than the float file the result
says so and, unless ``quantize_anyway``, the float file stays the artifact and no int8 file is written.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slimmer.errors import ConfigError, InputError
from slimmer.export import int8
from slimmer.export.bench import PairedLatency, paired_latency
from slimmer.export.files import check_writable, commit, temp_path_for
from slimmer.export.quantize_config import QuantizationFailed, QuantizeConfig, QuantizeResult, gate_failures
from slimmer.paths import int8_output, sha256_file

RANDOM_CALIBRATION_WARNING = (
    "int8 calibration ran on random inputs (no --data): activation ranges calibrated on random inputs are "
    "unreliable, and so is the agreement measured on them; pass --data with real samples"
)

Timer = Callable[[Path, Path], PairedLatency]


def feeds_from_array(x: np.ndarray, input_name: str, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Split samples ``x`` (N, ...) float into feeds of up to ``batch_size`` for a one-input graph."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return [{input_name: x[i : i + batch_size]} for i in range(0, len(x), batch_size)]


def _paired(config: QuantizeConfig) -> Timer:
    def timer(float_path: Path, int8_path: Path) -> PairedLatency:
        return paired_latency(
            float_path,
            int8_path,
            warmup=config.latency_warmup,
            pairs=config.latency_pairs,
            threads=config.latency_threads,
            batch=1,
            seed=config.seed,
        )

    return timer


def quantize(
    onnx_path: str | Path,
    calibration: Sequence[Mapping[str, np.ndarray]] | None,
    config: QuantizeConfig | None = None,
    output_path: str | Path | None = None,
    *,
    held_out: Sequence[Mapping[str, np.ndarray]] | None = None,
    labels: np.ndarray | None = None,
    force: bool = False,
    timer: Timer | None = None,
) -> QuantizeResult:
    """Quantize the float graph ``onnx_path`` to int8 and write it to ``output_path`` when it passes.

    ``calibration``: feeds ``{input name: array}`` (batch first; float inputs are calibrated, integer
    inputs pass through); None or empty calibrates on ``config.calibration_samples`` random feeds and
    warns. Only the first ``calibration_samples`` samples are used. ``held_out``: feeds for
    verification (default: random feeds with another seed when calibrating on random inputs, else the
    calibration feeds, with a warning); ``labels`` (N,) int: their classes, for accuracy.
    ``timer(float_path, int8_path)`` replaces the paired onnxruntime timing (tests inject one).

    Raises :class:`ConfigError` (2), :class:`InputError`/:class:`OutputError` (3: unreadable graph, an
    existing output without ``force``), :class:`ExportError` (4: pre-processing or quantizer failure),
    :class:`QuantizationFailed` (5: a gate failed; nothing written under the int8 name).
    """
    config = config or QuantizeConfig()
    src = Path(onnx_path)
    if not src.is_file():
        raise InputError(f"{src}: no such ONNX file")
    final = Path(output_path) if output_path is not None else int8_output(src)
    if final.resolve() == src.resolve():
        raise ConfigError(f"the int8 output {final} is the float input; choose another -o/--output")
    check_writable(final, force)
    from slimmer.export.verify import check_external_data, open_session

    check_external_data(src)
    notes: list[str] = []
    feeds, source = _calibration_feeds(src, calibration, config)
    if source == "random":
        notes.append(RANDOM_CALIBRATION_WARNING)
        if held_out is None:
            held_out = int8.random_feeds(src, max(1, min(config.eval_samples, 64)), config.seed + 1000)
    elif held_out is None:
        held_out = feeds
        notes.append("no held-out inputs were given: the int8 file was verified on its calibration inputs")
    depthwise = int8.count_depthwise(src)
    if depthwise and not config.per_channel:
        notes.append(
            f"{depthwise} depthwise convolutions quantized with one scale per tensor: accuracy may collapse "
            "(per-channel weights avoid it)"
        )
    tmp = temp_path_for(final)
    committed = False
    try:
        with tempfile.TemporaryDirectory(prefix="slimmer-int8-") as work:
            pre = Path(work) / "preprocessed.onnx"
            notes += int8.preprocess(src, pre)
            raw = Path(work) / "int8.onnx"
            int8.quantize_file(
                pre,
                raw,
                feeds,
                calibration_method=config.calibration_method,
                per_channel=config.per_channel,
                activation_type=config.activation_type,
                reduce_range=config.reduce_range,
            )
            if int8.has_subgraphs(raw):
                shutil.copyfile(raw, tmp)
            else:
                int8.compact_names(raw, tmp)
        ref = int8.run_feeds(open_session(src), held_out)
        got = int8.run_feeds(open_session(tmp), held_out)
        cosine, agree, acc_f, acc_q, finite = int8.compare_outputs(ref, got, labels)
        failures = gate_failures(config, cosine, agree, acc_f, acc_q, finite)
        latency = None if failures else (timer or _paired(config))(src, tmp)
        faster = None if latency is None or latency.speedup is None else latency.speedup > 1.0
        keep_int8 = not failures and (faster or config.quantize_anyway)
        if not failures and not faster:
            notes.append(
                "the int8 file is not faster than the float file on this CPU (paired speedup "
                + ("not measured)" if faster is None else f"{latency.speedup:.2f}x)")
                + (
                    ": kept as asked (--quantize-anyway)"
                    if config.quantize_anyway
                    else f": the float file {src} stays the artifact and no int8 file was written (--quantize-anyway "
                    "keeps it)"
                )
            )
        result = QuantizeResult(
            method=config.method,
            calibration={"method": config.calibration_method, "samples": _count(feeds), "source": source},
            per_channel=config.per_channel,
            activation_type=config.activation_type,
            reduce_range=config.reduce_range,
            size_bytes_float=src.stat().st_size,
            size_bytes_int8=tmp.stat().st_size,
            agreement=agree,
            cosine=cosine,
            accuracy_float=acc_f,
            accuracy_int8=acc_q,
            latency_ms_float=latency.a.p50_ms if latency else None,
            latency_ms_int8=latency.b.p50_ms if latency and latency.b else None,
            speedup=latency.speedup if latency else None,
            faster=faster,
            passed=not failures,
            kept="int8" if keep_int8 else "float",
            artifact=None if failures else str(final if keep_int8 else src),
            int8_path=str(final) if keep_int8 else None,
            sha256_int8=sha256_file(tmp) if keep_int8 else None,
            float_path=str(src),
            eval_samples=_count(held_out),
            depthwise_convs=depthwise,
            failures=tuple(failures),
            warnings=tuple(notes),
        )
        if failures:
            raise QuantizationFailed(
                "int8 verification failed: " + "; ".join(failures) + f" (nothing was written to {final})",
                result=result,
                hint="calibrate on more real samples (--calibration-samples, --calibration-method entropy or "
                "percentile), or relax --max-quantization-drop / --min-agreement",
            )
        if keep_int8:
            commit(tmp, final)
            committed = True
        return result
    finally:
        if not committed:
            tmp.unlink(missing_ok=True)


def quantize_after_compress(
    float_onnx_path: str | Path,
    calibration_inputs: np.ndarray | None,
    labels: np.ndarray | None,
    config: QuantizeConfig,
    *,
    eval_inputs: np.ndarray | None = None,
    output_path: str | Path | None = None,
    force: bool = False,
    timer: Timer | None = None,
) -> QuantizeResult:
    """The ``--quantize int8`` step of ``compress``/``demo`` after the float export was verified.

    ``calibration_inputs`` (N, ...) float32: model inputs from the training split of ``--data`` (None:
    random inputs, with the warning); ``eval_inputs`` (M, ...) and ``labels`` (M,) int64: the held-out
    split for agreement and accuracy. The graph must have one float input (slimmer's exports do).
    Raises like :func:`quantize`.
    """
    specs = int8.graph_inputs(Path(float_onnx_path))
    if len(specs) != 1:
        raise InputError(f"{float_onnx_path} has {len(specs)} inputs; quantize_after_compress takes one-input graphs")
    name = specs[0][0]
    calib = None
    if calibration_inputs is not None and len(calibration_inputs):
        calib = feeds_from_array(np.asarray(calibration_inputs)[: config.calibration_samples], name, config.batch_size)
    held = None
    if eval_inputs is not None and len(eval_inputs):
        held = feeds_from_array(np.asarray(eval_inputs)[: config.eval_samples], name, config.batch_size)
        labels = None if labels is None else np.asarray(labels)[: config.eval_samples]
    return quantize(float_onnx_path, calib, config, output_path, held_out=held, labels=labels, force=force, timer=timer)


def _calibration_feeds(src: Path, calibration, config: QuantizeConfig) -> tuple[list[dict], str]:
    if calibration is None or len(calibration) == 0:
        n = min(config.calibration_samples, 64)
        return int8.random_feeds(src, n, config.seed), "random"
    names = {name for name, _, _ in int8.graph_inputs(src)}
    feeds, total = [], 0
    for feed in calibration:
        if set(feed) != names:
            raise InputError(f"a calibration feed has inputs {sorted(feed)}, the graph {src} takes {sorted(names)}")
        feeds.append(dict(feed))
        total += _batch(feed)
        if total >= config.calibration_samples:
            break
    return feeds, "data"


def _batch(feed: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feed.values()))
    return int(first.shape[0]) if np.ndim(first) else 1


def _count(feeds: Sequence[Mapping[str, np.ndarray]]) -> int:
    return sum(_batch(f) for f in feeds)


def summary_rows(q: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Rows ``(label, float, int8)`` for the rich summary table, from a ``quantization`` report section."""

    def pct(v) -> str:
        return "-" if v is None else f"{v:.2%}"

    def ms(v) -> str:
        return "-" if v is None else f"{v:.3f}"

    rows = [
        ("int8 file size (B)", f"{q['size_bytes_float']:,}", f"{q['size_bytes_int8']:,}"),
        ("int8 accuracy", pct(q.get("accuracy_float")), pct(q.get("accuracy_int8"))),
        ("int8 latency (ms, paired)", ms(q.get("latency_ms_float")), ms(q.get("latency_ms_int8"))),
    ]
    agree = q.get("agreement")
    top1 = f", top-1 {agree:.1%}" if agree is not None else ""
    rows.append(("int8 vs float", "", f"cosine {q['cosine']:.4f}{top1}"))
    kept = q.get("kept")
    artifact = q.get("artifact") or "none (failed)"
    rows.append(("artifact", q.get("float_path") or "", f"{artifact} ({kept})" if q.get("passed") else artifact))
    return rows
