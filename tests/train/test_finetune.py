"""The fine-tuning loop: masks held, distillation, BN recalibration, divergence, progress, hooks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimmer.errors import ConfigError, VerificationError
from slimmer.structures.unstructured import prunable_weights, unstructured_masks
from slimmer.train.data import Dataset, iterate_batches
from slimmer.train.finetune import (
    FinetuneConfig,
    TrainingDiverged,
    finetune,
    lr_factor,
    recalibrate_bn,
)
from slimmer.train.hooks import MaskHook, TrainHook


def cfg(**kw) -> FinetuneConfig:
    base = dict(steps=40, batch_size=32, lr=0.05, device="cpu", progress_every_s=1e9)
    base.update(kw)
    return FinetuneConfig(**base)


def test_mask_hook_keeps_pruned_weights_exactly_zero_and_loss_drops(net_factory, tiny_task):
    model = net_factory(0)
    weights = prunable_weights(model)
    masks = unstructured_masks({n: p.detach().abs() for n, p in weights.items()}, 0.6, scope="layer")
    masks.apply(model)
    result = finetune(model, None, tiny_task, cfg(steps=60, lr=0.2), [MaskHook(masks)])
    params = dict(model.named_parameters())
    for name, mask in masks.masks.items():
        assert torch.count_nonzero(params[name][~mask]) == 0, name
        assert torch.count_nonzero(params[name][mask]) > 0, name
    assert result.steps_done == 60
    assert result.final_loss < 0.6 * result.initial_loss
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert result.samples_per_s > 0 and result.seconds > 0 and len(result.loss_curve) <= 32


def _kl(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(
            F.kl_div(F.log_softmax(student(x), 1), F.log_softmax(teacher(x), 1), log_target=True, reduction="batchmean")
        )


def test_distillation_without_labels_moves_student_toward_teacher(net_factory, tiny_task):
    teacher = net_factory(1).eval()
    student = net_factory(2).eval()
    unlabeled = Dataset(x=tiny_task.x, y=None, source="unlabeled")
    before = _kl(teacher, student, unlabeled.x)
    teacher_state = copy.deepcopy(teacher.state_dict())
    result = finetune(student, teacher, unlabeled, cfg(steps=80, kd_temperature=2.0), [])
    after = _kl(teacher, student, unlabeled.x)
    assert after < 0.3 * before
    assert math.isfinite(result.final_loss)
    assert not teacher.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k]), k


def test_no_labels_and_no_teacher_is_a_config_error(net_factory, tiny_task):
    with pytest.raises(ConfigError, match="labels or a teacher"):
        finetune(net_factory(), None, Dataset(tiny_task.x, None, "u"), cfg(), [])


def test_recalibrate_bn_changes_running_stats_not_weights(net_factory, tiny_task):
    model = net_factory(3)
    bn = model[1]
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    out = recalibrate_bn(model, tiny_task, batches=4, batch_size=64, seed=7)
    assert out is model and not model.training and bn.momentum == 0.1
    # a cumulative average over 4 equal batches = the mean of those 256 samples' activations
    stream = iterate_batches(tiny_task, 64, 7, drop_last=False)
    seen = torch.cat([next(stream)[0] for _ in range(4)])
    with torch.no_grad():
        expected = model[0](seen).mean(0)
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    assert int(bn.num_batches_tracked) == 4
    for k, v in model.named_parameters():
        assert torch.equal(v, weights[k]), k


def test_non_finite_loss_raises_training_diverged_naming_the_step(net_factory, tiny_task):
    class Poison(TrainHook):
        def loss(self, model, step):
            return torch.tensor(float("nan")) if step == 3 else None

    with pytest.raises(TrainingDiverged) as info:
        finetune(net_factory(), None, tiny_task, cfg(), [Poison()])
    assert isinstance(info.value, VerificationError)
    assert info.value.exit_code == 5 and info.value.step == 3
    assert "step 3" in str(info.value)


def test_progress_called_every_step_with_documented_keys(net_factory, tiny_task):
    seen: list[dict] = []
    finetune(net_factory(), None, tiny_task, cfg(steps=5, progress_every_s=0.0), [], progress=seen.append)
    assert [p["step"] for p in seen] == [1, 2, 3, 4, 5]
    for p in seen:
        assert set(p) == {"step", "total", "loss", "lr", "samples_per_s"} and p["total"] == 5


def test_hooks_called_in_documented_order_and_extra_parameters_trained(net_factory, tiny_task):
    class Recorder(TrainHook):
        def __init__(self):
            self.calls: list[str] = []
            self.scale = nn.Parameter(torch.zeros(()))

        def on_start(self, model, total_steps):
            self.calls.append(f"start{total_steps}")

        def extra_parameters(self):
            return [self.scale]

        def loss(self, model, step):
            self.calls.append(f"loss{step}")
            return (self.scale - 1.0) ** 2

        def after_backward(self, model, step):
            assert self.scale.grad is not None
            self.calls.append(f"backward{step}")

        def after_step(self, model, step):
            self.calls.append(f"step{step}")

        def on_end(self, model):
            self.calls.append("end")

    hook = Recorder()
    finetune(net_factory(), None, tiny_task, cfg(steps=2), [hook])
    assert hook.calls == ["start2", "loss0", "backward0", "step0", "loss1", "backward1", "step1", "end"]
    assert float(hook.scale.detach()) > 0


def test_config_validation_and_schedule():
    with pytest.raises(ConfigError, match="optimizer"):
        cfg(optimizer="lion")
    with pytest.raises(ConfigError, match="lr"):
        cfg(lr=float("nan"))
    with pytest.raises(ConfigError, match="device"):
        cfg(device="tpu")
    with pytest.raises(ConfigError, match="kd_alpha"):
        cfg(kd_alpha=1.5)
    assert cfg(steps=100).warmup == 3 and cfg(steps=100, warmup_steps=0).warmup == 0
    assert lr_factor(0, 100, 4) == 0.25 and lr_factor(3, 100, 4) == 1.0
    assert lr_factor(4, 100, 4) == 1.0 and lr_factor(52, 100, 4) == pytest.approx(0.5)
    assert 0 < lr_factor(99, 100, 4) < 0.01


def test_amp_requires_cuda(net_factory, tiny_task):
    with pytest.raises(ConfigError, match="amp"):
        finetune(net_factory(), None, tiny_task, cfg(amp=True), [])


def test_adamw_runs(net_factory, tiny_task):
    result = finetune(net_factory(), net_factory(), tiny_task, cfg(optimizer="adamw", lr=1e-2, nesterov=False), [])
    assert result.final_loss < result.initial_loss


def test_keyboard_interrupt_propagates_and_teacher_is_restored(net_factory, tiny_task):
    class Stop(TrainHook):
        def after_step(self, model, step):
            if step == 1:
                raise KeyboardInterrupt

    teacher = net_factory(1).train()
    student = net_factory(2)
    with pytest.raises(KeyboardInterrupt):
        finetune(student, teacher, tiny_task, cfg(), [Stop()])
    assert teacher.training and not student.training
