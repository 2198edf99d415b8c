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


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None


def _feed(session, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in session.get_inputs():
        shape = [
            batch if i == 0 and not isinstance(d, int) else (d if isinstance(d, int) else 1)
            for i, d in enumerate(inp.shape)
        ]
        feed[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


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
) -> PairedLatency:
    """Latency of ``a`` alone, or of ``a`` and ``b`` interleaved with the per-pair speedup."""
    if warmup < 0 or pairs < 1 or threads < 1 or batch < 1:
        raise ConfigError("bench: warmup ≥ 0, pairs ≥ 1, threads ≥ 1 and batch ≥ 1 are required")
    sa = _session(a, threads)
    sb = _session(b, threads) if b is not None else None
    fa = _feed(sa, batch, seed)
    fb = _feed(sb, batch, seed) if sb is not None else None
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
