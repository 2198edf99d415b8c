"""Channel pruning to a *measured* speedup (BENCHMARKS.md §2, ``--speedup X``).

MACs do not say how fast a model runs, so this loop does not guess: it plans at a MACs target
(latency-aware ranking, :func:`plan_channels`), removes the channels on a copy, measures the
speedup with ``measure(pruned) -> speedup`` (by default: export both models to ONNX and time them
with :func:`slimmer.export.bench.paired_latency`), and corrects the target. Since speedup ≈
efficiency / MACs kept, with an efficiency that barely moves between neighbouring targets, the
next target is ``target · measured / wanted``. It stops once a measurement lands in
``[wanted, wanted · (1 + tolerance)]`` or after ``rounds`` measurements, and returns the plan
whose measured speedup is the smallest at or above the goal (the fastest one if none reached it).
Measurements on a shared machine are noisy (a few percent): ``tolerance`` should not be smaller.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from slimmer.errors import ConfigError
from slimmer.graph.groups import GroupSet
from slimmer.structures.channel import plan_channels
from slimmer.structures.plan import PruningPlan
from slimmer.surgery import shrink


@dataclass
class SpeedupTrial:
    macs_target: float
    macs_kept: float  # macs_after / macs_before of the plan
    speedup: float  # measured


@dataclass
class SpeedupResult:
    plan: PruningPlan  # the chosen plan, after shrink's roll-backs (if any)
    speedup: float  # its measured speedup
    reached: bool
    trials: list[SpeedupTrial] = field(default_factory=list)


def plan_for_speedup(
    groupset: GroupSet,
    model: nn.Module,
    speedup: float,
    example_inputs: Sequence[Any],
    measure: Callable[[nn.Module], float],
    *,
    tolerance: float = 0.05,
    rounds: int = 4,
    **plan_kwargs: Any,
) -> SpeedupResult:
    """Plan channel pruning whose measured speedup over ``model`` is at least ``speedup``.

    ``measure(pruned_model)`` returns the speedup of a pruned copy over ``model`` (see
    :func:`onnx_speedup`). ``plan_kwargs`` go to :func:`plan_channels` (``round_to``,
    ``max_ratio``, ``criterion``, ...); the ranking is always latency-aware. ``model`` is not
    modified.
    """
    if not speedup > 1.0:
        raise ConfigError(f"speedup must be > 1, got {speedup!r}")
    if rounds < 1 or tolerance <= 0:
        raise ConfigError("plan_for_speedup needs rounds ≥ 1 and tolerance > 0")
    for key in ("sparsity", "macs_target", "latency_aware", "example_inputs"):
        if key in plan_kwargs:
            raise ConfigError(f"plan_for_speedup chooses {key} itself")
    trials: list[SpeedupTrial] = []
    tried: list[tuple[float, PruningPlan]] = []
    target = 1.0 / speedup  # as if every saved MAC were saved time
    for _ in range(rounds):
        plan = plan_channels(
            groupset, model, macs_target=target, example_inputs=example_inputs, latency_aware=True, **plan_kwargs
        )
        pruned = copy.deepcopy(model).eval()
        applied = shrink(pruned, plan, example_inputs).plan
        measured = float(measure(pruned))
        kept = (plan.macs_after or 0) / plan.macs_before if plan.macs_before else 1.0
        trials.append(SpeedupTrial(target, kept, measured))
        tried.append((measured, applied))
        if speedup <= measured <= speedup * (1.0 + tolerance):
            break
        following = min(1.0, max(0.01, target * measured / speedup))
        if abs(following - target) < 1e-3:
            break
        target = following
    reached = [t for t in tried if t[0] >= speedup]
    measured, plan = min(reached, key=lambda t: t[0]) if reached else max(tried, key=lambda t: t[0])
    if not reached:
        plan.notes.append(f"speedup {speedup:g} not reached: best measured {measured:.2f}")
    return SpeedupResult(plan, measured, bool(reached), trials)


def onnx_speedup(
    model: nn.Module,
    example: Any,
    *,
    pairs: int = 50,
    warmup: int = 10,
    threads: int = 1,
    workdir: Path | None = None,
) -> Callable[[nn.Module], float]:
    """A ``measure`` for :func:`plan_for_speedup`: ONNX export + onnxruntime paired latency.

    ``model`` is exported once; each call exports the pruned model and returns the median per-pair
    speedup (BENCHMARKS §2 protocol: CPUExecutionProvider, ``threads`` intra-op threads, batch of
    ``example``, warm-up, interleaved pairs). Files go to ``workdir`` (a temporary directory by default).
    """
    from slimmer.export.bench import paired_latency
    from slimmer.export.files import commit
    from slimmer.export.onnx import export_onnx

    directory = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="slimmer-speedup-"))
    calls = [0]

    def export(m: nn.Module, name: str) -> Path:
        path = directory / name
        commit(export_onnx(m, example, path, dynamic_batch=False).temp_path, path)
        return path

    base = export(model, "unpruned.onnx")

    def measure(pruned: nn.Module) -> float:
        calls[0] += 1
        path = export(pruned, f"trial{calls[0]}.onnx")
        result = paired_latency(base, path, warmup=warmup, pairs=pairs, threads=threads, batch=example.shape[0])
        path.unlink(missing_ok=True)
        return float(result.speedup)

    return measure
