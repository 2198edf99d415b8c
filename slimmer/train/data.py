"""The ``--data`` sources: ``.npz`` arrays, IDX folders (MNIST layout), image folders, ``fashion-mnist``.

Every source becomes a :class:`Dataset` of float tensors shaped like the model input (without the
batch axis), normalized with the given mean and std, plus integer labels when the source has them.
Sources with an official split (IDX ``train``/``t10k`` files, ``fashion-mnist``, an image folder with
``train/`` and ``val/`` (or ``test/``) subfolders) keep it; others hold out ``val_fraction`` of the
samples, chosen with the seed. :func:`iterate_batches` turns a dataset into an endless, seeded
stream of (optionally rank-sharded, augmented) batches for the fine-tuning loop.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from PIL import Image

from slimmer.errors import ConfigError, InputError
from slimmer.train.idx import find_fashion_mnist, has_idx, load_idx_folder

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
SPLIT_NAMES = (("train",), ("val", "valid", "validation", "test"))


@dataclass
class Dataset:
    """Inputs ``x`` (N, *input_shape[1:]) float32, normalized; labels ``y`` (N,) int64 or None."""

    x: torch.Tensor
    y: torch.Tensor | None
    source: str
    classes: tuple[str, ...] | None = None
    feed: Callable[[torch.Tensor], tuple] | None = field(default=None, compare=False, repr=False)
    """How a batch of ``x`` becomes ``forward``'s positional arguments; None: ``(x,)``. Text data
    (:mod:`slimmer.train.text`) packs token ids, attention mask and token types in one tensor."""

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def args(self, x: torch.Tensor) -> tuple:
        """The positional arguments of ``forward`` for a batch ``x`` of this dataset."""
        return (x,) if self.feed is None else self.feed(x)


@dataclass
class DataSplits:
    """The training and evaluation splits. ``official_split`` is True when the evaluation split is
    the source's own (IDX ``t10k`` files, ``fashion-mnist``, an image folder's ``val/``/``test/``),
    False when it was held out of the training samples with ``val_fraction``."""

    train: Dataset
    eval: Dataset
    official_split: bool = False


HELD_OUT_EVAL_SAMPLES = 2000  # the default evaluation size on a held-out split (--eval-samples overrides)


def eval_count(splits: DataSplits, requested: int | None) -> int:
    """How many evaluation samples accuracy is measured on (the first ones of ``splits.eval``).

    An explicit ``requested`` (``--eval-samples``) wins, capped at the split's size. Without it an
    official test split is evaluated whole, so the figure is the one the split's users quote; a
    split held out of the training samples is capped at :data:`HELD_OUT_EVAL_SAMPLES`.
    """
    n = len(splits.eval)
    if requested is not None:
        return min(n, requested)
    return n if splits.official_split else min(n, HELD_OUT_EVAL_SAMPLES)


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
    if y is not None:
        _check_class_ids(y, path)
    return x, y


def _check_class_ids(y: np.ndarray, path: Path) -> None:
    """Labels are one integer class id per sample: shape (N,), integer values. Raises :class:`InputError`."""
    if y.ndim != 1:
        hint = "; one-hot or soft labels: save y.argmax(1)" if y.ndim == 2 else ""
        raise InputError(
            f"{path}: 'y' has shape {tuple(y.shape)}; labels must be one class id per sample, shape (N,){hint}"
        )
    if y.dtype.kind not in "biuf":
        raise InputError(f"{path}: 'y' has dtype {y.dtype}; labels must be integer class ids")
    if y.dtype.kind == "f" and not bool(np.all(np.isfinite(y) & (y == np.round(y)))):
        raise InputError(f"{path}: 'y' holds values that are not whole numbers; labels must be integer class ids")


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


def _image_channels(img: Image.Image, path: Path) -> tuple[Image.Image, int]:
    """Convert to ``L`` or ``RGB``; modes with alpha or more than 8 bits are refused, never flattened."""
    if img.mode in ("1", "L"):
        return img.convert("L"), 1
    if img.mode in ("RGB", "CMYK", "YCbCr") or (img.mode == "P" and "transparency" not in img.info):
        return img.convert("RGB"), 3
    raise InputError(
        f"{path}: image mode {img.mode} is not supported (expected 8-bit grayscale or RGB without alpha)",
        hint="convert the images to grayscale or RGB PNG/JPEG",
    )


def read_image(path: Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One image as uint8 (C, H, W), resized to ``size`` = (H, W) with bilinear filtering.

    A grayscale image feeds a 3-channel model by repeating its channel; a colour image never feeds
    a 1-channel model (that would drop information silently).
    """
    from PIL import Image  # only image folders need Pillow; keep it off the import path of the CLI

    try:
        with Image.open(path) as raw:
            raw.load()
            img, have = _image_channels(raw, path)
            h, w = size
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot decode image {path}: {exc}") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if have == channels:
        return arr
    if have == 1 and channels == 3:
        return np.repeat(arr, 3, axis=0)
    raise InputError(f"{path}: the image has {have} channel(s), the model expects {channels}")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def load_image_classes(
    folder: Path, input_shape: tuple[int, ...], classes: tuple[str, ...] | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images under ``folder/<class>/``: uint8 (N, C, H, W), labels by sorted class name, class names.

    ``classes`` fixes the label order (an evaluation split uses the training split's classes).
    Files whose suffix is not an image suffix are skipped; an empty class folder is an error, since
    it would silently shift every label after it.
    """
    if len(input_shape) != 4:
        raise InputError(f"{folder}: an image folder needs an image input shape (N,C,H,W), got {input_shape}")
    channels, size = int(input_shape[1]), (int(input_shape[2]), int(input_shape[3]))
    dirs = _class_dirs(folder)
    if not dirs:
        raise InputError(f"{folder} has no class subfolders (expected {folder}/<class>/<image>.png)")
    names = tuple(d.name for d in dirs)
    label_of = {c: i for i, c in enumerate(classes if classes is not None else names)}
    images: list[np.ndarray] = []
    labels: list[int] = []
    for d in dirs:
        if d.name not in label_of:
            raise InputError(f"{d}: class {d.name!r} is not among the training classes {list(label_of)}")
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"class folder {d} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for f in files:
            images.append(read_image(f, channels, size))
            labels.append(label_of[d.name])
    return np.stack(images), np.asarray(labels, dtype=np.int64), tuple(label_of)


def _split_folders(folder: Path) -> tuple[Path, Path | None] | None:
    """``(train, eval)`` for a ``train/`` + ``val/``/``test/`` layout, ``(train, None)`` for a lone
    ``train/`` of class folders, None when ``folder`` itself holds the class folders."""
    train = folder / "train"
    if not (train.is_dir() and _class_dirs(train)):
        return None
    for name in SPLIT_NAMES[1]:
        if (folder / name).is_dir():
            return train, folder / name
    return train, None


def _holdout(
    x: np.ndarray, y: np.ndarray | None, val_fraction: float, seed: int, source: str
) -> tuple[tuple[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]:
    """Hold out ``val_fraction`` of the samples (at least one), chosen with ``seed``."""
    if len(x) < 1:
        raise InputError(f"{source} holds no samples")
    n_eval = min(len(x), max(1, int(round(len(x) * val_fraction))))
    order = np.random.default_rng(seed).permutation(len(x))
    ev, tr = order[:n_eval], order[n_eval:]
    return (x[tr], y[tr] if y is not None else None), (x[ev], y[ev] if y is not None else None)


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def pad_crop_flip(pad: int = 4, flip: bool = True) -> Augment:
    """The CIFAR-style augmentation (He et al. 2016): pad by ``pad``, random crop back, random
    horizontal flip. Pads with the batch minimum, i.e. black for normalized images."""

    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if x.ndim != 4:
            return x
        n, _, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad), value=float(x.min()))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
        out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
        if flip:
            mirror = torch.rand(n, generator=gen) < 0.5
            out[mirror] = out[mirror].flip(-1)
        return out

    return augment


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    *,
    shuffle: bool = True,
    drop_last: bool = True,
    augment: Augment | None = None,
    rank: int = 0,
    world_size: int = 1,
    epochs: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(x, y)`` batches, forever unless ``epochs`` is given; epoch ``e`` is shuffled with ``seed + e``.

    With ``world_size`` > 1 every rank draws the same permutation and takes its own interleaved
    shard (the tail that does not divide evenly is dropped, as ``DistributedSampler`` pads it), so
    ranks see disjoint samples and the same number of batches. ``augment`` gets a generator seeded
    from ``seed`` and ``rank``: runs are reproducible and ranks augment differently.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be ≥ 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not valid for a world of {world_size} process(es)")
    n = len(dataset)
    per_rank = n // world_size
    if per_rank == 0:
        raise InputError(f"{dataset.source}: {n} sample(s) cannot feed {world_size} process(es)")
    if drop_last and per_rank < batch_size:
        raise ConfigError(
            f"batch size {batch_size} is larger than the {per_rank} training samples per process",
            hint="pass a smaller --batch-size or more data",
        )
    aug_gen = torch.Generator().manual_seed(seed * 7919 + rank + 1)
    epoch = 0
    while epochs is None or epoch < epochs:
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        else:
            order = torch.arange(n)
        if world_size > 1:
            order = order[: per_rank * world_size][rank::world_size]
        for start in range(0, per_rank, batch_size):
            idx = order[start : start + batch_size]
            if drop_last and len(idx) < batch_size:
                break
            x = dataset.x[idx]
            if augment is not None:
                x = augment(x, aug_gen)
            yield x, (dataset.y[idx] if dataset.y is not None else None)
        epoch += 1


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
    classes: tuple[str, ...] | None = None
    official = True  # set to False where the evaluation split is held out of the training samples
    if spec == "fashion-mnist":
        folder = find_fashion_mnist()
        (xtr, ytr), (xte, yte) = load_idx_folder(folder)
        src = f"fashion-mnist ({folder})"
    else:
        path = Path(spec)
        src = str(path)
        if not path.exists():
            raise InputError(f"--data {spec}: no such file or folder")
        if path.is_dir() and has_idx(path):
            (xtr, ytr), (xte, yte) = load_idx_folder(path)
        elif path.is_dir():
            split = _split_folders(path)
            if split is not None and split[1] is not None:
                xtr, ytr, classes = load_image_classes(split[0], input_shape)
                xte, yte, _ = load_image_classes(split[1], input_shape, classes)
            else:
                x, y, classes = load_image_classes(split[0] if split else path, input_shape)
                (xtr, ytr), (xte, yte) = _holdout(x, y, val_fraction, seed, src)
                official = False
        elif path.suffix == ".npz":
            x, y = load_npz(path)
            (xtr, ytr), (xte, yte) = _holdout(x, y, val_fraction, seed, f"{path}: the array 'x'")
            official = False
        else:
            raise ConfigError(
                f"--data {spec}: unsupported data source",
                hint="give a .npz with arrays x (and y), a folder of IDX files, a folder of class "
                "subfolders of images, or 'fashion-mnist'",
            )
    return DataSplits(
        train=Dataset(to_model_input(xtr, input_shape, mean, std, src), _labels(ytr), src, classes),
        eval=Dataset(to_model_input(xte, input_shape, mean, std, src), _labels(yte), src, classes),
        official_split=official,
    )
