"""Every pairwise merge rule equals the unmerged layers on random inputs; unsupported cases are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimmer.errors import InputError
from slimmer.folding import MergeRefused, add_identity, merge_convs, merge_linears, merge_refusal, merge_residual


def assert_rel_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    assert a.shape == b.shape
    scale = max(float(b.abs().max()), 1.0)
    assert float((a - b).abs().max()) <= tol * scale


def randomize(*layers: nn.Module) -> None:
    for layer in layers:
        with torch.no_grad():
            for p in layer.parameters():
                p.uniform_(-0.5, 0.5)


# (k1, s1, p1, bias1, k2, s2, bias2) — the second conv never pads (the exact case)
CONV_CASES = [
    (3, 1, 1, False, 3, 1, False),
    (3, 1, 1, True, 3, 1, True),
    (3, 2, 1, True, 3, 1, True),
    (3, 1, 0, True, 3, 2, False),
    (3, 2, 1, True, 3, 2, True),
    (1, 1, 0, True, 1, 1, True),
    (1, 2, 0, False, 3, 1, True),
    (3, 1, 2, True, 1, 1, True),
    (5, 3, 2, True, 2, 2, True),
    ((3, 1), (2, 1), (1, 0), True, (1, 3), (1, 2), True),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c) for c in CONV_CASES])
@pytest.mark.parametrize("size", [(13, 13), (14, 17)])
def test_conv_merge_is_exact(case: tuple, size: tuple[int, int]) -> None:
    k1, s1, p1, b1, k2, s2, b2 = case
    torch.manual_seed(0)
    first = nn.Conv2d(3, 6, k1, stride=s1, padding=p1, bias=b1)
    second = nn.Conv2d(6, 5, k2, stride=s2, bias=b2)
    randomize(first, second)
    merged = merge_convs(first, second)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert_rel_close(merged(x), second(first(x)))
    assert (merged.bias is not None) == (b1 or b2)


def test_merge_kernel_size_and_stride() -> None:
    merged = merge_convs(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3))
    assert merged.kernel_size == (7, 7) and merged.stride == (2, 2) and merged.padding == (1, 1)
    merged = merge_convs(nn.Conv2d(2, 4, 3, padding=2), nn.Conv2d(4, 4, 3))
    assert merged.kernel_size == (5, 5) and merged.stride == (1, 1) and merged.padding == (2, 2)


def test_padded_second_conv_is_refused_or_border_approximate() -> None:
    torch.manual_seed(0)
    first, second = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
    randomize(first, second)
    with pytest.raises(MergeRefused, match="border"):
        merge_convs(first, second)
    merged = merge_convs(first, second, allow_border_approx=True)
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        got, want = merged(x), second(first(x))
    assert got.shape == want.shape
    assert_rel_close(got[..., 1:-1, 1:-1], want[..., 1:-1, 1:-1])
    assert float((got - want).abs().max()) > 1e-3  # the border really differs


@pytest.mark.parametrize(("b1", "b2"), [(True, True), (False, True), (True, False), (False, False)])
def test_linear_merge_is_exact(b1: bool, b2: bool) -> None:
    torch.manual_seed(0)
    first, second = nn.Linear(7, 5, bias=b1), nn.Linear(5, 3, bias=b2)
    merged = merge_linears(first, second)
    x = torch.randn(4, 2, 7)
    with torch.no_grad():
        assert_rel_close(merged(x), second(first(x)))
    assert (merged.bias is not None) == (b1 or b2)


@pytest.mark.parametrize(("k1", "p1", "k2"), [(3, 2, 3), (3, 1, 1), (1, 0, 1), (5, 3, 3)])
def test_residual_goes_into_the_centre_tap(k1: int, p1: int, k2: int) -> None:
    torch.manual_seed(0)
    first, second = nn.Conv2d(4, 6, k1, padding=p1), nn.Conv2d(6, 4, k2)
    randomize(first, second)
    merged = merge_residual(first, second)
    x = torch.randn(2, 4, 11, 11)
    with torch.no_grad():
        assert_rel_close(merged(x), x + second(first(x)))


def test_linear_residual() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(5, 5)
    x = torch.randn(3, 5)
    with torch.no_grad():
        expected = x + layer(x)
    with torch.no_grad():
        assert_rel_close(add_identity(layer)(x), expected)


REFUSED = [
    (nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 1), "groups=2"),
    (nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3, dilation=2), "dilation"),
    (nn.Conv2d(4, 4, 3), nn.Conv2d(5, 4, 3), "shape mismatch"),
    (nn.Conv1d(4, 4, 3), nn.Conv1d(4, 4, 3), "Conv1d"),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.Conv2d(4, 4, 1), "padding_mode"),
    (nn.Conv2d(4, 4, 3, padding="same"), nn.Conv2d(4, 4, 1), "padding='same'"),
    (nn.Linear(4, 4), nn.Conv2d(4, 4, 1), "only merges with another Linear"),
    (nn.Linear(4, 5), nn.Linear(4, 4), "shape mismatch"),
]


@pytest.mark.parametrize(("first", "second", "reason"), REFUSED, ids=[r[2] for r in REFUSED])
def test_unsupported_merges_are_refused_with_a_reason(first, second, reason: str) -> None:
    assert reason in (merge_refusal(first, second) or "")
    with pytest.raises(MergeRefused) as info:
        merge_convs(first, second) if isinstance(first, nn.Conv2d) else merge_linears(first, second)
    assert reason in info.value.reason
    assert isinstance(info.value, InputError) and info.value.exit_code == 3


@pytest.mark.parametrize(
    ("layer", "reason"),
    [
        (nn.Conv2d(4, 4, 3, stride=2, padding=1), "stride"),
        (nn.Conv2d(4, 6, 3, padding=1), "channels"),
        (nn.Conv2d(4, 4, 3, padding=0), "changes the size"),
        (nn.Linear(4, 3), "not square"),
    ],
)
def test_identity_refused(layer: nn.Module, reason: str) -> None:
    with pytest.raises(MergeRefused, match=reason):
        add_identity(layer)
