"""Latency cost constants measured on the machine (issue 20): the fit, the calibration, ``bench --calibrate``,
and ``compress --latency-costs``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slimmer.errors import ConfigError, InputError
from slimmer.export import calibrate as cal
from slimmer.graph import build_groups
from slimmer.graph.macs import to_meta
from slimmer.structures.channel import plan_channels
from slimmer.structures.latency_cost import BUILT_IN, LatencyByWeight, LatencyCosts, load_latency_costs

FITTED = [p for p in cal.PROBES if p.in_fit]


def test_the_fit_recovers_known_constants_exactly() -> None:
    features = np.array([p.features() for p in FITTED], dtype=np.float64)
    truth = np.array([2e-8, 3.2e-8, 7e-8, 5e-7])  # ms per dense MAC, depthwise MAC, element, boundary element
    times = features @ truth + 0.01
    coef, overhead, error = cal.fit_costs(features, times)
    np.testing.assert_allclose(coef, truth, rtol=1e-9)
    assert overhead == pytest.approx(0.01, rel=1e-9)
    assert error < 1e-9
    assert coef[1] / coef[0] == pytest.approx(1.6) and coef[2] / coef[0] == pytest.approx(3.5)


def test_the_fit_is_non_negative_least_squares() -> None:
    # times that fall with the element count: unconstrained least squares would give the element
    # cost a negative value; NNLS sets it to 0 and is optimal (the KKT conditions hold)
    features = np.array([p.features() for p in FITTED], dtype=np.float64)
    times = features[:, 0] * 2e-8 + features[:, 1] * 4e-8 - features[:, 2] * 1e-9 + 0.5
    unconstrained, *_ = np.linalg.lstsq(
        np.hstack([features, np.ones((len(times), 1))]) / times[:, None], np.ones(len(times)), rcond=None
    )
    assert unconstrained.min() < 0
    coef, overhead, _ = cal.fit_costs(features, times)
    x = np.append(coef, overhead)
    assert np.all(x >= 0) and x.min() == 0.0
    design = np.hstack([features, np.ones((len(times), 1))]) / times[:, None]
    gradient = design.T @ (design @ x - 1.0) / np.abs(design).max(axis=0)  # per scaled column
    assert np.all(np.abs(gradient[x > 0]) < 1e-6) and np.all(gradient[x == 0] > -1e-6)


def synthetic_times(noise: float = 0.0):
    """A stand-in for ``time_probes``: exact times from known constants (times an optional random factor);
    the probe left out of the fit gets 10× its time, which must not move the constants."""
    truth, rng = np.array([2e-8, 3.2e-8, 7e-8, 5e-7]), np.random.default_rng(0)

    def time_probes(probes, **_):
        times = np.array([p.features() for p in probes], dtype=np.float64) @ truth + 0.01
        times *= np.exp(rng.normal(0.0, noise, len(times)))
        return [t * (1 if p.in_fit else 10) for t, p in zip(times, probes, strict=True)]

    return time_probes


def test_calibrate_normalizes_to_a_dense_mac_and_leaves_the_gemm_out(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(cal, "time_probes", synthetic_times())
    calibration = cal.calibrate(rounds=1)
    costs = calibration.costs
    assert costs.dense_mac == 1.0
    assert costs.depthwise_mac == pytest.approx(1.6, rel=1e-9) and costs.element == pytest.approx(3.5, rel=1e-9)
    assert calibration.ns_per_dense_mac == pytest.approx(2e-8 * 1e6) and calibration.boundary == pytest.approx(25.0)
    assert costs.fit_error < 1e-9 and calibration.warnings == ()
    (gemm,) = [p for p in calibration.probes if not p.in_fit]
    # the Gemm (10× its MACs model here) sets the weight term: its time beyond the overhead and the
    # element terms, per weight element (one per MAC at batch 1), in dense MACs
    rest = gemm.measured_ms - 0.01 - gemm.elements * 7e-8 - gemm.boundary_elements * 5e-7
    assert costs.weight == pytest.approx(rest / gemm.dense_macs / 2e-8, rel=1e-6) and costs.weight > 9
    assert gemm.fitted_ms == pytest.approx(gemm.measured_ms, rel=1e-6)  # with the weight term, predicted
    path = write(tmp_path / "c.json", calibration.to_json())
    assert load_latency_costs(path) == LatencyCosts(**{**costs.to_dict(), "source": str(path)})


def test_a_noisy_calibration_says_so(monkeypatch) -> None:
    monkeypatch.setattr(cal, "time_probes", synthetic_times(noise=0.6))
    calibration = cal.calibrate(rounds=1)
    assert calibration.costs.fit_error > cal.NOISY_FIT
    assert any("fit error" in w for w in calibration.warnings)
    assert calibration.to_json()["warnings"] == list(calibration.warnings)


@pytest.mark.parametrize("times", [[1.0, -1.0], [1.0, math.nan], [1.0]])
def test_the_fit_refuses_bad_times(times) -> None:
    with pytest.raises(ConfigError):
        cal.fit_costs(np.ones((2, 3)), np.array(times))


@pytest.mark.parametrize("probe", [p for p in cal.PROBES if p.kind != "linear"], ids=lambda p: p.name)
def test_probe_features_are_what_latency_by_weight_counts(probe: cal.Probe) -> None:
    """The calibration's MACs and elements are the ones latency-aware ranking weighs with the constants."""
    groups = probe.c_in if probe.kind == "depthwise" else 1
    layers = [
        nn.Conv2d(probe.c_in, probe.c_out, probe.kernel, probe.stride, probe.kernel // 2, groups=groups)
        for _ in range(probe.depth)
    ]
    x = torch.zeros(1, probe.c_in, probe.size, probe.size)
    table = LatencyByWeight(*to_meta(nn.Sequential(*layers), (x,)))
    dense, depthwise, elements, boundary = probe.features()
    macs = sum(e["macs"] for e in table.layers.values())
    assert (dense, depthwise) == ((0, macs) if probe.kind == "depthwise" else (macs, 0))
    assert elements == sum(e["in"] + e["out"] for e in table.layers.values())
    assert all(e["depthwise"] == (probe.kind == "depthwise") for e in table.layers.values())
    assert boundary == x.numel() + table.layers[f"{probe.depth - 1}.weight"]["out"]


def test_a_linear_probe_counts_as_latency_by_weight_does() -> None:
    probe = next(p for p in cal.PROBES if p.kind == "linear" and p.tokens > 1)
    x = torch.zeros(1, probe.tokens, probe.c_in)
    entry = LatencyByWeight(*to_meta(nn.Sequential(nn.Linear(probe.c_in, probe.c_out)), (x,))).layers["0.weight"]
    assert probe.features()[:3] == (entry["macs"] * probe.depth, 0, (entry["in"] + entry["out"]) * probe.depth)


def test_calibration_on_this_machine_gives_positive_finite_constants() -> None:
    calibration = cal.calibrate(rounds=3, warmup=1)
    costs = calibration.costs
    assert costs.dense_mac == 1.0
    for value in (costs.depthwise_mac, costs.element, costs.fit_error, calibration.ns_per_dense_mac):
        assert math.isfinite(value) and value >= 0
    assert costs.depthwise_mac > 0 and calibration.ns_per_dense_mac > 0
    assert costs.threads == 1 and costs.onnxruntime and costs.machine
    assert len(calibration.probes) == len(cal.PROBES) and all(p.measured_ms > 0 for p in calibration.probes)


def test_calibration_options_are_checked() -> None:
    with pytest.raises(ConfigError):
        cal.calibrate(rounds=0)
    with pytest.raises(ConfigError):
        cal.calibrate(threads=0)


# ----------------------------------------------------------------------------- the file


def write(path: Path, payload) -> Path:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload), encoding="utf-8")
    return path


def test_a_calibration_file_reads_back(tmp_path) -> None:
    costs = load_latency_costs(
        write(
            tmp_path / "c.json",
            {"dense_mac": 1, "depthwise_mac": 2.5, "element": 0, "threads": 1, "machine": "m", "fit_error": 0.1},
        )
    )
    assert costs == LatencyCosts(1.0, 2.5, 0.0, 0.1, "m", 1, None, str(tmp_path / "c.json"))
    assert costs.weight == BUILT_IN.weight  # a file from before the weight term: the built-in one
    with_weight = write(tmp_path / "w.json", {"dense_mac": 1, "depthwise_mac": 2.5, "element": 0, "weight": 7})
    assert load_latency_costs(with_weight).weight == 7.0
    bad = write(tmp_path / "b.json", {"dense_mac": 1, "depthwise_mac": 2.5, "element": 0, "weight": -1})
    with pytest.raises(InputError, match="the field 'weight' must be ≥ 0"):
        load_latency_costs(bad)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ("{not json", "not valid JSON"),
        ([1.0, 1.6, 3.5], "expected a JSON object"),
        ({"dense_mac": 1.0, "element": 3.5}, "'depthwise_mac' is missing"),
        ({"dense_mac": 1.0, "depthwise_mac": -1.6, "element": 3.5}, "'depthwise_mac' must be ≥ 0"),
        ({"dense_mac": 0.0, "depthwise_mac": 1.6, "element": 3.5}, "'dense_mac' must be > 0"),
        ({"dense_mac": 1.0, "depthwise_mac": 1.6, "element": "3.5"}, "'element' must be a finite number"),
        ({"dense_mac": 1.0, "depthwise_mac": 1.6, "element": True}, "'element' must be a finite number"),
        # an integer too large for a float overflowed inside the check: exit 1 instead of 3
        ({"dense_mac": 10**400, "depthwise_mac": 1.6, "element": 3.5}, "'dense_mac' must be a finite number"),
        ({"dense_mac": 1, "depthwise_mac": 1.6, "element": 3.5, "weight": 10**400}, "'weight' must be a finite"),
        # finite but so large that the ranking's sums overflow to inf (and the costs to NaN)
        ({"dense_mac": 1, "depthwise_mac": 1.6, "element": 3.5, "weight": 1e308}, "'weight' is 1e[+]308, more than"),
    ],
)
def test_a_bad_calibration_file_is_named_with_its_field(tmp_path, payload, needle) -> None:
    path = write(tmp_path / "c.json", payload)
    with pytest.raises(InputError, match=needle) as info:
        load_latency_costs(path)
    assert str(path) in str(info.value)


def test_a_missing_calibration_file(tmp_path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_latency_costs(tmp_path / "absent.json")


# ----------------------------------------------------------------------------- bench --calibrate


def test_bench_calibrate_writes_the_file_and_refuses_to_clobber_it(cli, tmp_path) -> None:
    out = tmp_path / "costs.json"
    run = cli("bench", "--calibrate", "--pairs", "2", "--warmup", "0", "-o", out, "--json")
    assert run.code == 0, run.stderr
    payload = run.json()
    assert payload["output"] == str(out) and payload["rounds"] == 2
    costs = load_latency_costs(out)
    assert costs.dense_mac == 1.0 and costs.depthwise_mac == payload["depthwise_mac"] > 0
    assert costs.element == payload["element"] and costs.threads == 1
    assert "depthwise_mac" in run.stderr and "fit error" in run.stderr
    before = out.read_bytes()
    again = cli("bench", "--calibrate", "--pairs", "2", "--warmup", "0", "-o", out)
    assert again.code == 3 and "already exists" in again.stderr and "--force" in again.stderr
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["costs.json"]  # no temporary file left


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["a.onnx", "--calibrate"], "takes no ONNX file arguments"),
        (["a.onnx", "b.onnx", "--calibrate", "-o", "c.json"], "takes no ONNX file arguments"),
        ([], "missing the ONNX file argument"),
        (["a.onnx", "-o", "c.json"], "-o/--output apply to --calibrate"),
        (["--calibrate", "--quick", "--pairs", "3"], "either --quick or --pairs"),
        (["--calibrate", "--batch", "2"], "--calibrate uses batch 1"),
    ],
)
def test_bench_usage_errors_exit_2(cli, tmp_path, monkeypatch, args, needle) -> None:
    monkeypatch.chdir(tmp_path)
    run = cli("bench", *args)
    assert run.code == 2, run.stderr
    assert needle in run.stderr
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- compress --latency-costs


def depthwise_model():
    import toy_models

    return toy_models.tied_scores(toy_models.DepthwisePaths())


def kept(plan) -> list[tuple[int, int]]:
    return [(g.channels, len(g.kept)) for g in plan.groups]


def expand_kept(plan) -> int:
    (group,) = [g for g in plan.groups if ("expand.weight", 0) in [tuple(m) for m in g.members]]
    return len(group.kept)


def test_the_constants_change_the_latency_aware_plan() -> None:
    m = depthwise_model()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    groups = build_groups(m, (x,))

    def plan(costs):
        return plan_channels(
            groups, m, macs_target=0.7, example_inputs=(x,), latency_aware=True, latency_costs=costs, round_to=4
        )

    built_in, free = plan(None), plan(LatencyCosts(1.0, 0.0, 0.0, weight=0.0))
    huge = plan(LatencyCosts(depthwise_mac=100.0, element=0.0, weight=0.0))
    assert kept(built_in) == kept(plan(BUILT_IN))
    assert kept(huge) != kept(built_in) != kept(free)
    # the depthwise path (expand → dw → project): pruned first with the built-in constants (it costs
    # more time per MAC), kept whole when depthwise MACs and activations cost nothing
    assert expand_kept(built_in) == 4 and expand_kept(free) == 32
    for p in (built_in, huge, free):
        assert p.macs_after <= 0.7 * p.macs_before


@pytest.mark.slow
def test_compress_ranks_with_the_files_constants_and_records_them(cli, tmp_path) -> None:
    ckpt = tmp_path / "dw.pt"
    torch.save(depthwise_model().state_dict(), ckpt)
    free = write(tmp_path / "free.json", {"dense_mac": 1.0, "depthwise_mac": 0.0, "element": 0.0, "threads": 1})
    common = [
        "--arch",
        "toy_models:DepthwisePaths",
        "--method",
        "channel",
        "--macs-target",
        "0.7",
        "--latency-aware",
        "--round-to",
        "4",
        "--json",
    ]
    base = cli("compress", ckpt, *common, "-o", tmp_path / "a.onnx")
    run = cli("compress", ckpt, *common, "--latency-costs", free, "-o", tmp_path / "b.onnx")
    assert base.code == 0 and run.code == 0, run.stderr
    a, b = base.json(), run.json()
    assert a["pruning"]["latency_costs"] == BUILT_IN.to_dict()
    assert b["pruning"]["latency_costs"] == {**LatencyCosts(1.0, 0.0, 0.0).to_dict(), "threads": 1, "source": str(free)}
    assert b["config"]["latency_costs"] == str(free)
    # built-in constants: the depthwise path costs more time per MAC, so its channels go first;
    # when depthwise MACs and activations cost nothing, it is the cheaper path and stays whole
    assert a["sparsity"]["per_layer"]["expand.weight"] == 0.875
    assert "expand.weight" not in b["sparsity"]["per_layer"]  # lists the layers that lost channels
    assert b["sparsity"]["per_layer"]["dense.weight"] > a["sparsity"]["per_layer"]["dense.weight"]
    assert b["macs"]["after"] <= 0.7 * b["macs"]["before"]


@pytest.mark.parametrize(
    ("flags", "code", "needle"),
    [
        (["--latency-aware", "--latency-costs", "{absent}"], 3, "no such file"),
        (["--latency-aware", "--latency-costs", "{bad}"], 3, "'element' must be ≥ 0"),
        (["--latency-aware", "--latency-costs", "{huge}"], 3, "'weight' must be a finite number"),
        (["--latency-costs", "{good}"], 2, "needs --latency-aware or --speedup"),
    ],
)
def test_compress_refuses_a_bad_costs_file_before_any_work(cli, tiny_ckpt, flags, code, needle) -> None:
    folder = tiny_ckpt.parent
    paths = {
        "absent": folder / "absent.json",
        "bad": write(folder / "bad.json", {"dense_mac": 1.0, "depthwise_mac": 1.6, "element": -3.5}),
        "good": write(folder / "good.json", {"dense_mac": 1.0, "depthwise_mac": 1.6, "element": 3.5}),
        "huge": write(folder / "huge.json", {"dense_mac": 1, "depthwise_mac": 1.6, "element": 3.5, "weight": 10**400}),
    }
    before = sorted(p.name for p in folder.iterdir())
    flags = [f.format(**paths) for f in flags]
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--method", "channel", *flags)
    assert run.code == code, run.stderr
    assert needle in run.stderr and "--latency-costs" in run.stderr
    assert sorted(p.name for p in folder.iterdir()) == before


def test_the_speedup_search_ranks_with_the_constants_given() -> None:
    from slimmer.graph.macs import count_macs
    from slimmer.structures.speedup import plan_for_speedup

    m = depthwise_model()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    before = count_macs(m, (x,))

    def measure(pruned: nn.Module) -> float:  # a deterministic stand-in: speedup = MACs reduction
        return before / count_macs(pruned, (x,))

    def search(costs):
        return plan_for_speedup(build_groups(m, (x,)), m, 1.4, (x,), measure, round_to=4, latency_costs=costs).plan

    assert expand_kept(search(None)) < expand_kept(search(LatencyCosts(1.0, 0.0, 0.0))) == 32


def test_costs_that_overflow_the_sums_rank_neutrally_not_as_nan() -> None:
    """Constants given directly (not read from a file) can still be huge: a cost that is not finite is
    neutral (1.0), so the ranking falls back to the scores instead of an arbitrary order of NaNs."""
    m = depthwise_model()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    groups = build_groups(m, (x,))
    costs = LatencyByWeight(*to_meta(m, (x,)), costs=LatencyCosts(weight=1e308)).relative_cost(groups.prunable)
    assert costs and all(math.isfinite(c) for c in costs)
