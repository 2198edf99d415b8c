"""Collapsing a linear region (convs, BN, sums, identities) into one conv, read off by impulses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimmer.folding import region
from slimmer.folding.linearize import LinearizableActivation


def _bn(c: int, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g) * 0.1)
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn


class Block(nn.Module):
    """stem (c_in → c, k1) → BN → act → conv (k2, groups) → BN, plus a 1×1 branch and the identity."""

    def __init__(self, c_in: int = 2, c: int = 4, k1: int = 3, k2: int = 5, groups: int = 2, bias: bool = True):
        super().__init__()
        self.stem = nn.Conv2d(c_in, c, k1, padding=k1 // 2, bias=bias)
        self.bn1 = _bn(c, 1)
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(c, c, k2, padding=k2 // 2, groups=groups, bias=bias)
        self.bn2 = _bn(c, 2)
        self.branch = nn.Conv2d(c, c, 1)
        self.out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.act(self.bn1(self.stem(x)))
        return self.out(self.bn2(self.conv(s)) + self.branch(s) + s)


def _linear(net: nn.Module, *paths: str) -> nn.Module:
    for path in paths:
        setattr(net, path, nn.Identity())
    return net.eval()


def _interior(t: torch.Tensor, r: int) -> torch.Tensor:
    return t[..., r:-r, r:-r]


@pytest.mark.parametrize("k1,k2,groups,bias", [(3, 5, 2, True), (1, 3, 4, False), (3, 3, 1, True)])
def test_collapse_equals_the_region_on_the_interior(k1: int, k2: int, groups: int, bias: bool) -> None:
    torch.manual_seed(0)
    net = _linear(Block(c_in=1, c=8, k1=k1, k2=k2, groups=groups, bias=bias), "act")
    x = torch.randn(3, 1, 20, 20)
    with torch.no_grad():
        want = net(x)
    new, report = region.collapse(net, (x,))
    [done] = report.collapsed
    r = (k1 - 1) // 2 + (k2 - 1) // 2
    assert done["into"] == f"{2 * r + 1}x{2 * r + 1} conv, 1 -> 8 channels"
    assert done["layers"] == ["stem", "conv", "branch"]
    convs = [m for m in new.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (2 * r + 1, 2 * r + 1)
    with torch.no_grad():
        got = new(x)
    scale = want.abs().max()
    assert float((_interior(got, r) - _interior(want, r)).abs().max()) <= 1e-5 * scale
    assert float((got - want).abs().max()) > 0  # the border is the approximation, by design


def test_probe_reads_a_known_kernel_and_bias() -> None:
    conv = nn.Conv2d(3, 2, 5, padding=2)
    torch.manual_seed(1)
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    got = region.probe_conv(lambda t: conv.double()(t), 3, 2)
    torch.testing.assert_close(got.weight.double(), conv.weight.double())
    torch.testing.assert_close(got.bias.double(), conv.bias.double())


def test_identity_skip_goes_into_the_kernel_centre() -> None:
    conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
    nn.init.zeros_(conv.weight)
    got = region.probe_conv(lambda t: conv.double()(t) + t, 2, 1)
    want = torch.zeros(2, 2, 3, 3)
    want[0, 0, 1, 1] = want[1, 1, 1, 1] = 1.0
    torch.testing.assert_close(got.weight, want)


def test_a_tensor_used_outside_the_region_stays_computed() -> None:
    class TwoOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            h = self.a(x)
            return self.b(h), h.mean()

    torch.manual_seed(0)
    net = TwoOut().eval()
    x = torch.randn(1, 1, 16, 16)
    want = net(x)
    new, report = region.collapse(net, (x,))
    [done] = report.collapsed
    assert done["layers"] == ["a", "b"] and done["macs_after"] == 16 * 16 * 8 * 25 + 16 * 16 * 8 * 9
    got = new(x)
    torch.testing.assert_close(got[1], want[1])  # ``a`` still runs for the second output
    torch.testing.assert_close(_interior(got[0], 2), _interior(want[0], 2), rtol=1e-5, atol=1e-5)


def test_no_region_where_the_merged_conv_would_cost_more() -> None:
    net = _linear(Block(c_in=4, c=4, groups=1), "act")  # 4 channels in: a 7×7 4→4 conv costs more
    new, report = region.collapse(net, (torch.randn(1, 4, 16, 16),))
    assert new is net and report.collapsed == [] and report.refused == []


def test_nonlinear_strided_and_protected_layers_end_a_region() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 2, 16, 16)
    kept = region.collapse(Block().eval(), (x,))[1]
    assert all("conv" not in c["layers"] for c in kept.collapsed)  # act is a ReLU: conv never joins
    strided = _linear(Block(c_in=1), "act")
    strided.stem.stride = (2, 2)
    layers = [c["layers"] for c in region.collapse(strided, (torch.randn(1, 1, 16, 16),))[1].collapsed]
    assert all("stem" not in ls for ls in layers)
    protected = region.collapse(_linear(Block(), "act"), (x,), protected={"conv"})[1]
    assert all("conv" not in c["layers"] for c in protected.collapsed)


def test_hypothetical_plan_lists_the_activations_to_linearize() -> None:
    net = Block(c_in=1, c=8, groups=1).eval()
    planned, refused, why = region.plan(net, (torch.randn(1, 1, 24, 24),))
    assert why is None and refused == []
    [p] = planned
    assert p["activations"] == ["act"] and p["layers"] == ["stem", "conv", "branch"]
    assert p["macs_after"] < region.MAX_COST_RATIO * p["macs_before"]
    # outside a plan a σ_α counts as linear only at α = 1
    net.act = LinearizableActivation(nn.ReLU(), 0.95)
    assert region.collapse(net, (torch.randn(1, 1, 24, 24),))[1].collapsed == []
    net.act = LinearizableActivation(nn.ReLU(), 1.0)
    assert region.collapse(net, (torch.randn(1, 1, 24, 24),))[1].collapsed[0]["layers"] == ["stem", "conv", "branch"]


def test_refused_region_is_reported_and_the_model_kept() -> None:
    net = _linear(Block(c_in=1, c=8, groups=1), "act")
    new, report = region.collapse(net, (torch.randn(1, 1, 16, 16),), accept=lambda gm, r, conv: "too slow")
    assert new is net and report.collapsed == []
    assert report.refused and report.refused[0]["reason"] == "too slow"


def test_untraceable_model_is_left_alone_with_the_reason() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.b(self.a(x))
            return self.a(x)

    net = Branchy().eval()
    new, report = region.collapse(net, (torch.randn(1, 1, 8, 8),))
    assert new is net and report.collapsed == [] and "cannot trace Branchy" in report.note
    planned, refused, why = region.plan(net, (torch.randn(1, 1, 8, 8),))
    assert planned == [] and "cannot trace Branchy" in why


def test_a_trace_that_does_not_reproduce_the_model_is_not_used() -> None:
    class Counter(nn.Module):
        """Python state in forward: torch.fx bakes the count at trace time into a constant."""

        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.b(self.a(x)) * self.calls

    net = Counter().eval()
    new, report = region.collapse(net, (torch.randn(1, 1, 8, 8),))
    assert new is net and report.collapsed == [] and "does not reproduce its outputs" in report.note
