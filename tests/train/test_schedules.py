"""Sparsity schedules (values by hand) and the schedule-driven mask hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimmer.errors import ConfigError
from slimmer.schedules import SCHEDULES, ScheduledMaskHook, build_schedule, cyclical, gradual, iterative, oneshot
from slimmer.structures.unstructured import MaskSet, prunable_weights, unstructured_masks
from slimmer.train.data import Dataset
from slimmer.train.finetune import FinetuneConfig, finetune


def test_registry_holds_the_four_schedules():
    assert SCHEDULES.names() == ["cyclical", "gradual", "iterative", "oneshot"]
    with pytest.raises(ConfigError, match="gradual"):
        SCHEDULES.get("gradul")


def test_oneshot_is_final_everywhere():
    assert [oneshot(t, 10, final=0.9) for t in (0, 5, 9, 10)] == [0.9] * 4


def test_iterative_prunes_the_same_fraction_of_survivors_each_round():
    # 3 rounds over 90 steps to 0.875 sparsity: densities 1/2, 1/4, 1/8 from steps 0, 30, 60
    got = [iterative(t, 90, final=0.875, rounds=3) for t in (0, 29, 30, 59, 60, 89, 90)]
    assert got == pytest.approx([0.5, 0.5, 0.75, 0.75, 0.875, 0.875, 0.875])
    values = [iterative(t, 90, final=0.875, rounds=3) for t in range(91)]
    assert values == sorted(values)


def test_gradual_is_zhu_gupta_cubic_quantized_then_holds():
    # 100 steps, Δt=10, ramp 75% → n = 7 updates, s_f reached at t = 70
    s = lambda t: gradual(t, 100, final=0.8, interval=10)  # noqa: E731
    assert s(0) == 0.0 and s(9) == 0.0
    assert s(10) == pytest.approx(0.8 * (1 - (6 / 7) ** 3)) == pytest.approx(0.8 * 127 / 343)
    assert s(15) == s(10)
    assert s(35) == pytest.approx(0.8 - 0.8 * (4 / 7) ** 3)
    assert s(69) == pytest.approx(0.8 - 0.8 * (1 / 7) ** 3)
    assert s(70) == s(99) == s(100) == pytest.approx(0.8)
    values = [s(t) for t in range(101)]
    assert values == sorted(values)
    assert len(set(values)) == 8
    assert gradual(50, 100, final=0.8, initial=0.2, interval=1) == pytest.approx(0.8 - 0.6 * (1 / 3) ** 3)


def test_cyclical_ramps_restarts_then_holds():
    # 100 steps, 3 cycles over the first 75 → T_c = 25; restart at 0.4 in cycles 2 and 3
    s = lambda t: cyclical(t, 100, final=0.8, cycles=3, cycle_start=0.4)  # noqa: E731
    assert s(0) == 0.0
    assert s(12) == pytest.approx(0.8 - 0.8 * (13 / 25) ** 3)
    assert s(24) == pytest.approx(0.8 - 0.8 * (1 / 25) ** 3)
    assert s(25) == pytest.approx(0.4) and s(50) == pytest.approx(0.4)
    assert s(37) == pytest.approx(0.8 - 0.4 * (13 / 25) ** 3)
    assert s(75) == s(99) == s(100) == pytest.approx(0.8)
    for lo, hi in ((0, 25), (25, 50), (50, 75)):
        inside = [s(t) for t in range(lo, hi)]
        assert inside == sorted(inside)
    assert s(25) < s(24) and s(50) < s(49)
    assert cyclical(25, 100, final=0.8, cycles=3) == pytest.approx(0.4)  # default restart s_f/2


def test_schedule_errors_are_config_errors():
    with pytest.raises(ConfigError, match="does not fit"):
        gradual(0, 10, final=0.5, interval=50)
    with pytest.raises(ConfigError, match="sparsity"):
        oneshot(0, 10, final=1.0)
    with pytest.raises(ConfigError, match="rounds"):
        iterative(0, 10, final=0.5, rounds=0)
    with pytest.raises(ConfigError, match="initial"):
        gradual(0, 10, final=0.3, initial=0.5)


def magnitude(model: nn.Module, sparsity: float) -> MaskSet:
    return unstructured_masks({n: p.detach().abs() for n, p in prunable_weights(model).items()}, sparsity)


def test_scheduled_hook_reaches_the_final_sparsity_exactly(net_factory, tiny_task):
    model = net_factory(0)
    hook = ScheduledMaskHook(build_schedule("gradual", 0.9, interval=5), magnitude)
    cfg = FinetuneConfig(steps=40, batch_size=32, lr=0.1, device="cpu")
    finetune(model, None, tiny_task, cfg, [hook])
    weights = prunable_weights(model)
    total = sum(p.numel() for p in weights.values())
    zeros = sum(int((p == 0).sum()) for p in weights.values())
    assert zeros == round(0.9 * total)
    assert hook.masks is not None and hook.masks.pruned == round(0.9 * total)
    assert [t for t, _ in hook.updates] == [0, 5, 10, 15, 20, 25, 30]
    assert hook.updates[-1][1] == pytest.approx(0.9)


def _regression() -> Dataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    return Dataset(x=x, y=None, source="regression")


class Regress(nn.Module):
    """y = 2·x₀: weight 0 matters, the others do not, and weight 0 starts smallest."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 1, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[0.01, 0.5, -0.5, 0.4, -0.4, 0.3, -0.3, 0.2]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _train_to_target(schedule) -> nn.Module:
    """Fit with a teacher-free regression loss expressed as a hook (the loop's task loss is KD)."""

    class Teacher(nn.Module):
        def forward(self, x):
            return 2 * x[:, :1]

    # use logits of two "classes" [f(x), 0] so distillation matches a regression target
    class Two(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            return torch.cat([out, torch.zeros_like(out)], 1)

    student = Two(Regress())
    teacher = Two(Teacher())
    hook = ScheduledMaskHook(schedule, magnitude)
    cfg = FinetuneConfig(steps=60, batch_size=32, lr=0.2, device="cpu", kd_temperature=1.0, seed=0)
    finetune(student, teacher, _regression(), cfg, [hook])
    return student.inner


def test_cyclical_lets_a_wrongly_pruned_weight_come_back():
    # keep 1 of 8 weights; cycle 1 starts at the final sparsity so weight 0 (the important one,
    # smallest at first) is pruned at step 0; cycle 2 restarts at 0 sparsity so it can regrow
    cyc = _train_to_target(build_schedule("cyclical", 0.875, cycles=2, initial=0.875, cycle_start=0.0))
    one = _train_to_target(build_schedule("oneshot", 0.875))
    w_cyc, w_one = cyc.lin.weight.detach()[0], one.lin.weight.detach()[0]
    assert w_one[0] == 0.0  # one-shot: the wrongly pruned weight never recovers
    assert w_cyc[0] != 0.0 and int((w_cyc != 0).sum()) == 1  # cyclical: it came back and is the one kept
