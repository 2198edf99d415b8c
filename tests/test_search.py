"""TAS width search (slimmer.structures.search, Dong & Yang NeurIPS 2019)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from slimmer.errors import ConfigError
from slimmer.graph.groups import build_groups
from slimmer.graph.macs import count_macs
from slimmer.structures.search import (
    SearchConfig,
    candidate_widths,
    expected_macs,
    search_plan,
    search_space,
)
from slimmer.surgery import mask_model, remove_channels


def two_group_toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    ).eval()


class ResidualToy(nn.Module):
    """A stem and one identity-shortcut block: the add couples the stem's and the block's outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(
            nn.Conv2d(8, 10, 3, padding=1, bias=False),
            nn.BatchNorm2d(10),
            nn.ReLU(),
            nn.Conv2d(10, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.branch(h))
        return self.head(h.mean((2, 3)))


X = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(1))


def test_candidate_widths_round_and_deduplicate():
    assert candidate_widths(16, (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), 1) == [5, 6, 8, 10, 11, 13, 14, 16]
    assert candidate_widths(16, (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), 4) == [4, 8, 12, 16]
    assert candidate_widths(3, (0.3, 0.5), 4) == [3]


def test_expected_macs_of_the_sampler_is_hand_computed_on_two_groups():
    model = two_group_toy()
    groups = build_groups(model, (X,))
    sites, cost = search_space(model, (X,), groups, SearchConfig(macs_target=0.5), torch.Generator().manual_seed(0))
    by_channels = {s.group.channels: s for s in sites}
    g1, g2 = by_channels[8], by_channels[6]
    assert g1.widths == [2, 3, 4, 5, 6, 7, 8] and g2.widths == [2, 3, 4, 5, 6]
    with torch.no_grad():
        g1.logits.zero_()  # uniform: E[c1] = 5, kept fraction 5/8
        g2.logits.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, math.log(4)]))  # p = (1,1,1,1,4)/8: E[c2] = 38/8
    # dense MACs: conv1 8·3·9·25 = 5400, conv2 6·8·9·25 = 10800, linear 6·2 = 12
    assert cost.total == 16212
    f1, f2 = 5 / 8, 38 / 8 / 6
    want = (5400 * f1 + 10800 * f1 * f2 + 12 * f2) / 16212
    assert float(expected_macs(sites, cost).detach()) == pytest.approx(want, rel=1e-6)
    # the Gumbel sample mixes exactly two candidates' prefixes with weights summing to 1
    gen = torch.Generator().manual_seed(3)
    for tau in (5.0, 0.1):
        mask = g1.soft_mask(tau, gen).detach()[torch.tensor(g1.order)]  # in importance order
        assert torch.all(mask[:-1] >= mask[1:]) and float(mask[0]) == pytest.approx(1.0)
        levels = sorted(set(round(float(v), 6) for v in mask))
        assert len(levels) <= 3 and levels[0] >= 0.0
    # the expected cost has a gradient in every logit
    expected_macs(sites, cost).backward()
    assert all(s.logits.grad is not None and s.logits.grad.abs().sum() > 0 for s in sites)


def _data(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 5, 5, generator=gen)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


@pytest.mark.parametrize("build", [two_group_toy, lambda: ResidualToy().eval()])
def test_searched_plan_meets_the_macs_target_and_prunes_like_its_mask(build):
    model = build()
    before = copy.deepcopy(model.state_dict())
    groups = build_groups(model, (X,))
    config = SearchConfig(macs_target=0.5, steps=30, arch_lr=0.05, seed=0)
    plan, result = search_plan(model, (X,), groups, _data(64, 0), _data(64, 1), config)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the search trains a copy
    dense = count_macs(model, (X,))
    pruned = remove_channels(copy.deepcopy(model), plan)
    counted = count_macs(pruned, (X,)) / dense
    assert counted == pytest.approx(result.final_macs) and plan.macs_after == round(counted * dense)
    assert 0.5 - 0.1 <= counted <= 0.5  # the target, within a tolerance of 0.1 below
    assert set(result.widths) == {g.id for g in plan.groups}
    assert all(len(g.kept) == result.widths[g.id] for g in plan.groups)
    with torch.no_grad():  # pruned == masked original
        assert torch.allclose(pruned(X), mask_model(copy.deepcopy(model), plan)(X), atol=1e-5)
    assert len(result.history) == 30 and result.history[0]["tau"] == 5.0
    assert result.history[-1]["tau"] == pytest.approx(0.1)


@pytest.mark.parametrize("field, value", [("macs_target", 0.0), ("steps", 0), ("round_to", 0), ("criterion", "x")])
def test_search_config_validates_itself(field, value):
    with pytest.raises(ConfigError):
        SearchConfig(**{"macs_target": 0.5, field: value})
