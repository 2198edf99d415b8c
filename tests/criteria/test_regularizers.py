"""Each regularizer through a minimal training loop that calls the TrainHook seam in order."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimmer.errors import ConfigError
from slimmer.train.hooks import TrainHook
from slimmer.train.regularizers import (
    REGULARIZERS,
    GrowingRegularizer,
    GrowingRegularizerPick,
    HaloRegularizer,
    SlimmingRegularizer,
)


def toy() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def train(model: nn.Module, hooks: list[TrainHook], steps: int, lr: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    for h in hooks:
        h.on_start(model, steps)
    extra = [p for h in hooks for p in h.extra_parameters()]
    opt = torch.optim.SGD(list(model.parameters()) + extra, lr=lr, momentum=0.9)
    model.train()
    for step in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        for h in hooks:
            term = h.loss(model, step)
            if term is not None:
                loss = loss + term
        loss.backward()
        for h in hooks:
            h.after_backward(model, step)
        opt.step()
        for h in hooks:
            h.after_step(model, step)
    for h in hooks:
        h.on_end(model)


def test_registry_names() -> None:
    assert REGULARIZERS.names() == ["greg", "greg2", "halo", "slimming"]
    assert REGULARIZERS.get("halo") is HaloRegularizer


def test_slimming_drives_gamma_toward_zero() -> None:
    plain, slim = toy(), toy()
    train(plain, [], 150)
    train(slim, [SlimmingRegularizer(lam=1e-2)], 150)
    assert float(slim[1].weight.detach().abs().sum()) < 0.8 * float(plain[1].weight.detach().abs().sum())


def test_slimming_adds_lambda_sign_gamma_to_the_gradient() -> None:
    model = toy()
    model[1].weight.data = torch.linspace(-1, 1, 16)
    model[1].weight.grad = torch.zeros(16)
    hook = SlimmingRegularizer(names=["1.weight"], lam=0.5)
    hook.on_start(model, 1)
    hook.after_backward(model, 0)
    assert torch.equal(model[1].weight.grad, 0.5 * torch.sign(model[1].weight.data))


def test_greg_shrinks_only_the_selected_slices() -> None:
    model = toy()
    # the classifier, not the layer before BatchNorm: BN makes that one scale-invariant
    keep = torch.ones(3, 16, dtype=torch.bool)
    keep[:, :8] = False  # remove the first 8 input columns of the classifier
    w0 = model[3].weight.detach().clone()
    hook = GrowingRegularizer({"3.weight": keep}, lam_step=0.05, update_every=2, lam_max=1.0)
    train(model, [hook], 200)
    w = model[3].weight.detach()
    selected = float(w[:, :8].norm() / w0[:, :8].norm())
    kept = float(w[:, 8:].norm() / w0[:, 8:].norm())
    assert hook.lam == pytest.approx(1.0)
    assert selected < 0.05 and kept > 0.5, (selected, kept)


def test_greg_lambda_grows_every_k_steps_up_to_the_cap() -> None:
    model = toy()
    hook = GrowingRegularizer({"0.weight": torch.ones(16, 8, dtype=torch.bool)}, lam_step=0.3, update_every=3)
    for step in range(12):
        hook.after_step(model, step)
    assert hook.lam == pytest.approx(1.0)  # 4 growths of 0.3, capped at 1
    with pytest.raises(ConfigError):
        GrowingRegularizer({}, update_every=0)


def test_greg2_grows_uniformly_then_picks_the_smallest_and_pushes_them() -> None:
    model = toy()
    hook = GrowingRegularizerPick(
        {"3.weight": 0.25}, pick_lam_step=1e-3, pick_lam_max=5e-3, lam_step=0.05, update_every=2
    )
    train(model, [hook], 10)
    assert hook.picked
    removed = ~hook.keep_masks["3.weight"]
    assert int(removed.sum()) == 12
    w_at_pick = model[3].weight.detach().clone()
    assert float(w_at_pick.abs()[removed].max()) <= float(w_at_pick.abs()[~removed].min()) + 1e-6
    train(model, [hook], 200)
    w = model[3].weight.detach()
    assert float(w[removed].norm() / w_at_pick[removed].norm()) < 0.1


def test_halo_scales_stay_positive_and_the_penalty_finite() -> None:
    model = toy()
    hook = HaloRegularizer(["0.weight", "3.weight"], xi=1e-3, psi=1e-3, scale_to_steps=False)
    train(model, [hook], 100)
    scales = hook.scales()
    assert all(bool((s > 0).all()) and bool(torch.isfinite(s).all()) for s in scales.values())
    assert any(not torch.allclose(s, torch.ones_like(s)) for s in scales.values())  # they trained
    assert math.isfinite(float(hook.loss(model, 0).detach()))
    with torch.no_grad():
        hook.raw["0.weight"].fill_(-1e6)  # a raw scale driven far negative
    assert float(hook.scales()["0.weight"].detach().min()) == pytest.approx(hook.eps)
    assert math.isfinite(float(hook.loss(model, 0).detach()))


def test_halo_penalty_is_the_formula_at_start_and_scales_for_short_runs() -> None:
    model = toy()
    hook = HaloRegularizer(["0.weight"], xi=2.0, psi=3.0, scale_to_steps=False)
    hook.on_start(model, 10)
    expected = 2.0 * model[0].weight.abs().sum() + 3.0 * model[0].weight.numel()  # λ = 1 at start
    assert float(hook.loss(model, 0).detach()) == pytest.approx(float(expected), rel=1e-5)
    short = HaloRegularizer(["0.weight"])
    short.on_start(model, 1250)
    assert short.scale == pytest.approx(100.0)
