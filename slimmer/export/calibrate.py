"""Measure the latency cost model's constants on this machine (``slimmer bench --calibrate``).

:mod:`slimmer.structures.latency_cost` estimates a Conv/Linear layer's time as

    time ≈ MACs · c_dense (or c_depthwise for a depthwise conv) + (input + output elements) · c_element

Here a fixed set of single-layer ONNX graphs (:data:`PROBES`: dense 3×3 and 1×1 convolutions at a
few widths and resolutions, depthwise 3×3/5×5/7×7, a Gemm and a token MatMul, 1×1 convolutions with
a residual add) is built in memory with ``onnx.helper`` and timed with onnxruntime
(CPUExecutionProvider, ``threads`` intra-op threads, batch 1): a few warm-up runs each, then
``rounds`` rounds that run every graph once, interleaved so that the machine's drift hits all of
them alike; each graph's time is the median of its rounds. The probes' MACs per element range from
~4 (small 1×1, depthwise 3×3) to ~500 (1×1 at 7×7), which is what separates the three constants.

The fit is non-negative least squares on *relative* errors (each row divided by its measured time)
with a fourth, nuisance term: a constant per-run overhead (``session.run`` from Python). It is
solved exactly by trying every subset of the four terms (:func:`fit_costs`). The constants are
returned relative to a dense MAC (``dense_mac == 1``) with the fit's relative RMS error.
"""

from __future__ import annotations

import itertools
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from slimmer.errors import ConfigError, VerificationError
from slimmer.structures.latency_cost import FILE_FORMAT, FILE_VERSION, LatencyCosts

OPSET, IR_VERSION = 17, 8  # what every onnxruntime slimmer supports reads


@dataclass(frozen=True)
class Probe:
    """One graph: ``depth`` identical layers in a chain, each a convolution (``groups == c_in`` for
    depthwise) or a linear layer; ``depth > 1`` needs ``c_in == c_out`` and stride 1.

    Convolutions take a 1×``c_in``×``size``×``size`` float32 input, pad ``kernel // 2``, and are
    followed by a ReLU (fused by onnxruntime), or by ``+ its input`` then ReLU with ``residual``.
    ``kind == "linear"`` is a Gemm (``tokens == 1``) or a MatMul + Add on 1×``tokens``×``c_in``.
    ``in_fit``: False for a probe timed and shown but left out of the fit (see :data:`PROBES`).
    """

    name: str
    kind: str  # "conv", "depthwise" or "linear"
    c_in: int
    c_out: int
    kernel: int = 1
    stride: int = 1
    size: int = 1
    tokens: int = 1
    residual: bool = False
    depth: int = 1
    in_fit: bool = True

    @property
    def reads_weights(self) -> bool:
        """A batch-1 Gemm left out of the MACs fit: the probe that measures the weight-read constant."""
        return self.kind == "linear" and self.tokens == 1 and not self.in_fit

    @property
    def out_size(self) -> int:
        return (self.size + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1

    def features(self) -> tuple[int, int, int, int]:
        """(dense MACs, depthwise MACs, input + output elements of every layer, input + output
        elements of the graph): the first three as LatencyByWeight counts them, summed over the
        layers; the last is where onnxruntime converts layouts (NCHW ↔ NCHWc), a nuisance term."""
        if self.kind == "linear":
            macs = self.c_in * self.c_out * self.tokens
            elements = self.tokens * (self.c_in + self.c_out)
            return macs * self.depth, 0, elements * self.depth, elements
        groups = self.c_in if self.kind == "depthwise" else 1
        weight = self.c_out * (self.c_in // groups) * self.kernel**2
        macs = weight * self.out_size**2 * self.depth
        boundary = self.c_in * self.size**2 + self.c_out * self.out_size**2
        elements = boundary * self.depth
        return (0, macs, elements, boundary) if self.kind == "depthwise" else (macs, 0, elements, boundary)

    def model_bytes(self, seed: int = 0) -> bytes:
        """The serialized ONNX model (opset 17), weights drawn from ``seed``."""
        from onnx import TensorProto, helper, numpy_helper

        if self.depth > 1 and (self.c_in != self.c_out or self.stride != 1):
            raise ConfigError(f"probe {self.name}: a chain of layers needs c_in == c_out and stride 1")
        rng = np.random.default_rng(seed)
        inits, nodes = [], []

        def init(name: str, shape: tuple[int, ...]) -> str:
            scale = 1.0 / np.sqrt(max(1, int(np.prod(shape[1:]))))
            inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
            return name

        if self.kind == "linear":
            in_shape = [1, self.c_in] if self.tokens == 1 else [1, self.tokens, self.c_in]
            out_shape = [*in_shape[:-1], self.c_out]
        else:
            in_shape = [1, self.c_in, self.size, self.size]
            out_shape = [1, self.c_out, self.out_size, self.out_size]
        x = "X"
        for i in range(self.depth):
            y = "Y" if i == self.depth - 1 else f"h{i}"
            if self.kind == "linear" and self.tokens == 1:
                w, b = init(f"W{i}", (self.c_out, self.c_in)), init(f"B{i}", (self.c_out,))
                nodes.append(helper.make_node("Gemm", [x, w, b], [y], transB=1))
            elif self.kind == "linear":
                w, b = init(f"W{i}", (self.c_in, self.c_out)), init(f"B{i}", (self.c_out,))
                nodes += [helper.make_node("MatMul", [x, w], [f"m{i}"]), helper.make_node("Add", [f"m{i}", b], [y])]
            else:
                groups = self.c_in if self.kind == "depthwise" else 1
                k, p = self.kernel, self.kernel // 2
                w = init(f"W{i}", (self.c_out, self.c_in // groups, k, k))
                b = init(f"B{i}", (self.c_out,))
                attrs = {"kernel_shape": [k, k], "pads": [p] * 4, "strides": [self.stride] * 2, "group": groups}
                nodes.append(helper.make_node("Conv", [x, w, b], [f"c{i}"], **attrs))
                if self.residual:
                    nodes.append(helper.make_node("Add", [f"c{i}", x], [f"s{i}"]))
                nodes.append(helper.make_node("Relu", [f"s{i}" if self.residual else f"c{i}"], [y]))
            x = y
        graph = helper.make_graph(
            nodes,
            self.name,
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, in_shape)],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_shape)],
            initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
        return model.SerializeToString()


def _conv(c_in: int, c_out: int, k: int, size: int, stride: int = 1, residual: bool = False, depth: int = 1) -> Probe:
    tag = f"{'+add' if residual else ''}{f'/s{stride}' if stride > 1 else ''}{f' x{depth}' if depth > 1 else ''}"
    return Probe(f"conv{k}x{k} {c_in}->{c_out} @{size}{tag}", "conv", c_in, c_out, k, stride, size, 1, residual, depth)


def _dw(c: int, k: int, size: int, stride: int = 1, depth: int = 1) -> Probe:
    tag = f"{f'/s{stride}' if stride > 1 else ''}{f' x{depth}' if depth > 1 else ''}"
    return Probe(f"dw{k}x{k} {c} @{size}{tag}", "depthwise", c, c, k, stride, size, depth=depth)


PROBES: tuple[Probe, ...] = (
    _conv(3, 32, 3, 112, stride=2),  # a stem
    _conv(16, 16, 3, 56),
    _conv(16, 16, 3, 56, depth=4),
    _conv(64, 64, 3, 28, depth=4),
    _conv(128, 128, 3, 14, depth=4),
    _conv(16, 16, 1, 112),  # few MACs per element
    _conv(16, 16, 1, 112, depth=4),
    _conv(32, 192, 1, 56),
    _conv(192, 32, 1, 56),
    _conv(256, 256, 1, 14, depth=4),
    _conv(320, 1280, 1, 7),  # many MACs per element
    _conv(32, 32, 1, 56, residual=True, depth=4),  # element-wise work beyond the layers' own
    _conv(96, 96, 1, 28, residual=True, depth=4),
    _dw(96, 3, 112),
    _dw(96, 3, 112, depth=4),
    _dw(144, 3, 56, stride=2),
    _dw(384, 3, 14, depth=4),
    _dw(240, 5, 28, depth=4),
    _dw(96, 7, 56),
    Probe("matmul 64x256->1024", "linear", 256, 1024, tokens=64),
    Probe("matmul 64x512->512 x4", "linear", 512, 512, tokens=64, depth=4),
    # batch-1 Gemm reads every weight once per MAC: bound by weight bytes (a CNN's classifier is one
    # such layer); left out of the MACs fit, it measures the cost of a weight element read
    Probe("gemm 1280->1000", "linear", 1280, 1000, in_fit=False),
)
"""The graphs timed: MobileNet/EfficientNet/ResNet-like layer shapes at 224×224-class resolutions,
single layers and chains of four (which separate the layers' own cost from the graph's boundary)."""

ROUNDS, QUICK_ROUNDS, WARMUP = 100, 15, 3
NOISY_FIT = 0.3
"""A relative RMS fit error above this gets a warning: the timings were too noisy (a loaded machine,
or more threads than free cores) for the constants to describe this machine."""


@dataclass(frozen=True)
class ProbeTiming:
    name: str
    kind: str
    dense_macs: int
    depthwise_macs: int
    elements: int
    boundary_elements: int
    measured_ms: float  # median over the rounds
    fitted_ms: float  # what the fitted constants (with the nuisance terms) predict
    in_fit: bool


@dataclass(frozen=True)
class Calibration:
    costs: LatencyCosts  # relative to a dense MAC; fit_error, machine, threads, onnxruntime filled in
    ns_per_dense_mac: float  # the absolute scale: nanoseconds per dense MAC
    boundary: float  # nuisance: per element at the graph's input and output, relative to a dense MAC
    overhead_ms: float  # nuisance: the fitted per-run overhead
    rounds: int
    seconds: float  # wall time of the calibration
    probes: tuple[ProbeTiming, ...]
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """What ``bench --calibrate -o FILE`` writes (read back by ``load_latency_costs``)."""
        costs = self.costs.to_dict()
        costs.pop("source")
        return {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            **costs,
            "ns_per_dense_mac": self.ns_per_dense_mac,
            "boundary": self.boundary,
            "overhead_ms": self.overhead_ms,
            "rounds": self.rounds,
            "seconds": self.seconds,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "probes": [asdict(p) for p in self.probes],
            "warnings": list(self.warnings),
        }


def fit_costs(features: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Fit ``times ≈ features @ coef + overhead`` with ``coef, overhead ≥ 0``, minimizing relative errors.

    ``features``: (n, k) float (per row: dense MACs, depthwise MACs, elements, boundary elements); ``times``: (n,)
    positive floats (any unit). Returns ``(coef (k,), overhead, relative RMS error)`` in the units of
    ``times``. Exact non-negative least squares by enumerating the active set (2^(k+1) small solves).
    Raises :class:`ConfigError` for mismatched shapes or non-positive times.
    """
    features = np.asarray(features, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    shapes_ok = features.ndim == 2 and times.shape == (features.shape[0],)
    if not shapes_ok or not np.all(np.isfinite(times)) or np.any(times <= 0):
        raise ConfigError("fit_costs needs (n, k) features and n positive finite times")
    design = np.hstack([features, np.ones((len(times), 1))]) / times[:, None]  # relative residuals
    target = np.ones(len(times))
    scale = np.abs(design).max(axis=0)
    scale[scale == 0] = 1.0
    scaled = design / scale  # columns of comparable size for a well-conditioned solve
    best, best_err = np.zeros(design.shape[1]), float(np.sum(target**2))
    for size in range(1, design.shape[1] + 1):
        for subset in itertools.combinations(range(design.shape[1]), size):
            cols = list(subset)
            solution, *_ = np.linalg.lstsq(scaled[:, cols], target, rcond=None)
            if np.any(solution < 0):
                continue
            err = float(np.sum((scaled[:, cols] @ solution - target) ** 2))
            if err < best_err - 1e-15:
                best = np.zeros(design.shape[1])
                best[cols] = solution
                best_err = err
    coef = best / scale
    relative = design @ coef - 1.0
    return coef[:-1], float(coef[-1]), float(np.sqrt(np.mean(relative**2)))


def time_probes(
    probes: tuple[Probe, ...], *, threads: int = 1, rounds: int = ROUNDS, warmup: int = WARMUP, seed: int = 0
) -> list[float]:
    """Median milliseconds of each probe over ``rounds`` interleaved rounds (after ``warmup`` runs each)."""
    from slimmer.export.bench import _check_runs, _feed, _session, _timed

    sessions = []
    for i, probe in enumerate(probes):
        session = _session(probe.model_bytes(seed + i), threads, name=f"the calibration graph {probe.name!r}")
        feed = _feed(session, 1, seed + i)
        _check_runs(session, feed, Path(probe.name))
        sessions.append((session, feed))
    for session, feed in sessions:
        for _ in range(warmup):
            _timed(session, feed)
    times: list[list[float]] = [[] for _ in probes]
    for _ in range(rounds):
        for i, (session, feed) in enumerate(sessions):
            times[i].append(_timed(session, feed))
    return [statistics.median(t) for t in times]


def machine_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), its architecture and core count."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model or 'unknown CPU'} ({platform.machine()}, {os.cpu_count()} logical cores)"


def _weight_cost(
    probes: tuple[Probe, ...], measured: np.ndarray, features: np.ndarray, coef: np.ndarray, overhead: float
) -> float:
    """Cost of one weight element read, relative to a dense MAC: from the batch-1 Gemm probes (left out
    of the MACs fit), their time beyond the overhead and the fitted element terms, per weight element;
    the median over such probes, or the built-in constant when there is none."""
    per_weight = []
    for p, time_ms, row in zip(probes, measured, features, strict=True):
        if p.reads_weights:
            rest = time_ms - overhead - row[2] * coef[2] - row[3] * coef[3]
            per_weight.append(max(rest, 0.0) / (p.c_in * p.c_out * p.depth) / coef[0])
    return float(statistics.median(per_weight)) if per_weight else LatencyCosts().weight


def calibrate(
    *, threads: int = 1, rounds: int = ROUNDS, warmup: int = WARMUP, probes: tuple[Probe, ...] = PROBES
) -> Calibration:
    """Time ``probes`` and fit the cost constants (see the module docstring).

    Raises :class:`ConfigError` (exit 2) for ``threads``/``rounds`` < 1 or ``warmup`` < 0 and
    :class:`VerificationError` (exit 5) when the timings leave the cost of a dense MAC at 0 (too
    noisy to calibrate: more rounds on a quieter machine).
    """
    import onnxruntime

    if not isinstance(threads, int) or threads < 1 or rounds < 1 or warmup < 0:
        raise ConfigError(f"calibration needs threads ≥ 1, rounds ≥ 1, warmup ≥ 0 (got {threads}, {rounds}, {warmup})")
    start = time.perf_counter()
    measured = np.array(time_probes(probes, threads=threads, rounds=rounds, warmup=warmup))
    features = np.array([p.features() for p in probes], dtype=np.float64)
    fitted_rows = np.array([p.in_fit for p in probes])
    coef, overhead, error = fit_costs(features[fitted_rows], measured[fitted_rows])
    if not coef[0] > 0:
        raise VerificationError(
            "calibration: the timings do not determine the cost of a dense MAC (fitted as 0)",
            hint="rerun on a quieter machine, or with more --pairs",
        )
    fitted = features @ coef + overhead
    costs = LatencyCosts(
        dense_mac=1.0,
        depthwise_mac=float(coef[1] / coef[0]),
        element=float(coef[2] / coef[0]),
        weight=_weight_cost(probes, measured, features, coef, overhead),
        fit_error=error,
        machine=machine_name(),
        threads=threads,
        onnxruntime=onnxruntime.__version__,
        source=None,
    )
    for i, p in enumerate(probes):  # the Gemm probes' prediction takes the weight term (a roofline's max)
        if p.reads_weights:
            fitted[i] += max(0.0, (costs.weight * p.c_in * p.c_out * p.depth - features[i][0]) * coef[0])
    timings = tuple(
        ProbeTiming(p.name, p.kind, *map(int, p.features()), float(m), float(f), p.in_fit)
        for p, m, f in zip(probes, measured, fitted, strict=True)
    )
    seconds = time.perf_counter() - start
    warnings = [f"{name} was fitted as 0" for name, v in (("depthwise_mac", coef[1]), ("element", coef[2])) if v == 0]
    if error > NOISY_FIT:
        warnings.append(
            f"the fit error is {error:.0%}: the timings were noisy (a loaded machine, or more --threads than free "
            "cores), so the constants may not describe this machine; rerun when it is quieter or with more --pairs"
        )
    return Calibration(
        costs, float(coef[0] * 1e6), float(coef[3] / coef[0]), overhead, rounds, seconds, timings, tuple(warnings)
    )


def write_calibration(calibration: Calibration, path: Path, *, force: bool) -> None:
    """Write ``calibration`` as JSON to ``path`` atomically; without ``force`` an existing file is
    :class:`~slimmer.errors.OutputError` (exit 3) and stays as it is (see :func:`check_output`)."""
    import json

    from slimmer.export.files import write_atomic

    check_output(path, force=force)
    text = json.dumps(calibration.to_json(), indent=2, allow_nan=False) + "\n"
    write_atomic(Path(path), text.encode("utf-8"), replace=force)


def check_output(path: Path, *, force: bool) -> None:
    """Before calibrating: refuse an existing ``-o`` without ``force`` (exit 3), a name too long or a
    file in the way of its folder; create the folder."""
    from slimmer.paths import check_paths, make_parent

    check_paths([], {"-o/--output": Path(path)}, force)
    make_parent(Path(path))
