"""The ``--data`` sources: ``.npz`` arrays, IDX folders (MNIST layout), image folders, ``fashion-mnist``.

Every source becomes a :class:`Dataset` of float tensors shaped like the model input (without the
batch axis), normalized with the given mean and std, plus integer labels when the source has them.
Sources with an official split (IDX ``train``/``t10k`` files, ``fashion-mnist``, an image folder with
``train/`` and ``val/`` (or ``test/``) subfolders) keep it; others hold out ``val_fraction`` of the
samples, chosen with the seed. :func:`iterate_batches` turns a dataset into an endless, seeded
stream of (optionally rank-sharded, augmented) batches for the fine-tuning loop.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slimmer.errors import ConfigError, InputError

FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
SPLIT_NAMES = (("train",), ("val", "valid", "validation", "test"))
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32, 0x0D: np.float32, 0x0E: np.float64}


@dataclass
class Dataset:
    """Inputs ``x`` (N, *input_shape[1:]) float32, normalized; labels ``y`` (N,) int64 or None."""

    x: torch.Tensor
    y: torch.Tensor | None
    source: str
    classes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class DataSplits:
    train: Dataset
    eval: Dataset


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x0000 <dtype> <ndim>, big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise InputError(f"{path} is not an IDX file (bad magic number)")
    dtype = np.dtype(IDX_DTYPES[raw[2]]).newbyteorder(">")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise InputError(f"IDX file {path} is truncated or inconsistent: header says {dims}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def find_fashion_mnist() -> Path:
    """The folder of the Debian package ``dataset-fashion-mnist``, found through its installed files."""
    candidates = list(FASHION_MNIST_DIRS)
    if shutil.which("dpkg"):
        out = subprocess.run(
            ["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True, check=False
        ).stdout
        candidates += [Path(p).parent for p in out.splitlines() if p.endswith("train-images-idx3-ubyte.gz")]
    for folder in candidates:
        if (folder / "train-images-idx3-ubyte.gz").is_file():
            return folder
    raise InputError(
        "--data fashion-mnist: the dataset is not installed",
        hint="install it with: apt-get install dataset-fashion-mnist (or pass a folder of IDX files)",
    )


def _idx_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    def find(kind: str) -> Path | None:
        for name in (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte", f"{prefix}-{kind}.idx"):
            for suffix in ("", ".gz"):
                if (folder / (name + suffix)).is_file():
                    return folder / (name + suffix)
        return None

    images, labels = find("images"), find("labels")
    if images is None:
        return None
    x = read_idx(images)
    y = read_idx(labels) if labels else None
    if y is not None and len(y) != len(x):
        raise InputError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    return x, y


def load_idx_folder(folder: Path) -> tuple[tuple[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]:
    train = _idx_pair(folder, "train")
    test = _idx_pair(folder, "t10k")
    if train is None or test is None:
        raise InputError(
            f"{folder} holds no IDX train/t10k pair (expected train-images-idx3-ubyte[.gz] and "
            "t10k-images-idx3-ubyte[.gz])"
        )
    return train, test


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Arrays ``x`` (required) and ``y`` (optional) from an ``.npz``, never unpickling objects."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise InputError(f"{path} has no array named 'x' (found: {', '.join(npz.files) or 'none'})")
            x = npz["x"]
            y = npz["y"] if "y" in npz.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if y is not None and len(y) != len(x):
        raise InputError(f"{path}: 'x' has {len(x)} samples but 'y' has {len(y)}")
    if x.dtype == object or (y is not None and y.dtype == object):
        raise InputError(f"{path}: object arrays are not accepted")
    return x, y


def to_model_input(
    x: np.ndarray, input_shape: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...], source: str
) -> torch.Tensor:
    """uint8 or float images (N,H,W) / (N,H,W,C) / (N,C,H,W) → normalized float (N, *input_shape[1:])."""
    want = tuple(input_shape[1:])
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    else:
        t = t.float()
    if len(want) == 3:
        c, h, w = want
        if t.ndim == 3:
            t = t.unsqueeze(1)
        elif t.ndim == 4 and t.shape[1] != c and t.shape[-1] == c:
            t = t.permute(0, 3, 1, 2)
        if t.ndim != 4:
            raise InputError(f"{source}: samples of shape {tuple(x.shape[1:])} cannot feed input shape {want}")
        if t.shape[1] == 1 and c == 3:
            t = t.expand(-1, 3, -1, -1)
        if t.shape[1] != c:
            raise InputError(f"{source}: samples have {t.shape[1]} channels, the model expects {c}")
        if tuple(t.shape[2:]) != (h, w):
            t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    elif tuple(t.shape[1:]) != want:
        raise InputError(f"{source}: samples of shape {tuple(t.shape[1:])} do not match input shape {want}")
    m = torch.tensor(mean, dtype=torch.float32)
    s = torch.tensor(std, dtype=torch.float32)
    if len(want) == 3:
        m, s = m.view(-1, 1, 1), s.view(-1, 1, 1)
    return ((t - m) / s).contiguous()


def _labels(y: np.ndarray | None) -> torch.Tensor | None:
    return None if y is None else torch.from_numpy(y.astype(np.int64))


def load_data(
    spec: str,
    input_shape: tuple[int, ...],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
) -> DataSplits:
    """Resolve a ``--data`` value into train and evaluation splits."""
    if not 0 < val_fraction <= 1:
        raise ConfigError(f"--val-fraction must be in (0, 1], got {val_fraction!r}")
    if spec == "fashion-mnist":
        folder = find_fashion_mnist()
        (xtr, ytr), (xte, yte) = load_idx_folder(folder)
        src = f"fashion-mnist ({folder})"
    else:
        path = Path(spec)
        if not path.exists():
            raise InputError(f"--data {spec}: no such file or folder")
        if path.is_dir():
            (xtr, ytr), (xte, yte) = load_idx_folder(path)
            src = str(path)
        elif path.suffix == ".npz":
            x, y = load_npz(path)
            if len(x) < 1:
                raise InputError(f"{path}: the array 'x' holds no samples")
            n_eval = min(len(x), max(1, int(round(len(x) * val_fraction))))
            order = np.random.default_rng(seed).permutation(len(x))
            ev, tr = order[:n_eval], order[n_eval:]
            xtr, xte = x[tr], x[ev]
            ytr, yte = (y[tr], y[ev]) if y is not None else (None, None)
            src = str(path)
        else:
            raise ConfigError(
                f"--data {spec}: unsupported data source",
                hint="give a .npz with arrays x (and y), a folder of IDX files, or 'fashion-mnist'",
            )
    return DataSplits(
        train=Dataset(to_model_input(xtr, input_shape, mean, std, src), _labels(ytr), src),
        eval=Dataset(to_model_input(xte, input_shape, mean, std, src), _labels(yte), src),
    )
