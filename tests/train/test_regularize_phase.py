"""``--regularizer``: a penalized training phase before the final pruning (issue 5)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from quick_options import QUICK_EXPORT

from slimmer.api import load
from slimmer.config import REGULARIZER_METHODS, CompressConfig
from slimmer.prune import prune
from slimmer.regularize import apply_chosen, regularize
from slimmer.train.data import load_data
from slimmer.train.regularizers import REGULARIZERS

REG = ["--data", None, "--finetune-steps", "2", "--batch-size", "32", "--reg-steps", "12"]


def reg_args(npz: Path) -> list:
    return [npz if a is None else a for a in REG]


@pytest.mark.parametrize(
    ("regularizer", "method", "criterion", "phase_kd"),
    [("slimming", "channel", "bn-scale", 0.0), ("greg2", "unstructured", "magnitude", 0.5)],
)
def test_each_regularizer_runs_then_prunes_and_is_recorded(
    cli, r20, fmnist_like_npz, regularizer, method, criterion, phase_kd
):
    run = cli(
        "compress",
        r20,
        "--arch",
        "resnet20-fmnist",
        "--method",
        method,
        "--sparsity",
        "0.5",
        "--regularizer",
        regularizer,
        *reg_args(fmnist_like_npz),
        *QUICK_EXPORT,
        "--json",
    )
    assert run.code == 0, run.stderr
    r = run.json()
    assert r["pruning"]["criterion"] == criterion
    reg = r["pruning"]["regularizer"]
    assert reg["regularizer"] == regularizer and reg["steps"] == 12
    assert r["config"]["regularizer"] == regularizer
    assert r["config"]["lr"] is None  # the command line as given
    assert reg["lr"] == 0.01 and r["finetune"]["lr"] == 0.1  # the phase at the old rate, fine-tuning at SGD's
    # the phase keeps the loss its recipe was measured with (distilling unless channel alone); the fine-tuning
    # after pruning trains on labels alone. The unstructured phase had stopped distilling with 6acb244.
    assert reg["kd_weight"] == phase_kd and r["finetune"]["kd_weight"] == 0.0
    assert r["accuracy"]["after_regularize"] is not None
    assert abs(r["sparsity"]["achieved"] - 0.5) <= 0.01
    assert r["verification"]["passed"] and Path(r["onnx"]["path"]).is_file()


def phase(r20: Path, npz: Path, **opts):
    opts = {"reg_steps": 12, "batch_size": 32, **opts}
    config = CompressConfig(model=r20, arch="resnet20-fmnist", data=str(npz), **opts)
    loaded = load(config)
    shape = loaded.inputs.first.shape
    model = loaded.model
    data = load_data(str(npz), shape, (0.0,), (1.0,), seed=0)
    example = torch.randn(2, *shape[1:])
    before = copy.deepcopy(model)
    done = regularize(model, copy.deepcopy(model).eval(), config, example, data, lambda *a: None)
    return config, before, model, done, example, data


def test_greg_removes_exactly_what_it_chose_before_the_phase_and_pushed_it_down(r20, fmnist_like_npz):
    config, before, model, done, example, data = phase(
        r20, fmnist_like_npz, regularizer="greg", sparsity=0.7, lr=0.1, reg_steps=20
    )
    expected = prune(copy.deepcopy(before), config, example, data).masks
    assert done.chosen is not None
    for name, keep in expected.masks.items():
        assert torch.equal(done.chosen.masks.masks[name], keep), name
    apply_chosen(model, done.chosen)
    for name, keep in expected.masks.items():
        assert torch.all(model.get_parameter(name)[~keep] == 0), name

    def mean_abs(m, removed: bool) -> float:
        return float(
            torch.cat(
                [m.get_parameter(n).detach()[~k if removed else k].abs() for n, k in expected.masks.items()]
            ).mean()
        )

    # the penalty shrank the weights chosen for removal; the kept ones far less
    assert done.details["removed_mean_abs"] < 0.7 * mean_abs(before, removed=True)
    assert done.details["kept_mean_abs"] > 0.9 * mean_abs(before, removed=False)
    assert done.details["lambda_final"] == pytest.approx(1.0)


def test_greg_channel_zeroes_every_slice_of_the_planned_channels(r20, fmnist_like_npz):
    config, before, model, done, example, data = phase(
        r20, fmnist_like_npz, regularizer="greg", methods=("channel",), sparsity=0.5
    )
    plan = done.chosen.plan
    assert plan is not None and plan.channels_pruned > 0
    apply_chosen(model, done.chosen)
    for tensor, dims in plan.removals().items():
        value = model.get_parameter(tensor) if tensor in dict(model.named_parameters()) else None
        if value is None:
            continue
        for dim, indices in dims.items():
            assert torch.all(value.index_select(dim, torch.tensor(sorted(indices))) == 0), tensor


def test_slimming_shrinks_bn_scales_and_prunes_by_them(r20, fmnist_like_npz):
    config, before, model, done, *_ = phase(
        r20, fmnist_like_npz, regularizer="slimming", methods=("channel",), sparsity=0.5
    )

    def gammas(m):
        return torch.cat([x.weight.detach().abs() for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)])

    assert float(gammas(model).mean()) < float(gammas(before).mean())
    assert done.prune_config.stages.prune.criterion == "bn-scale" and config.stages.prune.criterion == "magnitude"
    assert done.chosen is None


def test_halo_scales_its_penalty_to_the_budget_and_leaves_pruning_to_the_criterion(r20, fmnist_like_npz):
    _, before, model, done, *_ = phase(r20, fmnist_like_npz, regularizer="halo", sparsity=0.5)
    assert done.details["penalty_scale"] == pytest.approx(125_000 / 12)
    assert 0 < done.details["scale_mean"]
    assert done.chosen is None and done.prune_config.stages.prune.criterion == "magnitude"
    assert not torch.equal(model.conv1.weight, before.conv1.weight)  # it trained


def test_the_cli_names_every_registered_regularizer():
    assert set(REGULARIZER_METHODS) == set(REGULARIZERS.names())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--regularizer", "slimming", "--method", "channel", "--finetune-steps", "0", "--reg-steps", "5"],
            "pass --data",
        ),
        (["--regularizer", "slimming", "--data", "D", "--reg-steps", "5"], "prepares channel pruning"),
        (
            ["--regularizer", "halo", "--method", "channel", "--data", "D", "--reg-steps", "5"],
            "prepares unstructured pruning",
        ),
        (["--regularizer", "slimmin", "--data", "D", "--reg-steps", "5"], "Did you mean 'slimming'"),
        (["--regularizer", "greg", "--data", "D"], "give it steps"),
        (["--regularizer", "greg", "--data", "D", "--reg-steps", "0"], "--reg-steps must be ≥ 1"),
        (["--reg-steps", "5"], "--reg-steps applies to --regularizer"),
        (
            ["--regularizer", "greg", "--method", "unstructured,channel", "--data", "D", "--reg-steps", "5"],
            "prepares one kind of pruning",
        ),
        (
            [
                "--regularizer",
                "slimming",
                "--method",
                "channel",
                "--criterion",
                "lamp",
                "--data",
                "D",
                "--reg-steps",
                "5",
            ],
            "ranks channels by their BatchNorm scale",
        ),
    ],
)
def test_regularizer_usage_errors_exit_2_and_write_nothing(cli, r20, fmnist_like_npz, args, message):
    args = [fmnist_like_npz if a == "D" else a for a in args]
    run = cli("compress", r20, "--arch", "resnet20-fmnist", *args)
    assert run.code == 2, run.stderr
    assert message in run.stderr
    assert sorted(p.name for p in r20.parent.iterdir()) == sorted(["r20.pt", "data.npz"])
