"""SynFlow: the closed form on a linear network, the caller's model untouched, no overflow,
and scores that reproduce the iterative mask."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimmer.criteria import ScoreContext
from slimmer.criteria.synflow import score_synflow, synflow_saliency
from slimmer.errors import ConfigError
from slimmer.structures.unstructured import prunable_weights, unstructured_masks


def two_layer() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False))


def test_single_round_matches_the_closed_form() -> None:
    # R = 1ᵀ|W2||W1|1, so ∂R/∂|W1|[i,j] = Σ_k |W2[k,i]| and ∂R/∂|W2|[k,i] = Σ_j |W1[i,j]|
    model = two_layer()
    a1, a2 = model[0].weight.detach().double().abs(), model[2].weight.detach().double().abs()
    scores = synflow_saliency(model, ["0.weight", "2.weight"], (1, 5))
    torch.testing.assert_close(scores["0.weight"], a1 * a2.sum(0)[:, None], rtol=1e-12, atol=0)
    torch.testing.assert_close(scores["2.weight"], a2 * a1.sum(1)[None, :], rtol=1e-12, atol=0)
    # network-wise conservation: every layer carries the same total score, R
    assert float(scores["0.weight"].sum()) == pytest.approx(float(a2.sum(0) @ a1.sum(1)), rel=1e-12)
    assert float(scores["2.weight"].sum()) == pytest.approx(float(scores["0.weight"].sum()), rel=1e-12)


def test_one_round_scores_rank_like_the_closed_form() -> None:
    model = two_layer()
    weights = dict(prunable_weights(model))
    ctx = ScoreContext(model, extra={"sparsity": 0.5, "input_shape": (1, 5), "synflow_rounds": 1})
    masks = unstructured_masks(score_synflow(weights, ctx), 0.5, min_keep=0)
    raw = synflow_saliency(model, sorted(weights), (1, 5))
    flat = torch.cat([raw[n].flatten() for n in sorted(weights)])
    kept = torch.cat([masks.masks[n].flatten() for n in sorted(weights)])
    assert int(kept.sum()) == flat.numel() - 16
    assert float(flat[~kept].max()) <= float(flat[kept].min())


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_final_scores_reproduce_the_iterative_mask(conv_bn_net, scope: str) -> None:
    weights = dict(prunable_weights(conv_bn_net))
    extra = {"sparsity": 0.9, "input_shape": (1, 1, 8, 8), "synflow_rounds": 20, "scope": scope}
    scores = score_synflow(weights, ScoreContext(conv_bn_net, extra=extra))
    iterative = {n: s >= 1.0 for n, s in scores.items()}  # survivors score >= 1, pruned < 1
    masks = unstructured_masks(scores, 0.9, scope=scope, min_keep=0)
    assert all(torch.equal(masks.masks[n], iterative[n]) for n in weights)
    total = sum(w.numel() for w in weights.values())
    if scope == "global":
        assert masks.pruned == round(0.9 * total)


def test_callers_signs_and_batchnorm_statistics_are_unchanged(trained_resnet20) -> None:
    model = copy.deepcopy(trained_resnet20).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(bool((v < 0).any()) for k, v in before.items() if k.endswith("running_mean"))
    extra = {"sparsity": 0.9, "input_shape": (1, 1, 28, 28), "synflow_rounds": 3}
    score_synflow(dict(prunable_weights(model)), ScoreContext(model, extra=extra))
    after = model.state_dict()
    for key, value in before.items():
        assert value.dtype == after[key].dtype and torch.equal(value, after[key]), key
    assert model.training and all(p.grad is None for p in model.parameters())


def test_no_overflow_on_a_deep_net_with_large_weights() -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(30):
        layers += [nn.Linear(32, 32, bias=False), nn.ReLU()]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 3.0)
    float32_r = copy.deepcopy(model)
    with torch.no_grad():
        for p in float32_r.parameters():
            p.abs_()
        assert not torch.isfinite(float32_r(torch.ones(1, 32)).sum())  # float32 would overflow
    weights = dict(prunable_weights(model))
    extra = {"sparsity": 0.9, "input_shape": (1, 32), "synflow_rounds": 10}
    scores = score_synflow(weights, ScoreContext(model, extra=extra))
    assert all(bool(torch.isfinite(s).all()) for s in scores.values())
    masks = unstructured_masks(scores, 0.9, min_keep=0)
    assert all(int(m.sum()) > 0 for m in masks.masks.values())


@pytest.mark.parametrize(
    "extra", [{"input_shape": (1, 5)}, {"sparsity": 0.5}, {"sparsity": 1.0, "input_shape": (1, 5)}]
)
def test_missing_sparsity_or_input_shape_is_a_config_error(extra: dict) -> None:
    model = two_layer()
    with pytest.raises(ConfigError):
        score_synflow(dict(prunable_weights(model)), ScoreContext(model, extra=extra))
