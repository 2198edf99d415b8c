"""The pruning-limit estimate (slimmer.limit, Zhang et al. NeurIPS 2024) and ``slimmer inspect --limit``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slimmer.errors import ConfigError, InputError
from slimmer.limit import (
    LimitConfig,
    Spectrum,
    estimate_limit,
    gaussian_width,
    hessian_matvec,
    removed_norms,
    slq,
    solve_limit,
)
from slimmer.structures.unstructured import unstructured_masks
from slimmer.train.data import Dataset

EIGS = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.5, 7.0, 9.0, 12.0], dtype=torch.float64)


def quadratic(d: torch.Tensor) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A bias-free Linear(D→1) with loss mean_n ½·out_n² over inputs x_n = √(D·d_n)·e_n: the loss is
    ½·Σ d_n w_n², so the Hessian with respect to the weight is exactly diag(d)."""
    n = len(d)
    model = nn.Linear(n, 1, bias=False)
    x = torch.diag((n * d).sqrt()).float()
    return model, [(x[:4], torch.zeros(4)), (x[4:], torch.zeros(n - 4))]


def half_square(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x).squeeze(1) ** 2).mean()


def test_hessian_vector_product_of_the_quadratic_is_its_diagonal():
    model, batches = quadratic(EIGS)
    v = torch.linspace(-1, 1, len(EIGS), dtype=torch.float64)
    hv = hessian_matvec(model, [model.weight], batches, half_square)(v)
    assert torch.allclose(hv, EIGS * v, rtol=1e-5, atol=1e-6)


def test_slq_recovers_the_moments_of_a_diagonal_hessian():
    model, batches = quadratic(EIGS)
    matvec = hessian_matvec(model, [model.weight], batches, half_square)
    # 3 steps already integrate polynomials up to degree 5 exactly; a Rademacher probe makes
    # vᵀ diag(d)^k v / D = mean(d^k) exact for a diagonal Hessian.
    spec = slq(matvec, len(EIGS), steps=3, probes=1, seed=7)
    assert len(spec.nodes) == 3 and math.isclose(sum(spec.weights), 1.0, rel_tol=1e-9)
    for k in (1, 2, 3):
        assert spec.moment(k) == pytest.approx(float((EIGS**k).mean()), rel=1e-5)
    # a full run (steps ≥ D, more asked than the space has) finds every eigenvalue with weight 1/D
    full = slq(matvec, len(EIGS), steps=100, probes=2, seed=1)
    order = sorted(zip(full.nodes, full.weights, strict=False))
    assert len(order) == 2 * len(EIGS)
    assert [n for n, _ in order[::2]] == pytest.approx(EIGS.tolist(), rel=1e-4)
    assert [w for _, w in order] == pytest.approx([0.5 / len(EIGS)] * (2 * len(EIGS)), abs=1e-6)


def test_gaussian_width_hand_computed():
    # ε = 0.5 → r² = 1/|λ|: λ = 1 → r² = 1, λ = −4 → r² = 0.25, λ = 0 → r² = ∞ (term 1)
    spec = Spectrum(nodes=(1.0, -4.0, 0.0), weights=(0.5, 0.25, 0.25))
    # R = 1: 0.5·1/(1+1) + 0.25·0.25/(1+0.25) + 0.25·1 = 0.25 + 0.05 + 0.25
    assert gaussian_width(spec, 1.0, 0.5) == pytest.approx(0.55, abs=1e-12)
    assert gaussian_width(spec, 0.0, 0.5) == 1.0
    # unnormalised weights are normalised: doubling every weight changes nothing
    double = Spectrum(nodes=spec.nodes, weights=tuple(2 * w for w in spec.weights))
    assert gaussian_width(double, 2.0, 0.5) == pytest.approx(gaussian_width(spec, 2.0, 0.5), abs=1e-12)
    # R = 2: 0.5·1/5 + 0.25·0.25/4.25 + 0.25
    assert gaussian_width(spec, 2.0, 0.5) == pytest.approx(0.1 + 0.0625 / 4.25 + 0.25, abs=1e-12)


def test_removed_norms_match_global_magnitude_masks():
    gen = torch.Generator().manual_seed(0)
    weights = {"a.weight": torch.randn(6, 5, generator=gen), "b.weight": torch.randn(7, generator=gen)}
    norms = removed_norms(list(weights.values()))
    assert len(norms) == 38 and float(norms[0]) == 0.0
    for ratio in (0.1, 0.5, 0.8):
        masks = unstructured_masks({n: w.abs() for n, w in weights.items()}, ratio, min_keep=0)
        removed = sum(float((w[~masks.masks[n]] ** 2).sum()) for n, w in weights.items())
        assert float(norms[int(round(ratio * 37))]) == pytest.approx(math.sqrt(removed), rel=1e-6)


def test_limit_on_a_constructed_case():
    # magnitudes 1, 2, 3, 4 → R_k = 0, 1, √5, √14, √30; one eigenvalue 1 with 2ε = 1 → gw(R) = 1/(R²+1):
    # k=1: gw = 0.5 ≥ 0.25; k=2: gw = 1/6 < 0.5 → the limit is 1/4
    norms = removed_norms([torch.tensor([3.0, -1.0]), torch.tensor([[4.0, -2.0]])])
    assert norms.tolist() == pytest.approx([0, 1, math.sqrt(5), math.sqrt(14), math.sqrt(30)])
    assert solve_limit(norms, Spectrum((1.0,), (1.0,)), 0.5) == 0.25
    # a flat direction (λ = 0, weight 0.9) makes everything up to 90% feasible: gw ≥ 0.9 everywhere,
    # and gw(R_4) = 0.9 + 0.1/31 ≥ 1 fails, so k = 3 (0.75) is the last with gw ≥ k/4
    assert solve_limit(norms, Spectrum((0.0, 1.0), (0.9, 0.1)), 0.5) == 0.75
    # ε = 0: no slack at all, nothing can be pruned
    assert solve_limit(norms, Spectrum((1.0,), (1.0,)), 0.0) == 0.0


@pytest.mark.parametrize(
    "field, value",
    [("lanczos_steps", 1), ("probes", 0), ("batch_size", 0), ("loss_batches", 1), ("seed", -1), ("probes", 1.5)],
)
def test_config_validates_itself(field, value):
    with pytest.raises(ConfigError, match=field.replace("_", "-")):
        LimitConfig(**{field: value})


def _mlp_data(n: int, labels: bool = True) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=gen)
    return Dataset(x, (x[:, 0] > 0).long() if labels else None, "toy")


def test_estimate_limit_leaves_the_model_unchanged_and_is_consistent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)).train()
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = estimate_limit(model, _mlp_data(64), LimitConfig(lanczos_steps=20, batch_size=16, curve_points=5))
    assert model.training and not model[0].weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res.weights == 6 * 8 + 8 * 2 and math.isclose(sum(res.spectrum.weights), 1.0, rel_tol=1e-9)
    assert [p.ratio for p in res.curve] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert res.curve[0].gw == 1.0 and res.curve[0].R == 0.0
    assert all(a.gw >= b.gw for a, b in zip(res.curve, res.curve[1:], strict=False))
    # the limit is where the curve crosses the diagonal
    below = [p.ratio for p in res.curve if p.gw >= p.ratio]
    above = [p.ratio for p in res.curve if p.gw < p.ratio]
    assert max(below) <= res.limit and (not above or res.limit < min(above))
    assert res.to_dict()["limit"] == res.limit and res.epsilon > 0


def test_estimate_limit_refuses_unusable_data():
    model = nn.Sequential(nn.Linear(6, 2))
    with pytest.raises(InputError, match="needs labels"):
        estimate_limit(model, _mlp_data(64, labels=False), LimitConfig(batch_size=16))
    with pytest.raises(InputError, match="fewer than 2 batches"):
        estimate_limit(model, _mlp_data(20), LimitConfig(batch_size=16))
    bad = Dataset(torch.randn(40, 6), torch.full((40,), 5), "toy")
    with pytest.raises(InputError, match="do not fit"):
        estimate_limit(model, bad, LimitConfig(batch_size=16))


def test_inspect_limit_cli_prints_the_limit_and_the_curve(cli, r20, fmnist_like_npz):
    args = ("inspect", r20, "--arch", "resnet20-fmnist", "--limit", "--data", fmnist_like_npz)
    run = cli(*args, "--lanczos-steps", "4", "--batch-size", "32", "--hessian-samples", "16", "--json")
    assert run.code == 0, run.stderr
    res = run.json()["limit"]
    assert res["weights"] == sum(layer["numel"] for layer in run.json()["layers"])
    assert res["config"]["lanczos_steps"] == 4 and res["config"]["hessian_samples"] == 16
    assert len(res["spectrum"]["nodes"]) == 4 and len(res["curve"]) == 21
    assert 0.0 <= res["limit"] <= 1.0 and res["epsilon"] > 0
    assert f"predicted limit: {res['limit']:.1%}" in run.stderr and "gw(R)" in run.stderr


def test_inspect_limit_option_errors(cli, r20, fmnist_like_npz):
    run = cli("inspect", r20, "--arch", "resnet20-fmnist", "--limit")
    assert run.code == 2 and "--limit needs --data" in run.stderr
    run = cli("inspect", r20, "--arch", "resnet20-fmnist", "--data", fmnist_like_npz)
    assert run.code == 2 and "--data is only read with --limit" in run.stderr
    run = cli("inspect", r20, "--arch", "resnet20-fmnist", "--limit", "--data", fmnist_like_npz, "--probes", "0")
    assert run.code == 2 and "--probes must be an integer ≥ 1" in run.stderr
    run = cli("inspect", r20, "--arch", "resnet20-fmnist", "--limit", "--data", fmnist_like_npz, "--batch-size", "200")
    assert run.code == 3 and "fewer than 2 batches" in run.stderr
