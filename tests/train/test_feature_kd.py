"""Layer-wise distillation (``--kd-layers``): the student's layer outputs learn the teacher's."""

from __future__ import annotations

import copy

import pytest
import torch
from quick_options import QUICK_EXPORT
from torch import nn

from slimmer.structures.unstructured import MaskSet
from slimmer.train.data import Dataset
from slimmer.train.feature_kd import FeatureDistillHook, matched_layers
from slimmer.train.finetune import FinetuneConfig, finetune
from slimmer.train.hooks import MaskHook


class Net(nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, width, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv2(self.act(self.conv1(x))).mean((2, 3)))


def _step_loss(hook: FeatureDistillHook, student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    student(x)
    with torch.no_grad():
        teacher(x)
    return hook.loss(student, 0)


def test_loss_is_zero_for_an_identical_student_and_the_normalized_error_otherwise() -> None:
    torch.manual_seed(0)
    teacher = Net()
    student = copy.deepcopy(teacher)
    hook = FeatureDistillHook(teacher, ["conv1", "conv2"], weight=2.0)
    hook.on_start(student, 1)
    x = torch.randn(5, 2, 7, 7)
    assert float(_step_loss(hook, student, teacher, x)) == 0.0
    with torch.no_grad():
        student.conv2.weight.zero_()
        student.conv2.bias.zero_()
    # conv1 still matches; conv2 outputs zeros: its normalized error is exactly 1, the mean over two layers 0.5
    assert float(_step_loss(hook, student, teacher, x)) == pytest.approx(2.0 * 0.5, rel=1e-6)
    hook.on_end(student)
    student(x)
    assert hook.loss(student, 0) is None  # hooks removed: nothing captured any more


def test_gradient_reaches_the_student_only() -> None:
    torch.manual_seed(1)
    teacher, student = Net(), Net()
    hook = FeatureDistillHook(teacher, ["conv1"])
    hook.on_start(student, 1)
    _step_loss(hook, student, teacher, torch.randn(4, 2, 5, 5)).backward()
    assert student.conv1.weight.grad is not None and float(student.conv1.weight.grad.abs().sum()) > 0
    assert teacher.conv1.weight.grad is None


def test_kept_channels_read_the_teacher_where_surgery_left_the_student() -> None:
    torch.manual_seed(2)
    teacher = Net(width=6)
    student = Net(width=3)
    kept = torch.tensor([0, 2, 5])
    with torch.no_grad():  # the student is the teacher with conv1's channels 1, 3, 4 removed
        student.conv1.weight.copy_(teacher.conv1.weight[kept])
        student.conv1.bias.copy_(teacher.conv1.bias[kept])
    assert matched_layers(student, teacher) == ["conv2", "fc"]  # conv1's width differs without `kept`
    assert matched_layers(student, teacher, {"conv1": kept}) == ["conv1", "conv2", "fc"]
    hook = FeatureDistillHook(teacher, ["conv1"], {"conv1": kept})
    hook.on_start(student, 1)
    assert float(_step_loss(hook, student, teacher, torch.randn(3, 2, 6, 6))) == pytest.approx(0.0, abs=1e-12)


def test_unknown_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="nope"):
        FeatureDistillHook(Net(), ["nope"]).on_start(Net(), 1)
    with pytest.raises(ValueError):
        FeatureDistillHook(Net(), [])


def test_finetuning_with_layer_distillation_pulls_layers_back_and_keeps_pruned_weights_zero() -> None:
    torch.manual_seed(3)
    teacher = Net().eval()
    x = torch.randn(256, 2, 6, 6)
    data = Dataset(x=x, y=None, source="synthetic")
    masks = {"conv1.weight": torch.rand(teacher.conv1.weight.shape) > 0.5}

    def run(weight: float) -> float:
        student = copy.deepcopy(teacher)
        with torch.no_grad():
            student.conv1.weight.mul_(masks["conv1.weight"])
        hooks = [MaskHook(MaskSet(masks))]
        if weight:
            hooks.append(FeatureDistillHook(teacher, ["conv1", "conv2"], weight=weight))
        cfg = FinetuneConfig(steps=60, batch_size=32, lr=0.01, seed=0, device="cpu", progress_every_s=1e9)
        finetune(student, teacher, data, cfg, hooks)
        assert torch.all(student.conv1.weight[~masks["conv1.weight"]] == 0)
        with torch.no_grad():
            a, b = student.conv2(student.act(student.conv1(x))), teacher.conv2(teacher.act(teacher.conv1(x)))
            return float(((a - b) ** 2).mean() / (b**2).mean())

    assert run(1.0) < 0.7 * run(0.0)  # measured 0.24 against 0.38


@pytest.mark.parametrize(
    "method, layers",
    [(["--sparsity", "0.8"], 22), (["--method", "channel", "--macs-target", "0.5", "--round-to", "4"], 22)],
)
def test_compress_distils_every_layer_when_asked(cli, r20, fmnist_like_npz, method, layers) -> None:
    args = ["compress", r20, "--arch", "resnet20-fmnist", *method, "--data", fmnist_like_npz]
    run = cli(*args, "--finetune-steps", "2", "--batch-size", "16", "--kd-layers", "0.5", "--json", *QUICK_EXPORT)
    assert run.code == 0, run.stderr
    # 19 convs of the three stages and the stem, 2 strided shortcut 1x1 convs, the classifier: all matched,
    # those channel surgery narrowed read at the original's kept channels
    assert run.json()["finetune"]["kd_layers"] == {"weight": 0.5, "layers": layers}


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--finetune-steps", "2", "--kd-layers", "-1"], "--kd-layers must be"),
        (["--kd-layers", "1"], "--finetune-steps"),
        (["--finetune-steps", "2", "--kd-layers", "1", "--no-kd"], "--no-kd"),
        (["--finetune-steps", "2", "--kd-layers", "1", "--method", "fold"], "layer folding"),
    ],
)
def test_compress_refuses_layer_distillation_it_would_not_run(cli, r20, fmnist_like_npz, tmp_path, extra, words):
    out = tmp_path / "m.onnx"
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--data", fmnist_like_npz, *extra, "-o", out)
    assert run.code == 2, run.stderr
    assert words in run.stderr and "--kd-layers" in run.stderr
    assert not out.exists()
