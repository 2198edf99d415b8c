"""Issue 16: layer patterns from other pruning tools' bug reports, through ``slimmer compress``.

Each channel pattern runs ``--method channel --sparsity 0.5`` at the default ``--round-to`` (16) and
must exit 0 with the target met, ONNX verified, parameters dropped, and the plan saved beside the
ONNX file replayed on a fresh model equal to the masked original. Models: ``field_models.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from unittest import mock

import field_models
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from slimmer.graph import ChannelGroup, GroupMember, build_groups
from slimmer.graph.rules import RULES
from slimmer.structures.channel import plan_channels, unit_step
from slimmer.structures.plan import PruningPlan
from slimmer.structures.scope import unstructured_scope
from slimmer.surgery import mask_model, shrink


def checkpoint(tmp_path: Path, name: str) -> Path:
    torch.manual_seed(0)
    path = tmp_path / f"{name}.pt"
    torch.save(getattr(field_models, name)().state_dict(), path)
    return path


def fresh(name: str, path: Path) -> nn.Module:
    model = getattr(field_models, name)()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def compress_channels(cli, tmp_path: Path, name: str) -> tuple[dict, nn.Module, nn.Module]:
    """Run the CLI; check the issue's invariants; return (report, original, replayed pruned model)."""
    path = checkpoint(tmp_path, name)
    args = ("compress", path, "--arch", f"field_models:{name}", "--method", "channel", "--sparsity", "0.5")
    run = cli(*args, "--round-to", "16", "--json")  # a fixed multiple: the patterns' rounding in channels is checked
    assert run.code == 0, run.stderr
    report = run.json()
    assert report["pruning"]["round_to"] == 16
    assert report["sparsity"]["achieved"] >= 0.5
    assert report["verification"]["passed"]
    assert report["surgery"]["rolled_back"] == {}
    assert report["params"]["after"] < report["params"]["before"]
    assert report["macs"]["after"] < report["macs"]["before"]
    blocked = report["pruning"]["blocked"]  # only the output layer's channels, by design
    assert [b["reason"] for b in blocked] == ["model output"] and blocked[0]["channels"] > 0 < blocked[0]["macs"]
    plan = PruningPlan.load(report["onnx"]["plan"])
    assert plan.macs_before == report["macs"]["before"]  # batch 1 in the plan as in the report
    original = fresh(name, path)
    weights = {n for n, _ in original.named_parameters()}
    assert report["sparsity"]["per_layer"] and set(report["sparsity"]["per_layer"]) <= weights
    # the plan replayed on a fresh model: physically pruned == masked original
    x = torch.randn(2, *getattr(field_models, name).input_shape[1:], generator=torch.Generator().manual_seed(3))
    pruned = fresh(name, path)
    result = shrink(pruned, plan, (x,))
    assert result.rolled_back == {} and result.params_after == report["params"]["after"]
    with torch.no_grad():
        reference = mask_model(copy.deepcopy(original), plan)(x)
        assert not torch.allclose(reference, original(x))  # the masking did something
        assert (pruned(x) - reference).abs().max().item() <= 1e-5 * reference.abs().max().item()
    return report, original, pruned


@pytest.mark.slow
def test_grouped_conv_residual_rounds_in_channels(cli, tmp_path):
    report, _, pruned = compress_channels(cli, tmp_path, "GroupedResidual")
    a, wide = pruned.a[0], pruned.wide[0]
    assert a.groups == 4 and a.out_channels == 32  # 4 of 8 conv groups of 8 channels: a multiple of 16
    assert wide.groups == 2 and wide.in_channels == 32 and wide.out_channels == 64
    assert pruned.stem[0].out_channels == 32


def test_group_norm_with_two_group_counts(cli, tmp_path):
    _, _, pruned = compress_channels(cli, tmp_path, "GroupNormStack")
    for norm, size in ((pruned.n1, 4), (pruned.n2, 8)):  # channels per group stay, groups go
        assert norm.num_channels // norm.num_groups == size
        assert norm.num_channels % 16 == 0 and norm.weight.numel() == norm.num_channels
    assert pruned.n1.num_channels < 128 and pruned.n2.num_channels < 64


def test_grouped_conv_transpose(cli, tmp_path):
    _, _, pruned = compress_channels(cli, tmp_path, "GroupedTranspose")
    up = pruned.up
    assert up.groups < 16 and up.in_channels == up.out_channels == 4 * up.groups
    assert up.in_channels % 16 == 0


def test_per_channel_prelu_is_sliced_and_a_shared_prelu_stays_whole(cli, tmp_path):
    report, _, pruned = compress_channels(cli, tmp_path, "PReLUNet")
    assert pruned.p1.weight.numel() == pruned.p1.num_parameters == pruned.c1.out_channels < 32
    assert pruned.p2.weight.numel() == pruned.c2.out_channels < 48
    assert pruned.shared.weight.numel() == 1
    assert "shared.weight" not in report["sparsity"]["per_layer"]


def test_layer_scale_and_affine_only_parameters_follow_their_channels(cli, tmp_path):
    report, _, pruned = compress_channels(cli, tmp_path, "LayerScaleBlock")
    assert pruned.gamma.numel() == pruned.fc1.out_features < 64
    assert pruned.scale.shape[1] == pruned.shift.shape[1] == pruned.stem.out_channels < 32
    assert {"gamma", "scale", "shift"} <= set(report["sparsity"]["per_layer"])


def test_pixel_shuffle_prunes_blocks_of_r_squared(cli, tmp_path):
    _, _, pruned = compress_channels(cli, tmp_path, "PixelShuffleUp")
    assert pruned.expand.out_channels == 4 * pruned.out.in_channels < 128
    assert pruned.out.in_channels % 16 == 0


def test_unequal_split_maps_channels_into_each_part(cli, tmp_path):
    _, _, pruned = compress_channels(cli, tmp_path, "UnequalSplit")
    assert pruned.left.in_channels + pruned.right.in_channels == pruned.stem[0].out_channels < 64


def test_unequal_split_with_literal_sizes_keeps_those_groups_whole_and_says_so():
    model = field_models.perturbed(field_models.UnequalSplitLiteral()).eval()
    x = torch.randn(2, 3, 8, 8)
    groups = build_groups(model, (x,))
    plan = plan_channels(groups, model, sparsity=0.5, example_inputs=(x[:1],))
    notes = " ".join(plan.notes)
    assert "kept whole: removing its channels breaks the forward" in notes
    split_groups = [g for g in plan.groups if ("stem.0.weight", 0) in [tuple(m) for m in g.members]]
    assert split_groups and all(not g.pruned for g in split_groups)
    assert shrink(model, plan, (x,)).rolled_back == {}  # nothing left for surgery to undo


def test_lstm_model_under_unstructured_covers_the_recurrent_weights(cli, tmp_path):
    path = checkpoint(tmp_path, "Recurrent")
    run = cli("compress", path, "--arch", "field_models:Recurrent", "--sparsity", "0.9", "--json")
    assert run.code == 0, run.stderr
    report = run.json()
    assert report["verification"]["passed"]
    assert abs(report["sparsity"]["achieved"] - 0.9) <= 1e-3
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "embed.weight", "head.weight"} == set(
        report["sparsity"]["per_layer"]
    )
    scope = report["pruning"]["scope"]
    model = fresh("Recurrent", path)
    matrices = sum(p.numel() for p in model.parameters() if p.ndim == 2)
    assert scope["params_in_scope"] == matrices and scope["excluded_matrices"] == {}
    assert scope["params_total"] == report["params"]["before"]
    zeros = sum(int((numpy_helper.to_array(i) == 0).sum()) for i in onnx.load(report["onnx"]["path"]).graph.initializer)
    assert zeros >= 0.9 * matrices - 1  # the LSTM's zeros reach the ONNX file


def test_unstructured_scope_takes_bare_matmul_parameters_and_names_what_it_leaves_out():
    model = field_models.BareMatmul()
    tokens = torch.randint(0, 20, (2, 5))
    scope = unstructured_scope(model, (tokens,))
    assert set(scope.weights) == {"attn.in_proj_weight", "attn.out_proj.weight", "w", "v"}
    assert scope.excluded == {"embed.weight": 320, "position": 80}
    total = sum(p.numel() for p in model.parameters())
    assert scope.params_total == total and scope.as_dict()["excluded_matrices_share"] == pytest.approx(400 / total)
    note = scope.note(0.9)
    assert "embed.weight" in note and "position" in note and f"{scope.in_scope:,} weights in scope" in note


def test_every_group_blocked_names_the_real_blocker(cli, tmp_path):
    path = checkpoint(tmp_path, "PReLUNet")
    without_prelu = {k: v for k, v in RULES._items.items() if "prelu" not in k}
    with mock.patch.object(RULES, "_items", without_prelu):
        run = cli("compress", path, "--arch", "field_models:PReLUNet", "--method", "channel", "--sparsity", "0.5")
    assert run.code == 2
    message = run.stderr.split("Blocked by:", 1)[1]
    reasons = [part.strip() for part in message.split("hint:")[0].split(";")]
    assert "aten.prelu.default at shared" in reasons[0] and "holds back 64 channels" in reasons[0]
    assert "aten.prelu.default at p2" in reasons[1] and "holds back 48 channels" in reasons[1]
    assert reasons[-1].startswith("model output holds back 10 channels")  # by design, and smallest
    assert not list(tmp_path.glob("*.onnx"))


def test_input_shape_errors_speak_of_the_users_shape(cli, tmp_path):
    path = checkpoint(tmp_path, "GroupedTranspose")
    run = cli("compress", path, "--arch", "field_models:GroupedTranspose", "--input-shape", "1,5,6,6")
    assert run.code == 2 and "shape (1, 5, 6, 6)" in run.stderr and "(2, 5" not in run.stderr


def member(name: str, width: int, units: int) -> GroupMember:
    return GroupMember(name, 0, tuple(tuple(range(k * width, (k + 1) * width)) for k in range(units)))


@pytest.mark.parametrize(
    ("widths", "step"),
    [((1,), 16), ((8,), 2), ((16, 32), 1), ((8, 16), 2), ((4, 1), 16), ((3,), 16), ((12,), 4)],
)
def test_unit_step_rounds_every_tensor_to_a_multiple_of_round_to(widths, step):
    group = ChannelGroup("g", [member(f"t{i}", w, 8) for i, w in enumerate(widths)], 8)
    assert unit_step(group, 16) == step
    assert all(step * w % 16 == 0 for w in widths)
