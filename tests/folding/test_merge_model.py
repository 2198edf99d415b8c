"""Model-level merging: the merged network equals the linearized unmerged one; growth and padding refused."""

from __future__ import annotations

import copy

import torch
from torch import nn

from slimmer.folding import finalize_activations, fold_batchnorm, insert_linearizable, merge_model
from slimmer.zoo import ARCHITECTURES


def assert_rel_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(float(b.abs().max()), 1.0)
    assert float((a - b).abs().max()) <= tol * scale


def linearized(net: nn.Module) -> nn.Module:
    """Every activation wrapped, α set to 1, then finalized into identities (the folding recipe)."""
    insert_linearizable(net)
    for module in net.modules():
        if hasattr(module, "alpha"):
            with torch.no_grad():
                module.alpha.fill_(1.0)
    finalize_activations(net)
    return net


def test_chain_merges_and_equals_the_linearized_network() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(16, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
        nn.ReLU(),
        nn.Linear(10, 3),
    ).eval()
    net[1].running_mean.uniform_(-0.3, 0.3)
    net[1].running_var.uniform_(0.5, 1.5)
    x = torch.randn(3, 16, 6, 6)
    assert fold_batchnorm(net, x).folded == [("0", "1")]
    linearized(net)
    reference = copy.deepcopy(net)
    report = merge_model(net, x)
    pairs = [(m["first"], m["second"]) for m in report.merged]
    assert pairs == [("0", "3"), ("6", "8"), ("6", "10")]
    assert report.refused == {}
    assert all(m["exact"] and m["macs_after"] <= m["macs_before"] for m in report.merged)
    assert report.depth == (5, 2)
    assert report.macs[1] < report.macs[0] and report.params[1] < report.params[0]
    assert isinstance(net[3], nn.Identity) and isinstance(net[8], nn.Identity)
    assert net[0].kernel_size == (3, 3) and net[0].out_channels == 4
    x2 = torch.randn(5, 16, 6, 6)
    with torch.no_grad():
        assert_rel_close(net(x2), reference(x2))
    assert report.as_dict()["depth"] == {"before": 5, "after": 2}


def test_growth_and_border_are_refused_with_reasons() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=2),
        nn.Identity(),
        nn.Conv2d(8, 8, 3),
        nn.Conv2d(8, 8, 3, padding=1),
    ).eval()
    x = torch.randn(2, 8, 10, 10)
    reference = copy.deepcopy(net)
    report = merge_model(net, x)
    assert report.merged == []
    assert "grow MACs" in report.refused["0 -> 2"]
    assert "border" in report.refused["2 -> 3"]
    assert report.depth == (3, 3) and report.macs[0] == report.macs[1]

    report = merge_model(net, x, max_mac_growth=2.0)
    assert [(m["first"], m["second"]) for m in report.merged] == [("0", "2")]
    assert net[0].kernel_size == (5, 5)
    with torch.no_grad():
        assert_rel_close(net(x), reference(x))


class UsesIntermediate(nn.Module):
    """The graph shows conv → conv, but forward also reads the first conv's output shape."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.b(y) * y.shape[-1]


class SharesWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)) + self.a.weight.sum()


def test_merge_is_reverted_when_forward_changes() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 5)
    for net, reason in ((UsesIntermediate(), "outputs differ"), (SharesWeight(), "also used outside")):
        net.eval()
        with torch.no_grad():
            expected = net(x)
        report = merge_model(net, x)
        assert report.merged == []
        assert reason in report.refused["a -> b"]
        assert isinstance(net.b, nn.Conv2d)
        with torch.no_grad():
            assert torch.equal(net(x), expected)


def test_merge_record() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)).eval()
    report = merge_model(net, torch.randn(2, 4, 5, 5))
    assert report.merged == [
        {
            "first": "0",
            "second": "1",
            "into": "0",
            "kind": "Conv2d",
            "shape": [4, 4, 1, 1],
            "macs_before": 2 * 2 * 4 * 25 * 4,
            "macs_after": 2 * 4 * 25 * 4,
            "exact": True,
        }
    ]


def test_resnet20_merges_nothing_while_its_activations_are_nonlinear() -> None:
    torch.manual_seed(0)
    net = ARCHITECTURES.get("resnet20-fmnist").build().eval()
    x = torch.randn(1, 1, 28, 28)
    fold_batchnorm(net, x)
    assert len(insert_linearizable(net)) == 19  # stem + two per block, all nn.ReLU modules
    report = merge_model(net, x)  # α = 0: every activation is still a ReLU, so no pair is adjacent
    assert report.merged == [] and report.depth[0] == report.depth[1] == 20
