"""Barriers: ops without a rule, attention, hard-coded shapes, and models that cannot be captured."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimmer.errors import InputError
from slimmer.graph import build_groups, capture
from slimmer.graph.rules import RULES
from slimmer.structures.channel import plan_channels
from slimmer.surgery import shrink


def cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Spectral(nn.Module):
    """One branch goes through an FFT (no channel rule); the rest of the model is ordinary."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.spec_in, self.post = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.other = cbr(8, 12)
        self.out = nn.Conv2d(20, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        s = self.post(torch.fft.fft(self.spec_in(x)).real)
        return self.out(torch.cat([s, self.other(x)], 1))


class Block(nn.Module):
    """A pre-norm transformer block with nn.MultiheadAttention and an MLP."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.fused = fused
        self.embed, self.ln1 = nn.Linear(16, 32), nn.LayerNorm(32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(32), nn.Linear(32, 64), nn.Linear(64, 32)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=not self.fused)[0]
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(x.mean(1))


class HardCoded(nn.Module):
    """``reshape(-1, 96)`` bakes the channel count into user code: the graph cannot see it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 6)
        self.fc = nn.Linear(96, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.b(self.a(x)), 4).reshape(-1, 96))


X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))


def test_unknown_op_blocks_only_what_it_touches(check) -> None:
    assert "aten.fft_fft.default" not in RULES
    groups, result = check(Spectral(), X)
    blocked = [g for g in groups.blocked if ("spec_in.weight", 0) in g.signature]
    assert len(blocked) == 1 and "aten.fft_fft.default" in blocked[0].blocked_by
    assert "spec_in" in blocked[0].blocked_by  # the layer is named
    prunable = {name for g in groups.prunable for name, dim in g.signature if dim == 0}
    assert {"stem.0.weight", "post.weight", "other.0.weight"} <= prunable
    pruned_ids = {g.id for g in result.plan.groups if g.pruned}
    assert pruned_ids and all("spec_in" not in gid for gid in pruned_ids)


@pytest.mark.parametrize("fused", [False, True], ids=["bmm-softmax", "sdpa"])
def test_attention_is_blocked_and_mlp_pruned(check, fused: bool) -> None:
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(3))
    model = Block(fused)
    groups, _ = check(model, x, sparsity=0.5)
    attention = [g for g in groups.groups if ("attn.in_proj_weight", 0) in g.signature]
    assert attention and all(g.blocked_by for g in attention)
    expected = "aten.scaled_dot_product_attention.default" if fused else "contraction of two activations"
    assert any(expected in g.blocked_by for g in attention)
    residual = next(g for g in groups.groups if ("embed.weight", 0) in g.signature)
    assert "aten.layer_norm.default" in residual.blocked_by
    assert model.fc1.out_features == model.fc2.in_features < 64
    assert model.attn.in_proj_weight.shape == (96, 32)


def _hard_coded() -> HardCoded:
    """Seeded: on a few random initializations (2 of 40 seeds) a 0.6 MACs target is met without touching the
    hard-coded group, so a test would depend on the RNG state the tests before it left (one failed under xdist)."""
    torch.manual_seed(0)
    return HardCoded()


def test_hard_coded_shape_is_kept_whole_not_broken(check) -> None:
    model = _hard_coded()
    groups, result = check(model, X, sparsity=0.5)
    b_group = next(g for g in groups.prunable if ("b.0.weight", 0) in g.signature)
    # the planner tries the removal on a meta copy first and keeps the group whole
    assert f"group {b_group.id} kept whole: removing its channels breaks the forward" in result.plan.notes
    assert not result.rolled_back
    assert model.b[0].out_channels == 6 and model.a[0].out_channels < 8


@pytest.mark.parametrize(
    "target", [dict(sparsity=0.5, scope="layer"), dict(macs_target=0.6), dict(macs_target=0.6, scope="layer")]
)
def test_hard_coded_shape_is_kept_whole_at_every_scope_and_target(target) -> None:
    model = _hard_coded().eval()
    groups = build_groups(model, (X,))
    plan = plan_channels(groups, model, example_inputs=(X,), **target)
    b_group = next(g for g in groups.prunable if ("b.0.weight", 0) in g.signature)
    assert f"group {b_group.id} kept whole: removing its channels breaks the forward" in plan.notes
    assert not next(g for g in plan.groups if g.id == b_group.id).pruned
    assert plan.macs_after is not None  # the chosen plan's forward runs
    result = shrink(model, plan, (X,))
    assert not result.rolled_back and model.b[0].out_channels == 6 and model.a[0].out_channels < 8


class Divisible(nn.Module):
    """forward() refuses a channel count of ``b`` that is not a multiple of 4, a check the graph cannot see: the
    largest removal (32 -> 4 channels) runs, most other counts do not."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = cbr(3, 16), cbr(16, 32), cbr(32, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(self.a(x))
        if x.shape[1] % 4:
            raise ValueError("channels must be a multiple of 4")
        return self.fc(self.c(x).mean((2, 3)))


@pytest.mark.parametrize(
    "target", [dict(sparsity=0.3, scope="layer"), dict(macs_target=0.5, scope="layer"), dict(macs_target=0.5)]
)
def test_a_group_that_breaks_only_at_some_counts_is_found_at_the_planned_count(target) -> None:
    torch.manual_seed(0)  # the global plan depends on the weights; the layer plans (32 -> 23 kept, ...) do not
    model = Divisible().eval()
    groups = build_groups(model, (X,))
    b_group = next(g for g in groups.prunable if ("b.0.weight", 0) in g.signature)
    plan = plan_channels(groups, model, example_inputs=(X,), round_to=1, seed=0, **target)
    assert f"group {b_group.id} kept whole: removing its channels breaks the forward" in plan.notes
    assert plan.macs_after is not None and not any("could not be counted" in note for note in plan.notes)
    if "macs_target" in target:
        assert 0.45 <= plan.macs_after / plan.macs_before <= 0.5
    result = shrink(model, plan, (X,))
    assert not result.rolled_back and model.b[0].out_channels == 32


def test_the_search_for_breaking_groups_costs_nothing_when_the_plan_runs(monkeypatch) -> None:
    """One meta count per group only when a planned forward fails: a plain model counts its plan once or
    twice (the bisection's check, the refill's check), never a separate probe of every removal."""
    import slimmer.structures.channel as channel

    calls: list[int] = []
    real = channel._count_plan_macs
    monkeypatch.setattr(channel, "_count_plan_macs", lambda meta, plan: calls.append(1) or real(meta, plan))
    model = nn.Sequential(cbr(3, 8), cbr(8, 16), cbr(16, 8), nn.Conv2d(8, 4, 1)).eval()
    groups = build_groups(model, (X,))
    plan = plan_channels(groups, model, example_inputs=(X,), macs_target=0.5, round_to=4)
    assert not any("breaks the forward" in note for note in plan.notes)
    assert 1 <= len(calls) <= 2
    calls.clear()
    plan_channels(groups, model, example_inputs=(X,), sparsity=0.5)
    assert len(calls) == 1  # the MACs after pruning, for the report


def test_hard_coded_shape_in_a_plan_made_without_inputs_is_rolled_back_by_surgery() -> None:
    model = _hard_coded().eval()
    groups = build_groups(model, (X,))
    plan = plan_channels(groups, model, sparsity=0.5)  # no example inputs: no meta check
    result = shrink(model, plan, (X,))
    b_group = next(g for g in groups.prunable if ("b.0.weight", 0) in g.signature)
    assert b_group.id in result.rolled_back
    assert model.b[0].out_channels == 6 and model.a[0].out_channels < 8
    assert any("rolled back" in note for note in result.plan.notes)


def test_a_rolled_back_group_is_not_counted_in_the_channel_sparsity_achieved() -> None:
    from slimmer.prune import shrink_model
    from slimmer.prune_result import PruneResult

    model = _hard_coded().eval()
    groups = build_groups(model, (X,))
    plan = plan_channels(groups, model, sparsity=0.5)  # no example inputs: the planner cannot see the break
    planned = plan.channels_pruned / plan.channels_total
    result = PruneResult(plan=plan, groups=groups, sparsity_requested=0.5, sparsity_achieved=planned)
    result, surgery = shrink_model(model, result, (X,))
    assert surgery.rolled_back
    assert result.sparsity_achieved == surgery.plan.channels_pruned / surgery.plan.channels_total < planned


def test_outputs_and_inputs_are_never_pruned() -> None:
    model = cbr(3, 4).eval()
    groups = build_groups(model, (X,))
    assert not groups.prunable
    assert [g.blocked_by for g in groups.blocked] == ["model output [layers: 0, 1]"]


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x - 1


def test_uncapturable_model_is_an_input_error() -> None:
    with pytest.raises(InputError) as caught:
        capture(DataDependent(), (X,))
    assert caught.value.exit_code == 3
    assert "torch.export" in str(caught.value) and "\n" not in str(caught.value)


def test_rollback_restores_the_exact_weights_without_copying_the_model(monkeypatch) -> None:
    model = _hard_coded().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = build_groups(model, (X,))
    plan = plan_channels(groups, model, sparsity=0.5)

    def no_copy(*args, **kwargs):
        raise AssertionError("shrink copied the model")

    monkeypatch.setattr("copy.deepcopy", no_copy)
    result = shrink(model, plan, (X,))
    b_group = next(g for g in groups.prunable if ("b.0.weight", 0) in g.signature)
    assert b_group.id in result.rolled_back
    kept = sorted(
        next(p for p in result.plan.groups if ("a.0.weight", 0) in result.plan.bound_group(p.id).signature).kept
    )
    assert len(kept) < 8
    assert torch.equal(model.a[0].weight, before["a.0.weight"][kept])
    # b's output channels were masked in a trial and restored exactly; its inputs follow a's group
    assert torch.equal(model.b[0].weight, before["b.0.weight"][:, kept])
    assert torch.equal(model.b[1].running_var, before["b.1.running_var"])
