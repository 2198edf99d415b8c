"""Pruning schedules on channels: masks during fine-tuning, physical removal once at the end (issue 4)."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import pytest
import torch
from quick_options import QUICK_EXPORT

from slimmer.config import CompressConfig
from slimmer.errors import ConfigError
from slimmer.prune import PruneResult, shrink_model
from slimmer.prune_schedule import channel_masks_for, schedule_final
from slimmer.schedules import ScheduledMaskHook, build_schedule
from slimmer.surgery import mask_model
from slimmer.train.data import Dataset
from slimmer.train.finetune import FinetuneConfig, finetune
from slimmer.zoo import ARCHITECTURES


def _config(**kw) -> CompressConfig:
    base = {"model": Path("m.pt"), "methods": ("channel",), "data": "x.npz", "finetune_steps": 8, "seed": 0}
    return CompressConfig(**{**base, **kw})


def _r20(resnet20_state) -> torch.nn.Module:
    net = ARCHITECTURES.get("resnet20-fmnist").build()
    net.load_state_dict(torch.load(resnet20_state))
    return net


def test_channel_schedules_are_accepted_alone_and_refused_in_combinations() -> None:
    assert _config(schedule="gradual", macs_target=0.5).schedule == "gradual"
    with pytest.raises(ConfigError, match="unstructured or --method channel alone"):
        _config(schedule="gradual", methods=("channel", "nm"))
    with pytest.raises(ConfigError, match="--speedup measures one plan"):
        _config(schedule="cyclical", speedup=2.0)


def test_schedule_final_is_the_mac_fraction_removed_or_the_sparsity() -> None:
    assert schedule_final(_config(schedule="gradual", macs_target=0.4)) == pytest.approx(0.6)
    assert schedule_final(_config(schedule="gradual", sparsity=0.3)) == pytest.approx(0.3)
    assert schedule_final(_config(schedule="gradual", methods=("unstructured",), sparsity=0.9)) == 0.9


def test_channel_masks_zero_exactly_the_parameter_slices_mask_model_zeroes(resnet20_state) -> None:
    net = _r20(resnet20_state)
    x = torch.randn(2, 1, 28, 28)
    masks = channel_masks_for(net, _config(sparsity=0.3, round_to=4), x, None, 0.3)
    assert masks.plan is not None and masks.sparsity == pytest.approx(0.3, abs=0.05)
    by_plan = mask_model(copy.deepcopy(net), masks.plan)
    params = dict(net.named_parameters())
    for name, p in by_plan.named_parameters():
        kept = masks.masks.get(name, torch.ones_like(p, dtype=torch.bool))
        assert torch.equal(p != 0, (params[name] != 0) & kept), name
    assert channel_masks_for(net, _config(sparsity=0.3), x, None, 0.0).masks == {}


def test_gradual_channel_masks_grow_stay_zero_and_shrink_exactly(resnet20_state) -> None:
    net = _r20(resnet20_state)
    x = torch.randn(2, 1, 28, 28)
    cfg = _config(schedule="gradual", macs_target=0.5, round_to=4)
    seen = []

    def recompute(model, fraction):
        seen.append(fraction)
        return channel_masks_for(model, cfg, x, None, fraction)

    hook = ScheduledMaskHook(build_schedule("gradual", schedule_final(cfg), interval=2), recompute)
    data = Dataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)), "test")
    finetune(net, None, data, FinetuneConfig(steps=10, batch_size=16, lr=0.01), [hook])
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(0.5) and seen == sorted(seen) and len(seen) >= 3
    params = dict(net.named_parameters())
    for name, mask in hook.masks.masks.items():
        assert float(params[name].detach()[~mask].abs().max()) == 0.0, name  # held at exactly zero
    net.eval()
    with torch.no_grad():
        before = net(x)
    pruned, surgery = shrink_model(net, PruneResult(plan=hook.masks.plan), x)
    assert pruned.plan is surgery.plan
    assert surgery.rolled_back == {} and surgery.plan.channels_pruned == hook.masks.plan.channels_pruned > 0
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", ["gradual", "cyclical"])
def test_compress_with_a_channel_schedule_removes_channels_once_at_the_end(cli, r20, fmnist_like_npz, schedule):
    run = cli(
        "compress",
        r20,
        "--arch",
        "resnet20-fmnist",
        "--method",
        "channel",
        "--macs-target",
        "0.5",
        "--round-to",
        "4",
        "--schedule",
        schedule,
        "--data",
        fmnist_like_npz,
        "--finetune-steps",
        "6",
        "--batch-size",
        "32",
        *QUICK_EXPORT,
        "--json",
    )
    assert run.code == 0, run.stderr
    r = run.json()
    assert r["macs"]["after"] <= 0.5 * r["macs"]["before"] * 1.02
    assert r["finetune"]["schedule_updates"] >= 2 and "bn_recalibrated" not in r["finetune"]
    assert r["surgery"]["channels_removed"] == r["pruning"]["channels_pruned"] > 0
    assert r["surgery"]["max_abs_diff"] <= 1e-4 * max(1.0, r["surgery"]["output_scale"])
    assert r["verification"]["passed"]
    widths = [i.dims[0] for i in onnx.load(r["onnx"]["path"]).graph.initializer if len(i.dims) == 4]
    assert min(widths) < 16  # stage 1 lost channels in the exported graph
