"""N:M masks: the pattern along the input dimension, skipped layers, parsing, metadata, file size."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from torch import nn

from slimmer.errors import ConfigError
from slimmer.structures.nm import (
    check_nm,
    compressed_size,
    nm_mask,
    nm_masks,
    nm_metadata,
    parse_nm,
)

PATTERNS = [(2, 4), (1, 4), (4, 8)]


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)  # 3 inputs: skipped
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=2)  # 8 inputs per group
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # 1 input per group: skipped
        self.fc = nn.Linear(16, 24)
        self.head = nn.Linear(24, 10)
        self.odd = nn.Linear(10, 3)  # 10 inputs: skipped for M = 4 and 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(self.grouped(self.conv(self.stem(x))))
        return self.odd(self.head(self.fc(x.mean((2, 3)))))


def input_groups(t: torch.Tensor, m: int) -> torch.Tensor:
    """[..., M] groups of consecutive weights along the input axis (axis 1), NHWC order."""
    moved = t.movedim(1, -1)
    return moved.reshape(-1, moved.shape[-1] // m, m)


@pytest.mark.parametrize(("n", "m"), PATTERNS)
def test_every_group_keeps_exactly_n_largest(n: int, m: int) -> None:
    torch.manual_seed(0)
    model = Mixed()
    result = nm_masks(model, n, m)
    expected = {"conv.weight", "grouped.weight", "fc.weight", "head.weight"}
    assert set(result.masks.masks) == expected
    params = dict(model.named_parameters())
    for name, mask in result.masks.masks.items():
        assert mask.shape == params[name].shape and mask.dtype == torch.bool
        keep = input_groups(mask, m)
        assert (keep.sum(-1) == n).all(), name
        mag = input_groups(params[name].detach().abs(), m)
        kept_min = torch.where(keep, mag, torch.inf).amin(-1)
        pruned_max = torch.where(~keep, mag, -torch.inf).amax(-1)
        assert (kept_min >= pruned_max).all(), name
    assert result.masks.sparsity == pytest.approx(1 - n / m)
    result.masks.apply(model)
    for name in expected:
        w = params[name].detach()
        assert (input_groups(w != 0, m).sum(-1) <= n).all()
        assert check_nm(w.numpy(), n, m, "OI")
        assert check_nm(w.movedim(1, 0).numpy(), n, m, "IO")
        assert check_nm(w.movedim(1, 0).numpy(), n, m, 0)


@pytest.mark.parametrize(("n", "m"), PATTERNS)
def test_skipped_layers_carry_reasons(n: int, m: int) -> None:
    result = nm_masks(Mixed(), n, m)
    assert set(result.skipped) == {"stem", "depthwise", "odd"}
    assert "3 is not a multiple of M" in result.skipped["stem"]
    assert "groups 16" in result.skipped["depthwise"]
    assert "in_features = 10" in result.skipped["odd"]
    assert "odd.weight" not in result.masks.masks


def test_exclude_and_transposed_conv() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ConvTranspose2d(8, 8, 2), nn.Linear(8, 8))
    result = nm_masks(model, 2, 4, exclude=("0",))
    assert list(result.masks.masks) == ["2.weight"]
    assert "transposed" in result.skipped["1"]


def test_conv_groups_run_along_input_channels_nhwc() -> None:
    # one output channel, 4 input channels, 1x2 kernel: groups are the 4 channels of one tap
    w = torch.tensor([[[[1.0, 9.0]], [[2.0, 8.0]], [[3.0, 7.0]], [[4.0, 6.0]]]])
    mask = nm_mask(w, 2, 4)
    assert mask[0, :, 0, 0].tolist() == [False, False, True, True]
    assert mask[0, :, 0, 1].tolist() == [True, True, False, False]


def test_ties_keep_exactly_n() -> None:
    mask = nm_mask(torch.zeros(2, 8), 2, 4)
    assert mask.sum().item() == 2 * 2 * 2


def test_check_nm_rejects_dense_and_bad_shapes() -> None:
    dense = np.ones((4, 8), dtype=np.float32)
    assert not check_nm(dense, 2, 4)
    assert not check_nm(np.ones((4, 6)), 2, 4)
    with pytest.raises(ConfigError):
        check_nm(dense, 2, 4, "HW")


@pytest.mark.parametrize(("spec", "expected"), [("2:4", (2, 4)), (" 1 : 4 ", (1, 4)), ("4:8", (4, 8))])
def test_parse_nm(spec: str, expected: tuple[int, int]) -> None:
    assert parse_nm(spec) == expected


@pytest.mark.parametrize("spec", ["4:4", "5:4", "0:4", "2", "2:", "a:b", "", "2:4:8", "-1:4", "2.0:4"])
def test_parse_nm_errors(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_nm(spec)
    assert info.value.exit_code == 2
    assert repr(spec) in str(info.value)


def test_nm_masks_validates_pattern() -> None:
    with pytest.raises(ConfigError):
        nm_masks(Mixed(), 4, 4)


def test_metadata_and_compressed_size(tmp_path) -> None:
    meta = nm_metadata(2, 4, ["b.weight", "a.weight"])
    assert meta["slimmer.sparsity.pattern"] == "2:4"
    assert meta["slimmer.sparsity.layers"] == '["a.weight", "b.weight"]'
    assert all(isinstance(v, str) for v in meta.values())
    data = np.random.default_rng(0).integers(0, 4, 300_000, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert compressed_size(path) == compressed_size(path, chunk=4096) == len(zlib.compress(data, 6))
