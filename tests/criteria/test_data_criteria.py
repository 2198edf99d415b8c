"""SNIP, Taylor and GraSP against scores computed independently, and their --data contract."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimmer.criteria import ScoreContext, get_criterion
from slimmer.criteria.grasp import score_grasp
from slimmer.criteria.snip import score_snip
from slimmer.criteria.taylor import score_taylor
from slimmer.errors import ConfigError
from slimmer.structures.unstructured import unstructured_masks


def linear_net() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 3, bias=False)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    return [(torch.randn(6, 4, generator=gen), torch.tensor([0, 1, 2, 2, 1, 0])) for _ in range(2)]


def hand_grad(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∂ mean CE(x Wᵀ, y) / ∂W = (softmax − onehot)ᵀ x / B, written out."""
    p = torch.softmax(x @ w.T, dim=1)
    return (p - F.one_hot(y, 3).double()).T @ x / len(x)


def test_snip_is_abs_of_summed_grad_times_weight() -> None:
    model = linear_net()
    w = model.weight.detach().double()
    data = batches()
    expected = (w * sum(hand_grad(w, x.double(), y) for x, y in data)).abs()
    scores = score_snip({"weight": model.weight}, ScoreContext(model, batches=data))
    torch.testing.assert_close(scores["weight"].double(), expected, rtol=1e-5, atol=1e-7)


def test_taylor_is_sum_of_squared_grad_times_weight() -> None:
    model = linear_net()
    w = model.weight.detach().double()
    data = batches()
    expected = sum((w * hand_grad(w, x.double(), y)).square() for x, y in data)
    scores = score_taylor({"weight": model.weight}, ScoreContext(model, batches=data))
    torch.testing.assert_close(scores["weight"].double(), expected, rtol=1e-5, atol=1e-9)


def test_snip_without_labels_uses_the_models_argmax() -> None:
    model = linear_net()
    x = batches()[0][0]
    argmax = (x @ model.weight.detach().T).argmax(1)
    unlabelled = score_snip({"weight": model.weight}, ScoreContext(model, batches=[(x, None)]))
    labelled = score_snip({"weight": model.weight}, ScoreContext(model, batches=[(x, argmax)]))
    assert torch.equal(unlabelled["weight"], labelled["weight"])


def test_data_criteria_leave_the_callers_model_alone(conv_bn_net, conv_batches) -> None:
    conv_bn_net.train()
    before = copy.deepcopy(conv_bn_net.state_dict())
    weights = {n: p for n, p in conv_bn_net.named_parameters() if n.endswith("weight") and p.dim() > 1}
    for name in ("snip", "taylor", "grasp"):
        get_criterion(name).score(weights, ScoreContext(conv_bn_net, batches=conv_batches))
        assert conv_bn_net.training and all(m.training for m in conv_bn_net.modules()), name
        assert all(p.grad is None for p in conv_bn_net.parameters()), name
        after = conv_bn_net.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), name


@pytest.mark.parametrize("name", ["snip", "taylor", "grasp"])
def test_data_criteria_without_data_are_config_errors(name: str) -> None:
    model = linear_net()
    with pytest.raises(ConfigError, match=f"--criterion {name} needs --data"):
        get_criterion(name).score({"weight": model.weight}, ScoreContext(model))


def grasp_case() -> tuple[nn.Sequential, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2, bias=False)).double()
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    return model, [(x, y)]


def reference_theta_hg(model: nn.Module, x: torch.Tensor, y: torch.Tensor, per_class: int) -> torch.Tensor:
    """θ⊙Hg from explicit Hessians: halves A (class 0) and B (class 1) of the balanced batch."""
    idx0 = (y == 0).nonzero().flatten()[:per_class]
    idx1 = (y == 1).nonzero().flatten()[:per_class]
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    theta = torch.cat([w1.flatten(), w2.flatten()])

    def loss(flat: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        a, b = flat[: w1.numel()].view_as(w1), flat[w1.numel() :].view_as(w2)
        return F.cross_entropy(torch.tanh(xs @ a.T) @ b.T / 200.0, ys)

    halves = [(x[idx0], y[idx0]), (x[idx1], y[idx1])]
    g = sum(torch.autograd.functional.jacobian(lambda t, h=h: loss(t, *h), theta) for h in halves)
    hessian = sum(torch.autograd.functional.hessian(lambda t, h=h: loss(t, *h), theta) for h in halves)
    return theta * (hessian @ g)


def test_grasp_matches_explicit_hessian_times_gradient() -> None:
    model, data = grasp_case()
    expected = reference_theta_hg(model, *data[0], per_class=3)
    weights = {"0.weight": model[0].weight, "2.weight": model[2].weight}
    scores = score_grasp(weights, ScoreContext(model, batches=data, extra={"samples_per_class": 3}))
    got = torch.cat([scores["0.weight"].flatten(), scores["2.weight"].flatten()]).double()
    torch.testing.assert_close(got, expected / expected.sum().abs(), rtol=1e-4, atol=1e-7)


def test_grasp_prunes_the_highest_minus_theta_hg_first() -> None:
    """Official rule: S = −θ⊙Hg, remove the top-k of S. slimmer removes the lowest returned score."""
    model, data = grasp_case()
    official = -reference_theta_hg(model, *data[0], per_class=3)
    weights = {"0.weight": model[0].weight, "2.weight": model[2].weight}
    scores = score_grasp(weights, ScoreContext(model, batches=data, extra={"samples_per_class": 3}))
    k = 5
    masks = unstructured_masks(scores, k / official.numel(), min_keep=0)
    removed = torch.cat([~masks.masks["0.weight"].flatten(), ~masks.masks["2.weight"].flatten()])
    expected = torch.zeros(official.numel(), dtype=torch.bool)
    expected[torch.topk(official, k).indices] = True
    assert torch.equal(removed, expected)
    # and those are the weights with the most negative θ⊙Hg
    assert float((-official)[removed].max()) < float((-official)[~removed].min())
