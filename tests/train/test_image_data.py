"""Image-folder data (Pillow) and the seeded, rank-sharded batch iterator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slimmer.errors import ConfigError, InputError
from slimmer.train.data import Dataset, iterate_batches, load_data, pad_crop_flip


def write_png(path: Path, value: int, size=(10, 12), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = value if mode == "L" else (value, value, value)
    Image.new(mode, size, fill).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for cls, value in (("cat", 0), ("dog", 255), ("ant", 128)):
        for i in range(4):
            write_png(root / cls / f"{i}.png", value)
    (root / "README.txt").write_text("not an image")
    return root


def test_image_folder_loads_labels_from_sorted_subfolders(folder):
    splits = load_data(str(folder), (1, 1, 28, 28), (0.0,), (1.0,), val_fraction=0.25)
    assert splits.train.classes == ("ant", "cat", "dog")
    assert len(splits.train) == 9 and len(splits.eval) == 3
    assert tuple(splits.train.x.shape[1:]) == (1, 28, 28)
    x = torch.cat([splits.train.x, splits.eval.x])
    y = torch.cat([splits.train.y, splits.eval.y])
    expected = {0: 128 / 255, 1: 0.0, 2: 1.0}  # ant, cat, dog
    for xi, yi in zip(x, y, strict=True):
        assert torch.allclose(xi, torch.full_like(xi, expected[int(yi)]), atol=1e-6)


def test_grayscale_feeds_rgb_model_and_train_val_layout_keeps_split(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                write_png(tmp_path / split / cls / f"{i}.png", 200)
    splits = load_data(str(tmp_path), (1, 3, 8, 8), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert len(splits.train) == 6 and len(splits.eval) == 4
    assert tuple(splits.eval.x.shape) == (4, 3, 8, 8)
    assert splits.eval.y.tolist() == [0, 0, 1, 1]


def test_corrupt_image_is_an_input_error_naming_the_file(folder):
    bad = folder / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    with pytest.raises(InputError, match="broken.png"):
        load_data(str(folder), (1, 1, 28, 28), (0.0,), (1.0,))


def test_colour_image_for_a_grayscale_model_is_an_input_error(folder):
    write_png(folder / "cat" / "colour.png", 10, mode="RGB")
    with pytest.raises(InputError, match=r"colour.png.*3 channel"):
        load_data(str(folder), (1, 1, 28, 28), (0.0,), (1.0,))


def test_alpha_image_and_empty_class_are_input_errors(tmp_path):
    write_png(tmp_path / "a" / "0.png", 1)
    Image.new("RGBA", (4, 4)).save(tmp_path / "a" / "alpha.png")
    with pytest.raises(InputError, match="alpha.png.*RGBA"):
        load_data(str(tmp_path), (1, 3, 8, 8), (0.0,), (1.0,))
    (tmp_path / "a" / "alpha.png").unlink()
    (tmp_path / "b").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        load_data(str(tmp_path), (1, 3, 8, 8), (0.0,), (1.0,))


def _data(n: int = 10) -> Dataset:
    return Dataset(x=torch.arange(n, dtype=torch.float32).view(n, 1), y=torch.arange(n), source="t")


def test_iterate_batches_is_seeded_endless_and_reshuffles_each_epoch():
    a = iterate_batches(_data(), 5, seed=3)
    b = iterate_batches(_data(), 5, seed=3)
    first = [next(a)[1].tolist() for _ in range(6)]
    assert first == [next(b)[1].tolist() for _ in range(6)]
    epochs = [sorted(first[i] + first[i + 1]) for i in (0, 2, 4)]
    assert all(e == list(range(10)) for e in epochs)
    assert first[0] + first[1] != first[2] + first[3]
    ordered = list(iterate_batches(_data(), 4, seed=0, shuffle=False, drop_last=False, epochs=1))
    assert [y.tolist() for _, y in ordered] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ConfigError, match="batch size"):
        next(iterate_batches(_data(), 11, seed=0))


def test_rank_shards_are_disjoint_and_equal():
    shards = [list(iterate_batches(_data(11), 5, seed=1, rank=r, world_size=2, epochs=1)) for r in (0, 1)]
    ys = [torch.cat([y for _, y in s]).tolist() for s in shards]
    assert len(ys[0]) == len(ys[1]) == 5 and not set(ys[0]) & set(ys[1])


def test_pad_crop_flip_keeps_shape_and_is_seeded():
    x = torch.randn(6, 1, 8, 8)
    aug = pad_crop_flip(2)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert np.isfinite(a.numpy()).all()


def _idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_a_folder_holding_idx_files_stays_the_idx_source(tmp_path):
    for prefix, n in (("train", 6), ("t10k", 2)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.full((n, 28, 28), 7))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 3)
    (tmp_path / "extra").mkdir()  # a subfolder does not turn it into an image folder
    splits = load_data(str(tmp_path), (1, 1, 28, 28), (0.0,), (1.0,))
    assert len(splits.train) == 6 and len(splits.eval) == 2 and splits.train.classes is None
