"""IDX files (the MNIST layout: ``train``/``t10k`` image and label files, optionally gzipped) and
the installed Fashion-MNIST, for ``--data FOLDER`` and ``--data fashion-mnist``."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import numpy as np

from slimmer.errors import InputError

FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32, 0x0D: np.float32, 0x0E: np.float64}


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
    """``(train, test)``, each ``(images, labels or None)``: the ``train`` and ``t10k`` files of ``folder``.
    Raises :class:`InputError` when either is missing or unreadable."""
    train = _idx_pair(folder, "train")
    test = _idx_pair(folder, "t10k")
    if train is None or test is None:
        raise InputError(
            f"{folder} holds no IDX train/t10k pair (expected train-images-idx3-ubyte[.gz] and "
            "t10k-images-idx3-ubyte[.gz])"
        )
    return train, test


def has_idx(folder: Path) -> bool:
    """Whether ``folder`` holds IDX files (``*-idx1-ubyte``/``*-idx3-ubyte`` or ``*-images.idx``)."""
    return any(folder.glob("*-idx[13]-ubyte*")) or any(folder.glob("*-images.idx*"))
