"""Surgery and plans: pruned == masked original on real architectures, JSON replay, ONNX export."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from slimmer.errors import ConfigError, InputError
from slimmer.graph import build_groups
from slimmer.graph.macs import count_macs
from slimmer.structures.channel import group_scores, plan_channels
from slimmer.structures.plan import PruningPlan
from slimmer.surgery import mask_model, shrink


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters (torchvision's init makes outputs near-constant)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model.eval()


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        return self.fc(torch.relu(x + self.b(x)).mean((2, 3)))


X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def small() -> Small:
    torch.manual_seed(0)
    return randomize(Small())


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_half_macs(arch: str) -> None:
    torch.manual_seed(0)
    model = randomize(getattr(torchvision.models, arch)(weights=None))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    untouched = copy.deepcopy(model)
    groups = build_groups(model, (x,))
    plan = plan_channels(groups, model, macs_target=0.5, example_inputs=(x,), round_to=1)
    before = count_macs(model, (x,))
    result = shrink(model, plan, (x,))
    assert not result.rolled_back
    assert count_macs(model, (x,)) / before <= 0.52
    assert plan.macs_after == count_macs(model, (x,))
    with torch.no_grad():
        reference, pruned = mask_model(untouched, result.plan)(x), model(x)
    assert pruned.shape == (1, 1000)
    assert (pruned - reference).abs().max() <= 1e-5 * reference.abs().max()
    assert reference.std() > 0


def test_rounding_keeps_multiples_and_respects_target() -> None:
    model = small()
    plan = plan_channels(build_groups(model, (X,)), model, macs_target=0.6, round_to=8, example_inputs=(X,))
    assert plan.macs_after <= 0.6 * plan.macs_before
    assert all(len(g.kept) % 8 == 0 or len(g.kept) == g.channels for g in plan.groups)


def test_plan_json_round_trip_and_replay(tmp_path) -> None:
    model = small()
    plan = plan_channels(build_groups(model, (X,)), model, sparsity=0.5, criterion="l2", example_inputs=(X,))
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = PruningPlan.load(path)
    assert loaded.to_dict() == plan.to_dict()
    shrink(model, plan, (X,))
    replayed = small()  # same architecture and weights, built afresh
    result = shrink(replayed, loaded, (X,))
    assert not result.rolled_back
    assert [p.shape for p in replayed.parameters()] == [p.shape for p in model.parameters()]
    with torch.no_grad():
        assert torch.equal(replayed(X), model(X))


def test_plan_for_another_architecture_is_rejected() -> None:
    model = small()
    plan = plan_channels(build_groups(model, (X,)), model, sparsity=0.5)
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 3)).eval()
    with pytest.raises(InputError, match="does not have"):
        PruningPlan.from_json(plan.to_json()).bind(build_groups(other, (X,)))
    with pytest.raises(InputError, match="malformed"):
        PruningPlan.from_dict({"version": 1, "groups": [{"id": "a"}]})


def test_masked_original_zeroes_the_whole_chain() -> None:
    model = small()
    groups = build_groups(model, (X,))
    plan = plan_channels(groups, model, sparsity=0.5)
    masked = mask_model(copy.deepcopy(model), plan)
    group = next(g for g in groups.prunable if ("a.0.weight", 0) in g.signature)
    pruned = next(p for p in plan.groups if p.id == group.id).pruned
    assert pruned
    for name in ("a.0.weight", "a.0.bias", "a.1.weight", "a.1.bias", "b.1.weight", "b.1.bias"):
        assert masked.get_parameter(name)[pruned].abs().sum() == 0
    assert masked.get_parameter("fc.weight")[:, pruned].abs().sum() == 0
    assert masked.get_parameter("b.0.weight")[:, pruned].abs().sum() == 0


@pytest.mark.parametrize("kind", ["l1", "l2", "bn-scale", "random"])
def test_group_scores(kind: str) -> None:
    model = small()
    group = next(g for g in build_groups(model, (X,)).prunable if ("a.0.weight", 0) in g.signature)
    scores = group_scores(group, model, kind, seed=3)
    assert scores.shape == (16,) and torch.all(scores >= 0)
    assert torch.equal(scores, group_scores(group, model, kind, seed=3))
    if kind == "bn-scale":
        expected = model.a[1].weight.abs() + model.b[1].weight.abs()
        assert torch.allclose(scores, expected.double())


def test_layer_scope_prunes_every_group_alike() -> None:
    model = small()
    plan = plan_channels(build_groups(model, (X,)), model, sparsity=0.5, scope="layer")
    assert all(len(g.kept) == g.channels // 2 for g in plan.groups)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"sparsity": 0.5, "macs_target": 0.5},
        {"sparsity": 1.0},
        {"macs_target": 0.5},
        {"sparsity": 0.5, "round_to": 0},
        {"sparsity": 0.5, "scope": "block"},
        {"sparsity": 0.5, "criterion": "taylor"},
    ],
)
def test_bad_options_are_config_errors(kwargs: dict) -> None:
    model = small()
    with pytest.raises(ConfigError):
        plan_channels(build_groups(model, (X,)), model, **kwargs)


@pytest.mark.slow
def test_pruned_model_exports_to_onnx(tmp_path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    model = small()
    plan = plan_channels(build_groups(model, (X,)), model, sparsity=0.5)
    shrink(model, plan, (X,))
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(model, (X,), str(path), dynamo=True, external_data=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: X.numpy()})
    with torch.no_grad():
        expected = model(X).numpy()
    assert abs(got - expected).max() <= 1e-5 * abs(expected).max() + 1e-6
