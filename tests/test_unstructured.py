import pytest
import torch
from torch import nn

from slimmer.criteria import CRITERIA, ScoreContext, get_criterion
from slimmer.criteria.lamp import lamp_scores
from slimmer.structures.unstructured import prunable_weights, unstructured_masks
from slimmer.zoo import ARCHITECTURES


def net() -> nn.Module:
    torch.manual_seed(0)
    return ARCHITECTURES.get("resnet20-fmnist").build()


def test_prunable_weights_are_conv_and_linear_weights_only():
    names = set(prunable_weights(net()))
    assert "conv1.weight" in names and "fc.weight" in names
    assert not any("bn" in n or n.endswith("bias") for n in names)
    assert len(names) == 19 + 2 + 1  # 19 3x3 convs, 2 projection shortcuts, the classifier


def test_lamp_scores_by_hand():
    # sorted squares 1, 4, 9 → suffix sums 14, 13, 9 → scores 1/14, 4/13, 9/9
    s = lamp_scores(torch.tensor([3.0, -1.0, 2.0]))
    assert torch.allclose(s, torch.tensor([1.0, 1 / 14, 4 / 13]))


def test_global_magnitude_prunes_the_smallest_weights():
    scores = {"a": torch.tensor([0.1, 5.0, 0.3]), "b": torch.tensor([0.2, 4.0])}
    m = unstructured_masks(scores, 0.6, scope="global")
    assert m.masks["a"].tolist() == [False, True, False]
    assert m.masks["b"].tolist() == [False, True]
    assert m.pruned == 3 and m.sparsity == pytest.approx(0.6)


def test_layer_scope_prunes_each_tensor_to_the_fraction():
    scores = {"a": torch.arange(10.0), "b": torch.arange(100.0)}
    m = unstructured_masks(scores, 0.3, scope="layer")
    assert m.per_layer_sparsity() == {"a": pytest.approx(0.3), "b": pytest.approx(0.3)}


@pytest.mark.parametrize("criterion", ["magnitude", "lamp", "random"])  # the data-free, shape-free ones
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_exact_sparsity_for_every_registered_criterion(criterion, scope, sparsity):
    model = net()
    weights = prunable_weights(model)
    crit = get_criterion(criterion)
    masks = unstructured_masks(crit.score(dict(weights), ScoreContext(model, seed=1)), sparsity, scope=scope)
    masks.apply(model)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert abs(zeros / total - sparsity) <= 1.0 / 1000
    assert masks.sparsity == pytest.approx(zeros / total, abs=1e-9)


def test_every_data_free_criterion_is_deterministic_for_a_seed():
    model = net()
    w = {k: v for k, v in prunable_weights(model).items() if k != "fc.weight"}  # bn-scale: fc has no BN
    extra = {"sparsity": 0.5, "input_shape": (1, 1, 28, 28), "synflow_rounds": 3}
    for name in CRITERIA.names():
        if CRITERIA.get(name).needs != "none":
            continue
        a = CRITERIA.get(name).score(w, ScoreContext(model, seed=3, extra=dict(extra)))
        b = CRITERIA.get(name).score(w, ScoreContext(model, seed=3, extra=dict(extra)))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_lamp_never_empties_a_layer_at_999_permille():
    model = net()
    w = dict(prunable_weights(model))
    m = unstructured_masks(get_criterion("lamp").score(w, ScoreContext(model)), 0.999, min_keep=0)
    assert all(int(mask.sum()) >= 1 for mask in m.masks.values())
    assert not m.warnings


def test_row16_collapse_guard_keeps_a_weight_and_warns():
    scores = {"big": torch.full((100,), 10.0), "small": torch.full((4,), 0.01)}
    m = unstructured_masks(scores, 0.5, scope="global")
    assert int(m.masks["small"].sum()) == 1
    assert any("small" in w and "layer collapse" in w for w in m.warnings)
    unguarded = unstructured_masks(scores, 0.5, scope="global", min_keep=0)
    assert int(unguarded.masks["small"].sum()) == 0


def test_apply_is_idempotent_and_leaves_biases_alone():
    model = net()
    w = dict(prunable_weights(model))
    m = unstructured_masks(get_criterion("magnitude").score(w, ScoreContext(model)), 0.7)
    bias_before = model.fc.bias.clone()
    m.apply(model)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    m.apply(model)
    assert all(torch.equal(snapshot[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model.fc.bias, bias_before)


class TwoScales(nn.Module):
    """fc2's weights are 1000× smaller than fc1's: global magnitude at 90% takes almost all of fc2."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(16, 64), nn.Linear(64, 8)
        with torch.no_grad():
            self.fc2.weight.mul_(1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (dict(), "lamp"),
        (dict(sparsity=0.9, schedule="gradual", finetune_steps=2, data="fashion-mnist"), "lamp"),
        (dict(methods=("channel",)), "magnitude"),
        (dict(methods=("nm",)), "magnitude"),
        (dict(methods=("channel", "unstructured")), "magnitude"),
        (dict(regularizer="greg2", reg_steps=2, data="fashion-mnist"), "magnitude"),
        (dict(criterion="magnitude"), "magnitude"),
        (dict(methods=("channel",), criterion="l2"), "l2"),
    ],
)
def test_the_default_criterion_is_lamp_for_unstructured_pruning_alone(options, expected):
    from slimmer.config import CompressConfig

    config = CompressConfig(**options)
    assert config.stages.prune.criterion == expected
    assert config.criterion == options.get("criterion")  # the record keeps what was given: None is "the default"


def test_default_unstructured_pruning_keeps_every_layer_where_global_magnitude_thins_one_away(tmp_path):
    from slimmer import api
    from slimmer.config import CompressConfig

    x = torch.randn(1, 16)
    runs, said = {}, []
    for criterion in (None, "magnitude"):
        config = CompressConfig(sparsity=0.9, criterion=criterion, output=tmp_path / f"{criterion}.onnx")
        progress = (lambda stage, message: said.append(message)) if criterion is None else None
        runs[criterion] = api.compress(TwoScales(), x, config, progress=progress).report
    assert "pruning: unstructured, lamp, sparsity 0.9" in said  # the progress line names it too
    default, magnitude = runs[None], runs["magnitude"]
    assert default.pruning["criterion"] == "lamp" and default.config["criterion"] is None
    assert magnitude.sparsity["per_layer"]["fc2.weight"] >= 0.99  # 1 or 0 weights of 512 left
    assert default.sparsity["per_layer"]["fc2.weight"] <= 0.95
    assert abs(default.sparsity["achieved"] - 0.9) < 0.01


def test_a_default_criterion_follows_the_method_and_regularizer_of_a_replay_or_a_replace(tmp_path):
    """The report records ``criterion: null`` when none was given, so ``--replay`` with another method (or a
    regularizer) gets that method's default, not the LAMP the recorded unstructured run used."""
    import dataclasses
    import json

    from slimmer.cli.compress import replay_config
    from slimmer.config import CompressConfig

    report = tmp_path / "r.json"
    report.write_text(json.dumps({"config": dataclasses.asdict(CompressConfig())}, default=str), encoding="utf-8")
    assert replay_config(report, {}).stages.prune.criterion == "lamp"
    assert replay_config(report, {"method": "channel"}).stages.prune.criterion == "magnitude"
    given = {"regularizer": "greg", "data": "fashion-mnist", "reg_steps": 2}
    assert replay_config(report, given).stages.prune.criterion == "magnitude"
    slimming = {"method": "channel", "regularizer": "slimming", "data": "fashion-mnist", "reg_steps": 2}
    assert replay_config(report, slimming).stages.prune.criterion == "magnitude"
    assert dataclasses.replace(CompressConfig(), methods=("channel",)).stages.prune.criterion == "magnitude"
    explicit = tmp_path / "e.json"
    explicit.write_text(
        json.dumps({"config": dataclasses.asdict(CompressConfig(criterion="lamp"))}, default=str), encoding="utf-8"
    )
    assert replay_config(explicit, {"method": "channel"}).stages.prune.criterion == "lamp"  # given: kept
