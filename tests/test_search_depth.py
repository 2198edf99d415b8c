"""TAS depth search and ``--method search`` (slimmer.structures.depth, search_cost, search_run)."""

from __future__ import annotations

import copy
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_search import ResidualToy
from torch import nn

import slimmer
from slimmer.config import CompressConfig
from slimmer.errors import ConfigError
from slimmer.graph.groups import build_groups
from slimmer.graph.macs import count_macs
from slimmer.structures.depth import drop_blocks, find_stages, masked_original
from slimmer.structures.search import SearchConfig, expected_macs, search_plan, search_space
from slimmer.surgery import mask_model, remove_channels
from slimmer.zoo import ARCHITECTURES

X = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(1))


def _resnet20() -> nn.Module:
    torch.manual_seed(0)
    model = ARCHITECTURES.get("resnet20-fmnist").build().train()
    with torch.no_grad():  # non-trivial BN statistics, so a dropped branch changes the output
        model(torch.randn(8, 1, 28, 28))
    return model.eval()


def test_residual_stages_of_resnet20_are_its_identity_blocks():
    stages, why = find_stages(_resnet20(), (torch.randn(1, 1, 28, 28),))
    assert why is None
    # the first block of stages 2 and 3 has a projection shortcut: never droppable
    assert [[b.label for b in s.blocks] for s in stages] == [
        ["layer1.0", "layer1.1", "layer1.2"],
        ["layer2.1", "layer2.2"],
        ["layer3.1", "layer3.2"],
    ]
    assert stages[0].depths == [0, 1, 2, 3]
    assert stages[1].blocks[0].params == (
        "layer2.1.conv1.weight",
        "layer2.1.bn1.weight",
        "layer2.1.bn1.bias",
        "layer2.1.conv2.weight",
        "layer2.1.bn2.weight",
        "layer2.1.bn2.bias",
    )


def test_a_dropped_residual_block_leaves_pruned_equal_to_the_masked_original():
    model = _resnet20()
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    stages, _ = find_stages(model, (x[:1],))
    dropped = [stages[0].blocks[2], stages[2].blocks[0], stages[2].blocks[1]]
    pruned = drop_blocks(copy.deepcopy(model), dropped)
    with torch.no_grad():
        want, got, dense = masked_original(copy.deepcopy(model), dropped)(x), pruned(x), model(x)
    assert torch.equal(got, want)  # x + 0·branch is x exactly
    assert not torch.allclose(got, dense, atol=1e-3)  # the branches did contribute
    names = {n for n, _ in pruned.named_parameters()}
    gone = {p for b in dropped for p in b.params}
    assert not names & gone and names == {n for n, _ in model.named_parameters()} - gone
    # each dropped branch is two 3×3 convs: layer1 16→16 at 28×28, layer3 64→64 at 7×7
    branch = {"layer1": 2 * 16 * 16 * 9 * 28 * 28, "layer3": 2 * 64 * 64 * 9 * 7 * 7}
    removed = branch["layer1"] + 2 * branch["layer3"]
    assert count_macs(pruned, (x[:1],)) == count_macs(model, (x[:1],)) - removed


def test_expected_macs_include_the_depth_probability_hand_computed():
    model = ResidualToy().eval()
    groups = build_groups(model, (X,))
    sites, cost = search_space(model, (X,), groups, SearchConfig(macs_target=0.5), torch.Generator().manual_seed(0))
    outer, inner = sorted(sites, key=lambda s: s.group.channels)  # 8 channels (stem + add), 10 (inside the branch)
    assert outer.widths == [2, 3, 4, 5, 6, 7, 8] and inner.widths == [3, 4, 5, 6, 7, 8, 9, 10]
    (depth,) = cost.depth
    assert depth.depths == [0, 1]
    with torch.no_grad():
        outer.logits.zero_()  # E[c] = 5 of 8
        inner.logits.copy_(torch.tensor([0.0] * 7 + [math.log(7)]))  # p = (1,…,1,7)/14: E[c] = (3+…+9+70)/14
        depth.logits.copy_(torch.tensor([0.0, math.log(3)]))  # P(depth ≥ 1) = 3/4
    # dense: stem 8·3·9·25 = 5400, branch convs 10·8·9·25 = 18000 each, head 8·2 = 16
    assert cost.total == 5400 + 2 * 18000 + 16
    fa, fb, keep = 5 / 8, (42 + 70) / 14 / 10, 3 / 4
    want = (5400 * fa + 2 * 18000 * fa * fb * keep + 16 * fa) / cost.total
    assert float(expected_macs(sites, cost).detach()) == pytest.approx(want, rel=1e-6)
    # the sampled gate is P(depth ≥ 1) of a two-candidate Gumbel sample: in [0, 1], differentiable
    gate = depth.soft_gates(1.0, torch.Generator().manual_seed(0))
    assert gate.shape == (1,) and 0.0 <= float(gate.detach()) <= 1.0
    gate.sum().backward()
    assert depth.logits.grad is not None and depth.logits.grad.abs().sum() > 0


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 5, 5, generator=gen)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def test_a_target_only_depth_can_reach_drops_the_block_and_meets_it_within_the_tolerance():
    model = ResidualToy().eval()
    groups = build_groups(model, (X,))
    # widths alone reach at best (5400·3/8 + 36000·3/8·3/10 + 16·3/8)/41416 = 0.147: 0.1 needs the block gone
    config = SearchConfig(macs_target=0.1, steps=10, seed=0)
    plan, result = search_plan(model, (X,), groups, _batches(32, 0), _batches(32, 1), config)
    assert [b.label for b in result.dropped] == ["branch"] and result.depths[0]["depth"] == 0
    pruned = drop_blocks(remove_channels(copy.deepcopy(model), plan), result.dropped)
    counted = count_macs(pruned, (X,)) / count_macs(model, (X,))
    tolerance = CompressConfig().sparsity_tolerance
    assert counted == pytest.approx(result.final_macs) and counted <= config.macs_target + tolerance
    with torch.no_grad():
        masked = masked_original(mask_model(copy.deepcopy(model), plan), result.dropped)
        assert torch.allclose(pruned(X), masked(X), atol=1e-6)


def test_search_needs_labelled_data_and_a_macs_target():
    with pytest.raises(ConfigError, match="MACs target"):
        CompressConfig(methods=("search",), data="d.npz")
    with pytest.raises(ConfigError, match="--data"):
        CompressConfig(methods=("search",), macs_target=0.5)
    with pytest.raises(ConfigError, match="search chooses the channels itself"):
        CompressConfig(methods=("search", "channel"), macs_target=0.5, data="d.npz")
    with pytest.raises(ConfigError, match="--search-steps"):
        CompressConfig(methods=("search",), macs_target=0.5, data="d.npz", search_steps=0)


def test_compress_search_without_labels_is_a_usage_error(cli, r20, tmp_path):
    path = tmp_path / "unlabelled.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8))
    out = tmp_path / "o.onnx"
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--method", "search", "--macs-target", "0.5")
    assert run.code == 2 and "--data" in run.stderr
    run = cli(
        "compress", r20, "--arch", "resnet20-fmnist", "--method", "search", "--macs-target", "0.5",
        "--data", path, "--search-steps", "2", "-o", out,
    )  # fmt: skip
    assert run.code == 2 and "labelled" in run.stderr and not out.exists()


def test_compress_method_search_drops_a_block_exports_and_verifies(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((64, 3, 5, 5)).astype(np.float32), y=rng.integers(0, 2, 64))
    out = tmp_path / "toy.onnx"
    config = CompressConfig(
        methods=("search",), macs_target=0.1, data=str(data), search_steps=5, finetune_steps=3, batch_size=16,
        kd_weight=0.9, output=out,
    )  # fmt: skip
    result = slimmer.compress(ResidualToy().eval(), X, config)
    report = result.report
    assert report.status == "ok" and report.exit_code == 0 and out.exists()
    search = report.pruning["search"]
    assert [b["block"] for b in search["dropped"]] == ["branch"] and search["depth_surgery"]["max_abs_diff"] == 0.0
    assert search["final_macs"] <= 0.1 and report.macs["after"] / report.macs["before"] == pytest.approx(
        search["final_macs"]
    )
    assert report.finetune["kd_weight"] == 0.9 and report.verification["passed"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = result.model.eval()(X).numpy()
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: X.numpy()})[0], want, atol=1e-4)


def test_cli_compress_method_search_exits_0_and_the_onnx_verifies(cli, tmp_path):
    model = tmp_path / "toy.pt"
    torch.save(ResidualToy().state_dict(), model)
    rng = np.random.default_rng(1)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((64, 3, 5, 5)).astype(np.float32), y=rng.integers(0, 2, 64))
    out = tmp_path / "toy.onnx"
    run = cli(
        "compress", model, "--arch", "test_search:ResidualToy", "--input-shape", "1,3,5,5", "--method", "search",
        "--macs-target", "0.5", "--search-steps", "4", "--data", data, "--finetune-steps", "2", "--batch-size", "16",
        "-o", out, "--json",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    report = run.json()
    assert report["status"] == "ok" and report["verification"]["passed"] and out.exists()
    search = report["pruning"]["search"]
    assert search["steps"] == 4 and set(search["widths"]) == set(search["channels"])
    assert len(search["depths"]) == 1 and search["depths"][0]["depth"] in (0, 1)
    kept = report["macs"]["after"] / report["macs"]["before"]
    assert kept <= 0.5 + report["sparsity"]["tolerance"] and kept == pytest.approx(search["final_macs"])
    assert report["finetune"]["kd_weight"] == 0.9  # TAS's transfer: the CLI default for search
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {session.get_inputs()[0].name: X.numpy()})[0].shape == (1, 2)
