"""The per-stage configs (slimmer/stage_config.py): built from CompressConfig by name, with the same
defaults, each validating its own options (issue 14, item 4)."""

from __future__ import annotations

from dataclasses import MISSING, FrozenInstanceError, fields
from pathlib import Path

import pytest

from slimmer.config import CompressConfig
from slimmer.errors import ConfigError
from slimmer.stage_config import (
    STAGE_CONFIGS,
    ExportConfig,
    InputConfig,
    PruneConfig,
    RecoverConfig,
    RegularizeConfig,
    VerifyConfig,
)


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def test_every_option_belongs_to_a_stage_with_the_same_default() -> None:
    flat = {f.name: f for f in fields(CompressConfig)}
    owned = set()
    for stage in STAGE_CONFIGS:
        for f in fields(stage):
            assert f.name in flat, f"{stage.__name__}.{f.name} is not an option of CompressConfig"
            assert _default(f) == _default(flat[f.name]), f"{stage.__name__}.{f.name}: default differs"
            owned.add(f.name)
    # read by the orchestrator or by the int8 step (QuantizeConfig), not by one stage
    outside = {"trust_remote_code"} | {n for n in flat if n.startswith(("quantize", "calibration", "min_", "max_q"))}
    assert set(flat) - owned <= outside, sorted(set(flat) - owned - outside)


def test_stage_configs_are_built_once_from_the_options_and_frozen() -> None:
    cfg = CompressConfig(model=Path("m.pt"), methods=("channel",), macs_target=0.4, lr=0.05, atol=1e-3, opset=18)
    stages = cfg.stages
    assert stages.prune == PruneConfig(methods=("channel",), macs_target=0.4)
    assert stages.recover.lr == 0.05 and stages.verify.atol == 1e-3 and stages.export.opset == 18
    assert stages.input.model == Path("m.pt")
    assert cfg.stages is stages  # built once, in __post_init__
    with pytest.raises(FrozenInstanceError):
        stages.prune.criterion = "l2"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("stage", "kwargs", "message"),
    [
        (PruneConfig, {"sparsity": 1.0}, "--sparsity must be a number in [0, 1)"),
        (PruneConfig, {"methods": ("unstructured",), "macs_target": 0.5}, "--macs-target applies to --method channel"),
        (PruneConfig, {"methods": ("channel",), "macs_target": 0.5, "sparsity": 0.3}, "both set how many channels"),
        (PruneConfig, {"criterion": "magnitud"}, "--criterion 'magnitud' is not one of"),
        (PruneConfig, {"methods": ("channel", "nm"), "schedule": "gradual"}, "works with --method unstructured or"),
        (RecoverConfig, {"lr": 0.0}, "--lr must be a finite number > 0"),
        (RecoverConfig, {"regrow": True, "reconstruct": True}, "which would undo --reconstruct"),
        (RecoverConfig, {"kd_weight": 0.0}, "--kd-weight must be a number in (0, 1]"),
        (RegularizeConfig, {"regularizer": "greg", "finetune_steps": 0}, "give it steps"),
        (RegularizeConfig, {"reg_steps": 5}, "--reg-steps applies to --regularizer"),
        (ExportConfig, {"opset": 3}, "--opset 3 is not a valid ONNX opset"),
        (ExportConfig, {"exporter": "tvm"}, "--exporter 'tvm' is not one of"),
        (VerifyConfig, {"atol": -1.0}, "--atol must be a finite number ≥ 0"),
        (VerifyConfig, {"latency_pairs": 0}, "--latency-pairs must be an integer ≥ 1"),
        (InputConfig, {"input_shape": (1, 3), "inputs": ("x:float32[1,3]",)}, "--input-shape gives one float input"),
        (InputConfig, {"eval_samples": 0}, "--eval-samples must be ≥ 1"),
    ],
)
def test_each_stage_validates_its_own_options(stage, kwargs, message) -> None:
    with pytest.raises(ConfigError) as info:
        stage(**kwargs)
    assert message in str(info.value)
    with pytest.raises(ConfigError) as via_flat:  # the same error through the command line's config
        CompressConfig(model=Path("m.pt"), **kwargs)
    assert message in str(via_flat.value)


def test_rules_spanning_stages_stay_on_the_run_config() -> None:
    PruneConfig(schedule="gradual")  # a schedule alone is a valid pruning config ...
    with pytest.raises(ConfigError, match="pass --finetune-steps"):  # ... but the run must fine-tune
        CompressConfig(model=Path("m.pt"), schedule="gradual")
    with pytest.raises(ConfigError, match="needs --data"):
        CompressConfig(model=Path("m.pt"), finetune_steps=3)


def test_a_method_handler_that_returns_nothing_is_a_bug_named_at_once(monkeypatch) -> None:
    """Results are immutable: a handler step that changed its result in place and returned None would
    silently lose what it did, so the stage refuses it (the kind of bug the search handler had)."""
    import torch
    from torch import nn

    from slimmer import prune as prune_stage

    bad = prune_stage.MethodHandler("unstructured", "returns nothing", lambda *a: None)
    monkeypatch.setattr(prune_stage.METHODS, "get", lambda name: bad)
    cfg = CompressConfig(model=Path("m.pt"))
    with pytest.raises(TypeError, match="method handler 'unstructured' returned NoneType, not a PruneResult"):
        prune_stage.prune(nn.Linear(4, 2), cfg, (torch.randn(2, 4),), None)
    after = prune_stage.MethodHandler("nm", "returns nothing", lambda *a: None, after_shrink=True)
    monkeypatch.setattr(prune_stage.METHODS, "get", lambda name: after)
    with pytest.raises(TypeError, match="returned NoneType"):
        prune_stage.after_shrink(nn.Linear(4, 2), cfg, (torch.randn(2, 4),), prune_stage.PruneResult())


@pytest.mark.parametrize(
    ("options", "distils"),
    [
        ({"methods": ("channel",)}, False),  # cross-entropy recovered more after channel pruning (model set)
        ({"methods": ("channel",), "kd": True}, True),
        ({"methods": ("channel",), "kd_layers": 0.5}, True),  # layer-wise distillation needs the teacher
        ({"methods": ("unstructured", "channel")}, False),  # and at 90% unstructured, at lr 0.1 (model set)
        ({"methods": ("unstructured",)}, False),
        ({"methods": ("unstructured",), "kd": True}, True),
        ({"methods": ("nm",)}, True),
        ({"methods": ("fold",)}, True),
        ({"methods": ("channel", "fold")}, True),
        ({"methods": ("unstructured",), "kd": False}, False),
    ],
)
def test_fine_tuning_distils_by_default_except_after_unstructured_or_channel_pruning(options, distils) -> None:
    assert RecoverConfig(**options).distils is distils


@pytest.mark.parametrize(
    ("options", "finetune_lr"),
    [
        ({"methods": ("unstructured",)}, 0.1),  # SGD after pruning: 0.1 recovered most on the model set
        ({"methods": ("channel",)}, 0.1),
        ({"methods": ("unstructured", "channel")}, 0.1),
        ({"methods": ("channel",), "optimizer": "adamw"}, 0.01),  # AdamW was never measured at 0.1
        ({"methods": ("nm",)}, 0.01),  # SR-STE's refinement term scales with the rate
        ({"methods": ("fold",)}, 0.01),  # layer folding's alpha schedule was set at 0.01
        ({"methods": ("channel", "fold")}, 0.01),
        ({"methods": ("search",)}, 0.01),
        ({"methods": ("unstructured",), "lr": 0.003}, 0.003),  # --lr decides
        ({"methods": ("nm",), "lr": 0.2}, 0.2),
    ],
)
def test_the_fine_tuning_rate_is_sgds_after_pruning_and_the_old_one_elsewhere(options, finetune_lr) -> None:
    config = RecoverConfig(**options)
    assert config.finetune_lr == finetune_lr
    assert config.phase_lr == options.get("lr", 0.01)  # a regularizer's phase and TAS's weights


@pytest.mark.parametrize(
    ("options", "phase_distils"),
    [
        ({"methods": ("unstructured",)}, True),  # a regularizer's phase distils as it was measured
        ({"methods": ("channel",)}, False),
        ({"methods": ("unstructured", "channel")}, True),
        ({"methods": ("channel",), "kd": True}, True),
        ({"methods": ("unstructured",), "kd": False}, False),
    ],
)
def test_the_regularizers_phase_keeps_its_measured_loss(options, phase_distils) -> None:
    assert RecoverConfig(**options).phase_distils is phase_distils


def test_a_learning_rate_must_be_positive_and_finite() -> None:
    for bad in (0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--lr must be a finite number > 0"):
            RecoverConfig(lr=bad)


@pytest.mark.parametrize(
    ("given", "kd", "weight", "distils"),
    [
        ({}, None, 0.5, False),
        ({"kd_weight": 0.7}, True, 0.7, True),  # a weight given is a wish to distil
        ({"method": "search"}, None, 0.9, True),  # TAS's transfer
        ({"method": "search", "kd_weight": 0.5}, True, 0.5, True),
    ],
)
def test_a_distillation_weight_given_distils_in_the_cli_and_the_api_alike(given, kd, weight, distils) -> None:
    from slimmer.cli.compress import build_config

    opts = {"method": "channel", "kd": None, "kd_weight": None, "macs_target": 0.5} | given
    if opts["method"] == "search":
        opts |= {"data": "fashion-mnist", "finetune_steps": 1}
    api = {k: v for k, v in opts.items() if k != "method" and v is not None} | {"methods": (opts["method"],)}
    for config in (build_config(**opts), CompressConfig(**api)):
        recover = config.stages.recover
        assert (config.kd, recover.distillation_weight, recover.distils) == (kd, weight, distils)
        assert recover.phase_distils == (distils or opts["method"] != "channel")


def test_a_distillation_weight_with_no_kd_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="--kd-weight sets distillation's share.*--no-kd turns distillation off"):
        CompressConfig(methods=("channel",), macs_target=0.5, kd=False, kd_weight=0.7)


@pytest.mark.parametrize(
    ("recorded", "kd", "weight", "distils"),
    [
        ({"kd": None, "kd_weight": 0.5}, None, None, False),  # the default an older report recorded
        ({"kd": False, "kd_weight": 0.5}, False, None, False),  # --no-kd beside it
        ({"kd": True, "kd_weight": 0.5}, True, 0.5, True),
        ({"kd": True, "kd_weight": 0.8}, True, 0.8, True),  # the older CLI's --kd-weight 0.8
        ({"kd": None, "kd_weight": None}, None, None, False),  # this version's default
        ({"kd": None, "kd_weight": 0.9, "methods": ["search"], "data": "x", "finetune_steps": 1}, None, None, True),
        ({"kd": False, "kd_weight": 0.5, "methods": ["search"], "data": "x", "finetune_steps": 1}, False, None, False),
        ({"kd": False, "kd_weight": 0.7}, False, None, False),  # the older CLI's --kd-weight 0.7 --no-kd
        ({"kd": None, "kd_weight": 0.7}, None, None, False),  # the older API's weight where labels alone trained
        ({"kd": None, "kd_weight": 0.7, "methods": ["nm"], "macs_target": None}, True, 0.7, True),  # it ran
    ],
)
def test_a_replayed_report_distils_as_the_recorded_run_did(recorded, kd, weight, distils) -> None:
    d = CompressConfig(methods=("channel",), macs_target=0.5).to_dict() | recorded
    config = CompressConfig.from_dict(d)
    assert (config.kd, config.kd_weight, config.stages.recover.distils) == (kd, weight, distils)
    again = CompressConfig.from_dict(config.to_dict())  # and this version's record replays to itself
    assert (again.kd, again.kd_weight) == (config.kd, config.kd_weight)


@pytest.mark.parametrize(
    ("recorded", "given", "kd", "weight"),
    [
        ({"kd": None, "kd_weight": 0.5}, {"kd_weight": 0.5}, True, 0.5),  # a weight given distils
        ({"kd": False, "kd_weight": None}, {"kd_weight": 0.3}, True, 0.3),  # over a recorded --no-kd
        ({"kd": True, "kd_weight": 0.7}, {"kd": False}, False, None),  # --no-kd over a recorded --kd-weight
        ({"kd": True, "kd_weight": 0.7}, {"kd_weight": 0.3}, True, 0.3),
    ],
)
def test_options_given_beside_replay_override_the_recorded_distillation(recorded, given, kd, weight) -> None:
    d = CompressConfig(methods=("channel",), macs_target=0.5).to_dict() | recorded
    config = CompressConfig.from_dict(d, **given)
    assert (config.kd, config.kd_weight, config.stages.recover.distils) == (kd, weight, kd)


def test_data_without_labels_always_distils() -> None:
    from types import SimpleNamespace

    from slimmer.train.setup import distillation_teacher

    teacher = object()
    unlabelled = SimpleNamespace(train=SimpleNamespace(y=None))
    labelled = SimpleNamespace(train=SimpleNamespace(y=[0]))
    config = RecoverConfig(methods=("channel",))
    assert distillation_teacher(teacher, config, unlabelled) is teacher
    assert distillation_teacher(teacher, config, labelled) is None
