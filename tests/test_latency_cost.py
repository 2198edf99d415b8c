"""Latency-aware channel ranking: the per-layer cost estimate and what the planner does with it."""

from __future__ import annotations

import pytest
import torch
import toy_models
from torch import nn

from slimmer.errors import ConfigError
from slimmer.graph import build_groups
from slimmer.graph.macs import count_macs, to_meta
from slimmer.structures import latency_cost as lc
from slimmer.structures.channel import plan_channels
from slimmer.structures.speedup import onnx_speedup, plan_for_speedup
from slimmer.surgery import shrink

InvertedResidual = toy_models.DepthwisePaths  # a dense path and a depthwise path side by side


def by_producer(groups, plan=None) -> dict:
    """Group (or planned group) by the conv whose output channels it holds: dense, expand, ..."""
    out = {}
    for g in groups:
        for name, dim in g.signature if plan is None else g.members:
            if dim == 0 and name.endswith(".weight") and name.split(".")[0] in ("dense", "expand"):
                out[name.split(".")[0]] = g
    return out


X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def model() -> InvertedResidual:
    """Equal weights: scores tie, so only the cost decides."""
    return toy_models.tied_scores(InvertedResidual())


def test_layers_and_per_channel_costs() -> None:
    m = model()
    table = lc.LatencyByWeight(*to_meta(m, (X,)))
    dw = table.layers["dw.weight"]
    assert dw["depthwise"] and dw["out_dim"] == dw["in_dim"] == 0
    assert dw["macs"] == 32 * 9 * 256 and dw["in"] == dw["out"] == 32 * 256
    assert not table.layers["dense.weight"]["depthwise"]
    assert table.total_macs == count_macs(m, (X,))
    groups = by_producer(build_groups(m, (X,)).prunable)
    time, macs = table.per_channel(groups["dense"])
    # one channel of dense: its output row (8·9 MACs per position, 256 output elements) and
    # dense_out's input column (8 MACs per position, 256 input elements)
    assert macs == pytest.approx((8 * 9 + 8) * 256)
    assert time == pytest.approx((8 * 9 + 8) * 256 * lc.COST_DENSE_MAC + 2 * 256 * lc.COST_ELEMENT)
    dense_cost, expand_cost = table.relative_cost([groups["dense"], groups["expand"]])
    assert expand_cost > 1.0 > dense_cost  # the depthwise path costs more time per MAC


def test_latency_aware_prunes_the_costly_path_and_keeps_the_target() -> None:
    m = model()
    groups = build_groups(m, (X,))
    plain = plan_channels(groups, m, macs_target=0.7, example_inputs=(X,))
    aware = plan_channels(groups, m, macs_target=0.7, example_inputs=(X,), latency_aware=True)
    for plan in (plain, aware):
        assert plan.macs_after <= 0.7 * plan.macs_before
    assert any("latency-aware" in note for note in aware.notes)
    kept = {name: len(p.kept) for name, p in by_producer(aware.groups, plan=True).items()}
    assert kept["expand"] < kept["dense"]
    shrink(m, aware, (X,))
    assert count_macs(m, (X,)) == aware.macs_after


def test_latency_aware_needs_example_inputs() -> None:
    m = model()
    with pytest.raises(ConfigError):
        plan_channels(build_groups(m, (X,)), m, sparsity=0.5, latency_aware=True)


def test_latency_aware_with_sparsity_and_rounding() -> None:
    m = model()
    plan = plan_channels(build_groups(m, (X,)), m, sparsity=0.5, round_to=8, example_inputs=(X,), latency_aware=True)
    assert all(len(p.kept) % 8 == 0 for p in plan.groups if p.channels % 8 == 0)
    assert plan.channels_pruned >= 0.5 * plan.channels_total


def macs_speedup(reference: nn.Module, efficiency: float):
    """A deterministic stand-in for a timed measurement: speedup = efficiency × MACs reduction."""
    before = count_macs(reference, (X,))

    def measure(pruned: nn.Module) -> float:
        return efficiency * before / count_macs(pruned, (X,))

    return measure


def test_speedup_loop_corrects_the_macs_target() -> None:
    m = model()
    original = [p.clone() for p in m.parameters()]
    result = plan_for_speedup(build_groups(m, (X,)), m, 1.5, (X,), macs_speedup(m, 0.8), tolerance=0.05, rounds=5)
    assert result.reached and 1.5 <= result.speedup <= 1.5 * 1.05 + 1e-9
    assert len(result.trials) >= 2  # the first guess (1/1.5 of the MACs) is too slow at efficiency 0.8
    assert result.trials[1].macs_target < result.trials[0].macs_target
    assert all(torch.equal(a, b) for a, b in zip(original, m.parameters(), strict=True))  # model untouched
    shrink(m, result.plan, (X,))
    assert macs_speedup(model(), 0.8)(m) == pytest.approx(result.speedup)


def test_speedup_out_of_reach_returns_the_fastest_with_a_note() -> None:
    m = model()
    result = plan_for_speedup(build_groups(m, (X,)), m, 50.0, (X,), macs_speedup(m, 1.0), rounds=3, max_ratio=0.5)
    assert not result.reached
    assert result.speedup == max(t.speedup for t in result.trials)
    assert any("not reached" in note for note in result.plan.notes)


@pytest.mark.parametrize(
    "kwargs", [{"speedup": 1.0}, {"speedup": 2.0, "macs_target": 0.5}, {"speedup": 2.0, "rounds": 0}]
)
def test_speedup_bad_options(kwargs: dict) -> None:
    m = model()
    with pytest.raises(ConfigError):
        plan_for_speedup(build_groups(m, (X,)), m, example_inputs=(X,), measure=lambda _: 1.0, **kwargs)


@pytest.mark.slow
def test_onnx_speedup_measures_a_pruned_copy(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    m = model()
    measure = onnx_speedup(m, X, pairs=5, warmup=1, workdir=tmp_path)
    assert measure(m) > 0  # the unpruned model against itself: about 1
    assert (tmp_path / "unpruned.onnx").exists() and not (tmp_path / "trial1.onnx").exists()


def test_a_batch_one_linear_costs_its_weight_reads_and_a_token_linear_its_macs():
    """A roofline's two sides: at batch 1 a Linear does one MAC per weight it reads and is bound by
    weight bytes (COST_WEIGHT per weight element); over 64 tokens it reuses each weight 64 times and
    is bound by its MACs. The element term is added either way."""
    layer = nn.Linear(1280, 1000)
    one = lc.LatencyByWeight(layer, (torch.zeros(1, 1280),))
    assert one.total == pytest.approx(1280 * 1000 * lc.COST_WEIGHT + (1280 + 1000) * lc.COST_ELEMENT)
    tokens = lc.LatencyByWeight(layer, (torch.zeros(1, 64, 1280),))
    assert tokens.total == pytest.approx(64 * 1280 * 1000 * lc.COST_DENSE_MAC + 64 * (1280 + 1000) * lc.COST_ELEMENT)
    free = lc.LatencyByWeight(layer, (torch.zeros(1, 1280),), costs=lc.LatencyCosts(weight=0.0))
    assert free.total == pytest.approx(1280 * 1000 + (1280 + 1000) * lc.COST_ELEMENT)
