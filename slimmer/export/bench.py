"""Paired onnxruntime latency (BENCHMARKS.md §2).

Both sessions are loaded first, each gets ``warmup`` runs, then ``pairs`` interleaved runs
(A, B, A, B, …) on the same input. The speedup is the median of the per-pair ratios A/B, which
cancels most of the drift of a shared, noisy machine; absolute times are reported as medians too.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimmer.errors import ConfigError, InputError
from slimmer.paths import ort_model_arg


@dataclass
class Latency:
    p50_ms: float
    p90_ms: float
    runs: int


@dataclass
class PairedLatency:
    a: Latency
    b: Latency | None
    speedup: float | None  # median of per-pair ratios a/b: > 1 means B is faster
    threads: int
    batch: int


def _session(path: Path | bytes, threads: int, name: str | None = None):
    """A CPUExecutionProvider session on ``threads`` intra-op threads (one inter-op thread) for an ONNX
    file or a serialized model (``bytes``; ``name`` names it in errors). Exit 3 when it cannot load."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    model = path if isinstance(path, bytes) else ort_model_arg(path)
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"onnxruntime cannot load {name or path}: {str(exc).splitlines()[0]}") from None


ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
"""onnxruntime input types the benchmark can feed. Integer inputs get values in [0, 2) (valid
indices for any embedding table or mask), floating inputs standard normal values."""


def _feed(session, batch: int, seed: int, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """One input per graph input: the dynamic batch axis is ``batch``; other symbolic axes come from
    ``dims`` (``--dim NAME=SIZE``). Raises :class:`ConfigError` (exit 2) for a symbolic axis without a
    size and :class:`InputError` (exit 3) for an input type it cannot generate."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    feed = {}
    for inp in session.get_inputs():
        shape = []
        for i, d in enumerate(inp.shape):
            if isinstance(d, int) and d >= 0:
                shape.append(d)
            elif isinstance(d, str) and d in dims:
                shape.append(dims[d])
            elif i == 0:
                shape.append(batch)
            else:
                raise ConfigError(
                    f"input {inp.name!r} has a symbolic dimension {d!r} at axis {i} (shape {inp.shape}); "
                    "the benchmark cannot guess its size",
                    hint=f"pass --dim {d if isinstance(d, str) and d else 'NAME'}=SIZE, e.g. --dim {d or 'seq'}=128",
                )
        if int(np.prod(shape, dtype=np.float64)) > MAX_BENCH_ELEMENTS:
            raise ConfigError(
                f"input {inp.name!r} of shape {shape} would hold more than {MAX_BENCH_ELEMENTS} elements",
                hint="use a smaller --batch or --dim",
            )
        dtype = ORT_TYPES.get(inp.type)
        if dtype is None:
            raise InputError(
                f"input {inp.name!r} has type {inp.type}; the benchmark feeds float, integer and bool inputs only"
            )
        if np.issubdtype(dtype, np.floating):
            feed[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[inp.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feed


def _check_runs(session, feed: dict[str, np.ndarray], path: Path) -> None:
    """One run before timing: a graph that fails on the generated inputs is exit 3, naming them."""
    try:
        session.run(None, feed)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's message is the useful part
        shapes = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in feed.items())
        raise InputError(
            f"onnxruntime failed running {path} on generated inputs ({shapes}): {str(exc).strip().splitlines()[0]}",
            hint="give the sizes of symbolic axes with --dim NAME=SIZE, or --batch",
        ) from None


def _timed(session, feed) -> float:
    start = time.perf_counter()
    session.run(None, feed)
    return (time.perf_counter() - start) * 1000.0


def _stats(times: list[float]) -> Latency:
    ordered = sorted(times)
    return Latency(statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], len(ordered))


def paired_latency(
    a: Path,
    b: Path | None = None,
    *,
    warmup: int = 10,
    pairs: int = 50,
    threads: int = 1,
    batch: int = 1,
    seed: int = 0,
    dims: dict[str, int] | None = None,
) -> PairedLatency:
    """Latency of ``a`` alone, or of ``a`` and ``b`` interleaved with the per-pair speedup."""
    if warmup < 0 or pairs < 1 or threads < 1 or batch < 1:
        raise ConfigError("bench: warmup ≥ 0, pairs ≥ 1, threads ≥ 1 and batch ≥ 1 are required")
    sa = _session(a, threads)
    sb = _session(b, threads) if b is not None else None
    fa = _feed(sa, batch, seed, dims)
    fb = _feed(sb, batch, seed, dims) if sb is not None else None
    _check_runs(sa, fa, a)
    if sb is not None:
        _check_runs(sb, fb, b)
    for _ in range(warmup):
        _timed(sa, fa)
        if sb is not None:
            _timed(sb, fb)
    ta, tb = [], []
    for _ in range(pairs):
        ta.append(_timed(sa, fa))
        if sb is not None:
            tb.append(_timed(sb, fb))
    speedup = statistics.median(x / y for x, y in zip(ta, tb, strict=True)) if tb else None
    return PairedLatency(_stats(ta), _stats(tb) if tb else None, speedup, threads, batch)


MAX_BENCH_ELEMENTS = 1 << 28
"""Refuse generated inputs above 2^28 elements (1 GiB of float32) before allocating them."""


def parse_dims(specs: list[str] | None) -> dict[str, int]:
    """``["seq=128", "h=224"]`` → ``{"seq": 128, "h": 224}``; a malformed entry is a ConfigError (exit 2)."""
    out: dict[str, int] = {}
    for spec in specs or []:
        name, sep, value = str(spec).partition("=")
        try:
            size = int(value)
        except ValueError:
            size = 0
        if not sep or not name.strip() or size < 1:
            raise ConfigError(f"--dim {spec!r}: expected NAME=SIZE with a positive integer size, e.g. seq=128")
        out[name.strip()] = size
    return out
