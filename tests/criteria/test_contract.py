"""Every registered criterion: scores shaped like the weights, finite, deterministic for a seed,
and the caller's model left as it was."""

from __future__ import annotations

import copy

import pytest
import torch

from slimmer.criteria import CRITERIA, ScoreContext
from slimmer.criteria.channel import channel_scores_from
from slimmer.errors import ConfigError
from slimmer.graph.groups import ChannelGroup, GroupMember
from slimmer.structures.unstructured import prunable_weights


def context(model, batches, seed: int) -> ScoreContext:
    extra = {"sparsity": 0.8, "input_shape": (1, 1, 8, 8), "synflow_rounds": 5, "samples_per_class": 2}
    return ScoreContext(model, seed=seed, batches=batches, extra=extra)


@pytest.mark.parametrize("name", CRITERIA.names())
def test_criterion_contract(name: str, conv_bn_net, conv_batches) -> None:
    weights = dict(prunable_weights(conv_bn_net))
    before = copy.deepcopy(conv_bn_net.state_dict())
    crit = CRITERIA.get(name)
    first = crit.score(weights, context(conv_bn_net, conv_batches, seed=7))
    second = crit.score(weights, context(conv_bn_net, conv_batches, seed=7))
    assert set(first) == set(weights)
    for key, w in weights.items():
        assert first[key].shape == w.shape, key
        assert bool(torch.isfinite(first[key]).all()), key
        assert torch.equal(first[key], second[key]), key
    after = conv_bn_net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in conv_bn_net.parameters())


@pytest.mark.parametrize("name", [n for n in CRITERIA.names() if CRITERIA.get(n).needs != "none"])
def test_data_criteria_need_batches(name: str, conv_bn_net) -> None:
    with pytest.raises(ConfigError, match="needs --data"):
        CRITERIA.get(name).score(dict(prunable_weights(conv_bn_net)), ScoreContext(conv_bn_net))


def test_bn_scale_broadcasts_gamma_of_the_following_batchnorm(conv_bn_net) -> None:
    weights = dict(prunable_weights(conv_bn_net))
    scores = CRITERIA.get("bn-scale").score(weights, context(conv_bn_net, None, 0))
    gamma = conv_bn_net.bn2.weight.detach().abs()
    assert torch.equal(scores["conv2.weight"], gamma.view(-1, 1, 1, 1).expand(6, 4, 3, 3))
    assert torch.equal(scores["fc.weight"][:, 0], conv_bn_net.bn3.weight.detach().abs())


def test_bn_scale_names_layers_without_a_batchnorm() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    ctx = ScoreContext(model, extra={"input_shape": (2, 3)})
    with pytest.raises(ConfigError, match=r"no BatchNorm follows 2\.weight"):
        CRITERIA.get("bn-scale").score(dict(prunable_weights(model)), ctx)


def test_channel_scores_sum_every_member_slice() -> None:
    producer = torch.arange(12.0).view(3, 4)  # 3 output channels
    consumer = torch.arange(10.0).view(2, 5)  # its input columns 1, 2, 4 hold channels 0, 1, 2
    group = ChannelGroup(
        "a.weight:0@0",
        [
            GroupMember("a.weight", 0, ((0,), (1,), (2,))),
            GroupMember("bn.weight", 0, ((0,), (1,), (2,))),  # unscored: skipped
            GroupMember("b.weight", 1, ((1,), (2,), (4,))),
        ],
        channels=3,
    )
    got = channel_scores_from({"a.weight": producer, "b.weight": consumer}, group)
    expected = producer.sum(1).double() + consumer[:, [1, 2, 4]].sum(0).double()
    assert torch.equal(got, expected)
    with pytest.raises(ConfigError, match="no scored tensor"):
        channel_scores_from({}, group)
