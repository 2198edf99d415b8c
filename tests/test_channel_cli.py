"""``--method channel`` through the CLI: physical shrinking, MACs target, plan beside the ONNX file."""

import json

import onnx
import onnx.numpy_helper
import pytest
import torch
from quick_options import QUICK_EXPORT

from slimmer.structures.plan import PruningPlan
from slimmer.surgery import shrink
from slimmer.zoo import ARCHITECTURES


def test_channel_macs_target_shrinks_and_saves_a_replayable_plan(cli, r20, partial_files):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--method", "channel", "--macs-target", "0.5", "--json")
    assert run.code == 0, run.stderr
    report = run.json()
    assert report["macs"]["after"] / report["macs"]["before"] <= 0.52
    assert report["params"]["after"] < 0.75 * report["params"]["before"]
    assert report["verification"]["passed"] and report["surgery"]["rolled_back"] == {}
    assert report["surgery"]["max_abs_diff"] <= 1e-5 * max(1.0, report["surgery"]["output_scale"])
    out = r20.with_name("r20.slim.onnx")
    plan_file = r20.with_name("r20.slim.onnx.plan.json")
    assert report["onnx"]["plan"] == str(plan_file)
    conv_weights = [i for i in onnx.load(str(out)).graph.initializer if len(i.dims) == 4]
    assert report["pruning"]["round_to"] == "relative"  # the measured default: a multiple per layer width
    assert report["pruning"]["round_to_multiples"] == {"4": 4, "8": 4, "16": 4}  # stages of 16, 32 and 64 channels
    assert all(i.dims[0] % 4 == 0 for i in conv_weights) and any(i.dims[0] % 16 for i in conv_weights)
    assert sum(i.dims[0] for i in conv_weights) < 0.8 * (16 * 7 + 32 * 7 + 64 * 7)  # channels really gone
    # replay the plan on a fresh model built from the same checkpoint
    model = ARCHITECTURES.get("resnet20-fmnist").build().eval()
    model.load_state_dict(torch.load(r20, weights_only=True))
    x = torch.randn(2, 1, 28, 28)
    plan = PruningPlan.load(plan_file)
    result = shrink(model, plan, (x,))
    assert result.params_after == report["params"]["after"]
    assert partial_files(r20.parent) == []


def test_channel_sparsity_removes_that_fraction_of_channels(cli, r20):
    run = cli(
        "compress",
        r20,
        "--arch",
        "resnet20-fmnist",
        "--method",
        "channel",
        "--sparsity",
        "0.25",
        "--round-to",
        "1",
        *QUICK_EXPORT,
        "--json",
    )
    assert run.code == 0, run.stderr
    report = run.json()
    assert abs(report["sparsity"]["achieved"] - 0.25) <= 0.01
    assert report["macs"]["after"] < report["macs"]["before"]


def test_channel_with_unknown_criterion_is_usage_error(cli, r20):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--method", "channel", "--criterion", "lmap")
    assert run.code == 2 and "Did you mean 'lamp'" in run.stderr


@pytest.mark.parametrize("criterion", ["lamp", "bn-scale", "l2"])  # synflow: tests/criteria (100 rounds)
def test_channel_with_data_free_criteria(cli, r20, criterion):
    run = cli(
        "compress",
        r20,
        "--arch",
        "resnet20-fmnist",
        "--method",
        "channel",
        "--criterion",
        criterion,
        "--sparsity",
        "0.3",
        *QUICK_EXPORT,
        "--json",
    )
    assert run.code == 0, run.stderr
    assert run.json()["pruning"]["criterion"] == {"lamp": "lamp", "synflow": "synflow"}.get(criterion, criterion)


def test_data_criteria_need_data_then_work_with_it(cli, r20, fmnist_like_npz):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--criterion", "snip")
    assert run.code == 2 and "--criterion snip needs --data" in run.stderr
    for method in ("unstructured", "channel"):
        run = cli(
            "compress",
            r20,
            "--arch",
            "resnet20-fmnist",
            "--method",
            method,
            "--criterion",
            "snip",
            "--sparsity",
            "0.3",
            "--data",
            fmnist_like_npz,
            "--no-reconstruct",  # not under test here (tests/train/test_reconstruct.py)
            *QUICK_EXPORT,
            "--force",
            "--json",
        )
        assert run.code == 0, run.stderr
        assert run.json()["pruning"]["criterion"] == "snip"


def test_unknown_method_is_usage_error(cli, r20):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--method", "channel,telepathy")
    assert run.code == 2 and "telepathy" in run.stderr


@pytest.mark.slow
def test_resnet50_macs_target_half(cli, tmp_path):
    """Issue 3's acceptance run, on 64×64 inputs: the structure under test (bottlenecks, downsample
    shortcuts) is resnet50's at any resolution, and 224×224 only makes every forward 12× dearer."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ckpt = tmp_path / "r50.pt"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), ckpt)
    args = ("--arch", "torchvision:resnet50", "--input-shape", "1,3,64,64", "--method", "channel")
    run = cli("compress", ckpt, *args, "--macs-target", "0.5", "--json")
    assert run.code == 0, run.stderr
    r = run.json()
    assert r["macs"]["after"] / r["macs"]["before"] <= 0.52 and r["verification"]["passed"]
    assert json.loads(ckpt.with_name("r50.slim.onnx.plan.json").read_text())["macs_target"] == 0.5


def test_unstructured_with_channel_masks_the_weights_that_ship(cli, r20, fmnist_like_npz):
    """Unstructured masks are made after channel surgery: their shapes are the pruned weights' while
    fine-tuning (made before it, they crashed the loop), and the sparsity holds in the ONNX file
    (made before it, the removed channels' zeros counted: 47.6% zeros shipped for 0.5)."""
    ft = ["--data", fmnist_like_npz, "--finetune-steps", "4", "--batch-size", "32"]
    run = cli(
        "compress", r20, "--arch", "resnet20-fmnist", "--method", "unstructured,channel", "--macs-target", "0.6",
        "--sparsity", "0.5", *ft, "--json",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    report = run.json()
    assert report["macs"]["after"] / report["macs"]["before"] <= 0.6
    assert abs(report["sparsity"]["achieved"] - 0.5) <= 0.01 and report["status"] == "ok"
    assert report["finetune"]["steps_done"] == 4
    assert report["finetune"]["kd_weight"] == 0.0 and report["finetune"]["lr"] == 0.1  # the pruning-only defaults
    names = set(report["sparsity"]["per_layer"])
    masked = [i for i in onnx.load(report["onnx"]["path"]).graph.initializer if i.name in names]
    assert len(masked) == len(names)
    zeros = sum(int((onnx.numpy_helper.to_array(i) == 0).sum()) for i in masked)
    assert abs(zeros / sum(onnx.numpy_helper.to_array(i).size for i in masked) - 0.5) <= 0.01
