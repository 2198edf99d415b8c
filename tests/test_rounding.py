"""Kept-channel rounding: a fixed multiple, or a multiple relative to each layer's width."""

from __future__ import annotations

import copy

import pytest
import torch

from slimmer.errors import ConfigError
from slimmer.graph.groups import build_groups
from slimmer.graph.macs import count_macs
from slimmer.structures.channel import plan_channels
from slimmer.structures.plan import PlannedGroup, PruningPlan
from slimmer.structures.rounding import (
    RELATIVE,
    check_round_to,
    describe,
    multiple_for,
    parse_round_to,
    relative_multiple,
)
from slimmer.surgery import remove_channels

X = torch.randn(1, 1, 8, 8)


@pytest.mark.parametrize(
    "width, multiple",
    [(1, 1), (3, 1), (4, 1), (8, 2), (15, 2), (16, 4), (31, 4), (32, 8), (63, 8), (64, 16), (2048, 16)],
)
def test_the_relative_multiple_is_the_largest_friendly_one_within_a_quarter_of_the_width(width, multiple):
    assert relative_multiple(width) == multiple


@pytest.mark.parametrize("bad", [0, -16, 2.5, "16", True, None])
def test_round_to_must_be_a_positive_int_or_relative(bad):
    with pytest.raises(ConfigError, match="round_to must be an integer >= 1 or 'relative'"):
        check_round_to(bad)


class Plain(torch.nn.Module):
    """Convolutions 16, 32 and 64 channels wide (8×8 inputs): one narrow, one middle, one wide group."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, padding=1),
            torch.nn.ReLU(),
        )
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(x).mean((2, 3)))


def _plan(round_to):
    torch.manual_seed(0)
    model = Plain().eval()
    groups = build_groups(model, (X,))
    plan = plan_channels(groups, model, macs_target=0.5, round_to=round_to, example_inputs=(X,))
    return groups, {g.id: g.channels - len(g.pruned) for g in plan.groups}, plan


def test_relative_rounding_prunes_each_layer_in_quarters_of_its_width():
    groups, kept, plan = _plan(RELATIVE)
    assert describe(groups.prunable, RELATIVE) == {"4": 1, "8": 1, "16": 1}  # widths 16, 32 and 64
    assert sorted(multiple_for(g, RELATIVE) for g in groups.prunable) == [4, 8, 16]
    for group in groups.prunable:
        assert kept[group.id] % multiple_for(group, RELATIVE) == 0
    narrow = next(g for g in groups.prunable if g.channels == 16)
    assert kept[narrow.id] < 16  # with a fixed 16 this layer could only stay whole
    assert plan.macs_after <= 0.5 * plan.macs_before and plan.round_to == RELATIVE


def test_an_explicit_round_to_keeps_its_fixed_meaning():
    groups, kept, _ = _plan(16)
    assert describe(groups.prunable, 16) == {"16": 3}
    assert all(k % 16 == 0 for k in kept.values())
    narrow = next(g for g in groups.prunable if g.channels == 16)
    assert kept[narrow.id] == 16


@pytest.mark.parametrize("given, parsed", [(None, None), ("relative", "relative"), ("16", 16), (" 4 ", 4), (8, 8)])
def test_round_to_option_values(given, parsed):
    assert parse_round_to(given) == parsed


@pytest.mark.parametrize("bad", ["abc", "0", "-4", "1.5", "", 0])
def test_bad_round_to_option_values_are_usage_errors(bad):
    with pytest.raises(ConfigError, match="--round-to must be an integer ≥ 1 or relative"):
        parse_round_to(bad)


def test_the_cli_takes_relative_and_refuses_other_words(cli, tiny_ckpt):
    base = ("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--method", "channel", "--json")
    bad = cli(*base, "--round-to", "wide")
    assert bad.code == 2 and "--round-to must be an integer ≥ 1 or relative" in bad.json()["error"]
    ok = cli(*base, "--sparsity", "0.25", "--round-to", "relative")
    assert ok.code == 0, ok.stderr
    assert ok.json()["pruning"]["round_to"] == "relative" and ok.json()["pruning"]["round_to_multiples"] == {"1": 1}


@pytest.mark.parametrize("bad", [0, "16", "wide", 2.0])
def test_the_config_refuses_other_round_to_values(bad):
    from slimmer.config import CompressConfig

    with pytest.raises(ConfigError, match="round_to must be an integer >= 1 or 'relative'"):
        CompressConfig(methods=("channel",), round_to=bad)
    assert CompressConfig(methods=("channel",), round_to="relative").round_to == "relative"


def test_a_plan_far_under_the_macs_target_says_so():
    """With round_to 16 the 16-, 32- and 64-channel layers move by a whole or half layer: the closest
    plan under 0.5 keeps 0.404 of the MACs (one step more on any layer is over the target), and the
    plan must say why it is so far under."""
    torch.manual_seed(0)
    model = Plain().eval()
    groups = build_groups(model, (X,))
    for scope in ("global", "layer"):
        plan = plan_channels(groups, model, macs_target=0.5, round_to=16, scope=scope, example_inputs=(X,))
        assert [len(g.kept) for g in plan.groups] == [16, 16, 48]
        assert plan.macs_after / plan.macs_before == pytest.approx(0.4039, abs=1e-4)
        assert any("MACs target 0.5 overshot: kept 0.404" in n for n in plan.notes)
    close = plan_channels(groups, model, macs_target=0.5, round_to=1, scope="global", example_inputs=(X,))
    assert close.macs_after / close.macs_before >= 0.45 and not any("overshot" in n for n in close.notes)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_rounding_gives_back_the_channels_that_still_fit_under_the_target(scope):
    """Relative rounding moves a layer by a quarter of its width. Before the refill step the
    bisection's plan kept 0.351 (global) and 0.252 (layer, every layer a quarter at once) of the
    MACs for a 0.5 target on this model; now steps are given back while they fit."""
    torch.manual_seed(0)
    model = Plain().eval()
    groups = build_groups(model, (X,))
    plan = plan_channels(groups, model, macs_target=0.5, round_to="relative", scope=scope, example_inputs=(X,))
    kept = plan.macs_after / plan.macs_before
    assert 0.45 <= kept <= 0.5 and not any("overshot" in n for n in plan.notes)
    multiples = [multiple_for(g, "relative") for g in groups.prunable]
    assert all(len(g.kept) % m == 0 or len(g.kept) == g.channels for g, m in zip(plan.groups, multiples, strict=True))
    # no single step more fits: every group one multiple wider is over the target
    for i, (g, m) in enumerate(zip(plan.groups, multiples, strict=True)):
        if len(g.kept) == g.channels:
            continue
        wider = [
            PlannedGroup(p.id, p.members, p.channels, p.kept if j != i else list(range(len(p.kept) + m)))
            for j, p in enumerate(plan.groups)
        ]
        trial = PruningPlan(wider).bind(groups)
        macs = count_macs(remove_channels(copy.deepcopy(model), trial), (X,))
        assert macs > 0.5 * plan.macs_before


def test_channel_sparsity_with_rounding_removes_no_more_than_it_must():
    """--sparsity 0.3 of 112 channels asks for 34 off; relative rounding with the bisection alone
    removed 40, the refill gives back a step and removes 36."""
    torch.manual_seed(0)
    model = Plain().eval()
    groups = build_groups(model, (X,))
    plan = plan_channels(groups, model, sparsity=0.3, round_to="relative", scope="global", example_inputs=(X,))
    assert plan.channels_pruned == 36 and plan.channels_total == 112


class FlattenHead(torch.nn.Module):
    """A 16-channel conv whose 2×2 map is flattened into the classifier: the Linear holds four input
    features per channel (64 in all), the conv 16 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(1, 8, 3)
        self.b = torch.nn.Conv2d(8, 16, 3)
        self.pool = torch.nn.AdaptiveAvgPool2d(2)
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.b(torch.relu(self.a(x))))).flatten(1))


def test_relative_rounding_follows_the_narrowest_layer_of_a_group_not_a_flattened_consumer():
    """The 16-channel group was rounded as if 64 wide (its flattened Linear's features): a multiple of
    16 channels, so it could only stay whole and a 0.5 sparsity was never reached."""
    torch.manual_seed(0)
    model = FlattenHead().eval()
    x = torch.randn(1, 1, 12, 12)
    groups = build_groups(model, (x,))
    wide = next(g for g in groups.prunable if ("b.weight", 0) in g.signature)
    assert multiple_for(wide, RELATIVE) == 4
    plan = plan_channels(groups, model, sparsity=0.5, round_to=RELATIVE, example_inputs=(x,))
    kept = {p.id: len(p.kept) for p in plan.groups}
    assert kept[wide.id] == 8 and plan.channels_pruned == 12 == 0.5 * plan.channels_total
    pruned = remove_channels(copy.deepcopy(model), plan)
    assert pruned.fc.in_features == 32 and pruned.fc.in_features % 16 == 0
