"""Layer-wise least-squares reconstruction before fine-tuning."""

from __future__ import annotations

import copy

import pytest
import torch
from quick_options import QUICK_EXPORT
from torch import nn

from slimmer.train import reconstruct as rec


class Net(nn.Module):
    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=False)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.conv2(self.act(self.conv1(x))).mean((2, 3)))


def _prune(net: nn.Module, fraction: float, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, p in net.named_parameters():
        if name.endswith("weight"):
            masks[name] = torch.rand(p.shape, generator=g) >= fraction
            with torch.no_grad():
                p.mul_(masks[name])
    return masks


def test_masked_least_squares_matches_the_ridge_solution_by_hand() -> None:
    torch.manual_seed(0)
    original = nn.Sequential(nn.Linear(6, 3))
    pruned = copy.deepcopy(original)
    mask = torch.tensor([[1, 1, 0, 1, 0, 1], [0, 1, 1, 1, 1, 0], [1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        pruned[0].weight.mul_(mask)
    x = torch.randn(200, 6)
    result = rec.reconstruct(pruned, original, x, keep_masks={"0.weight": mask})
    xb = torch.cat([x, torch.ones(200, 1)], 1).double()
    y = original(x).detach().double()
    h = xb.T @ xb
    h += rec.DAMPING * h.diagonal().mean() * torch.eye(7, dtype=torch.float64)
    for o in range(3):
        k = torch.cat([mask[o], torch.tensor([True])]).nonzero().squeeze(1)
        want = torch.linalg.solve(h[k][:, k], xb[:, k].T @ y[:, o])
        got = torch.cat([pruned[0].weight[o], pruned[0].bias[o : o + 1]]).detach().double()[k]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(pruned[0].weight != 0, mask)  # pruned weights stay exactly zero
    assert result.layers["0"]["rel_error_after"] < result.layers["0"]["rel_error_before"]


def test_reconstruction_brings_a_pruned_network_back_towards_the_original() -> None:
    torch.manual_seed(0)
    original = Net().eval()
    pruned = copy.deepcopy(original)
    masks = _prune(pruned, 0.7)
    x = torch.randn(64, 3, 10, 10)
    with torch.no_grad():
        err_before = float((pruned(x) - original(x)).pow(2).mean())
    result = rec.reconstruct(pruned, original, x, keep_masks=masks)
    with torch.no_grad():
        err_after = float((pruned(x) - original(x)).pow(2).mean())
    assert err_after < 0.2 * err_before
    assert list(result.layers) == ["conv1", "conv2", "fc"] and result.samples == 64
    for name, p in pruned.named_parameters():
        if name in masks:
            assert float(p.detach()[~masks[name]].abs().max()) == 0.0, name
    assert not pruned.training and not original.training


def test_grouped_convs_and_unknown_paths_are_listed_not_solved() -> None:
    torch.manual_seed(0)
    original = Net(groups=2).eval()
    pruned = copy.deepcopy(original)
    masks = _prune(pruned, 0.5)
    w = pruned.conv2.weight.detach().clone()
    result = rec.reconstruct(pruned, original, torch.randn(8, 3, 10, 10), keep_masks=masks)
    assert "grouped" in result.skipped["conv2"] and torch.equal(pruned.conv2.weight, w)


def test_channel_removal_targets_the_kept_output_channels() -> None:
    torch.manual_seed(0)
    original = Net().eval()
    small = copy.deepcopy(original)
    kept = torch.tensor([0, 2, 3, 6, 7])
    with torch.no_grad():  # remove conv1's channels 1, 4, 5 and conv2's matching inputs, by hand
        small.conv1.weight = nn.Parameter(original.conv1.weight[kept].clone())
        small.conv1.bias = nn.Parameter(original.conv1.bias[kept].clone())
        small.conv1.out_channels = 5
        small.conv2.weight = nn.Parameter(original.conv2.weight[:, kept].clone())
        small.conv2.in_channels = 5
    x = torch.randn(32, 3, 10, 10)
    with torch.no_grad():
        before = float((small(x) - original(x)).pow(2).mean())
    result = rec.reconstruct(small, original, x, kept_outputs={"conv1": kept})
    assert result.skipped.get("conv1", "").startswith("no improvement")  # already exact: left alone
    with torch.no_grad():
        after = float((small(x) - original(x)).pow(2).mean())
    assert after < 0.5 * before
    assert result.layers["conv2"]["rel_error_after"] < result.layers["conv2"]["rel_error_before"]


def test_too_costly_layers_are_skipped() -> None:
    original = Net().eval()
    pruned = copy.deepcopy(original)
    masks = _prune(pruned, 0.5)
    result = rec.reconstruct(pruned, original, torch.randn(4, 3, 8, 8), keep_masks=masks, max_solve_flops=10.0)
    assert result.layers == {} and all("flops" in why for why in result.skipped.values())


@pytest.mark.full_reconstruction
@pytest.mark.parametrize(
    "flag, steps, expect",
    [(None, "0", True), ("--no-reconstruct", "0", False), (None, "2", False), ("--reconstruct", "2", True)],
)
def test_compress_reconstructs_when_no_finetuning_follows_or_when_asked(cli, r20, fmnist_like_npz, flag, steps, expect):
    args = ["compress", r20, "--arch", "resnet20-fmnist", "--sparsity", "0.8", "--data", fmnist_like_npz]
    args += ["--finetune-steps", steps, "--batch-size", "16", "--json", *QUICK_EXPORT] + ([flag] if flag else [])
    run = cli(*args)
    assert run.code == 0, run.stderr
    r = run.json()
    assert ("reconstruction" in (r["finetune"] or {})) is expect
    assert (r["accuracy"].get("after_reconstruct") is not None) is expect
    if expect:
        assert r["finetune"]["reconstruction"]["samples"] == 270  # every training image: 300 less the 10% held out
        assert len(r["finetune"]["reconstruction"]["layers"]) >= 15
    assert abs(r["sparsity"]["achieved"] - 0.8) <= 0.005  # the masks survive reconstruction and fine-tuning
