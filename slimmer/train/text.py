"""Text ``--data`` for Hugging Face folders: ``.txt`` (one text per line) or ``.jsonl`` (one JSON
object per line with a ``text`` string and, optionally, an integer ``label``).

The texts are tokenized with the model folder's own tokenizer (``AutoTokenizer``, local files
only), truncated to ``--max-length`` tokens and padded to the longest text. A sample is stored as
one int64 row (K, L) holding the model's token inputs in ``forward`` order (``input_ids``,
``attention_mask``, ``token_type_ids`` — types the tokenizer does not give are zeros), so the
training loop, the data criteria and the evaluation keep batching one tensor; :class:`TextFeed`
turns a batch (B, K, L) back into ``forward``'s positional arguments, cut to the longest text of
the batch (trailing padding changes nothing under the attention mask). ``val_fraction`` of the
texts (at least one) is held out, chosen with the seed, for the report's embedding cosine and
accuracy.

Every fault of the file or the folder is a :class:`~slimmer.errors.ConfigError` (exit 2) naming
the file, the line and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from slimmer.errors import ConfigError

if TYPE_CHECKING:
    from slimmer.inputs import ExampleInputs
    from slimmer.train.data import DataSplits

TEXT_SUFFIXES = (".txt", ".jsonl")
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_MAX_LENGTH = 128


def is_text_source(spec: str | None) -> bool:
    """Whether a ``--data`` value names a text file (by its suffix)."""
    return spec is not None and Path(spec).suffix.lower() in TEXT_SUFFIXES


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise ConfigError(f"--data {path}: no such file", hint="give a .txt (one text per line) or a .jsonl file")
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"--data {path}: not UTF-8 text (byte {exc.start} cannot be decoded)",
            hint="convert the file to UTF-8",
        ) from None
    except OSError as exc:
        raise ConfigError(f"--data {path}: cannot read it ({exc.strerror or exc})") from None
    return [(n, line.strip()) for n, line in enumerate(raw.splitlines(), 1) if line.strip()]


def read_texts(path: Path) -> tuple[list[str], list[int] | None]:
    """The texts of a ``.txt`` / ``.jsonl`` file and its labels (None when it has none).

    Blank lines are skipped. In a ``.jsonl`` file every line is an object with a non-empty string
    ``text``; ``label`` (a non-negative integer) is on every line or on none. Raises
    :class:`ConfigError` naming the first bad line.
    """
    path = Path(path)
    lines = _lines(path)
    if not lines:
        raise ConfigError(f"--data {path}: the file holds no text", hint="one text per line (.txt) or JSON lines")
    if path.suffix.lower() == ".txt":
        return [line for _, line in lines], None
    texts: list[str] = []
    labels: list[int | None] = []
    for number, line in lines:
        where = f"--data {path}, line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = 'each line is {"text": "...", "label": 0}'
            raise ConfigError(f"{where}: not JSON ({exc.msg})", hint=hint) from None
        text = obj.get("text") if isinstance(obj, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: no non-empty string field 'text'", hint='each line is {"text": "..."}')
        label = obj.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, int) or label < 0):
            raise ConfigError(f"{where}: 'label' must be a non-negative integer, got {label!r}")
        texts.append(text)
        labels.append(label)
    given = [lab is not None for lab in labels]
    if any(given) and not all(given):
        first = next(n for (n, _), g in zip(lines, given, strict=True) if not g)
        raise ConfigError(f"--data {path}, line {first}: no 'label', while other lines have one")
    return texts, ([int(lab) for lab in labels] if all(given) else None)  # type: ignore[arg-type]


def load_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer (local files only). Raises :class:`ConfigError` when there is none."""
    from slimmer.hf import _transformers
    from slimmer.hf_save import TOKENIZER_FILES

    transformers = _transformers()
    folder = Path(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES if name != "tokenizer_config.json"):
        raise ConfigError(
            f"text --data needs the tokenizer of {folder}, which holds no tokenizer files",
            hint="put the tokenizer files (tokenizer.json, or vocab.txt + tokenizer_config.json) in the model folder",
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(
            f"text --data needs the tokenizer of {folder}, which cannot be loaded: {str(exc).splitlines()[0][:200]}",
            hint="put the tokenizer files (tokenizer.json or vocab.txt + tokenizer_config.json) in the model folder",
        ) from None
    if tokenizer is None or not callable(tokenizer):
        raise ConfigError(f"text --data: {folder} holds no tokenizer", hint="add tokenizer.json to the folder")
    return tokenizer


class TextFeed:
    """A packed text batch (B, K, L) int64 → ``forward``'s positional arguments.

    ``slots`` are the bound ``forward`` parameters (None for one not given, passed as None),
    ``names`` the K packed inputs in order. The batch is cut to its longest text.
    """

    def __init__(self, slots: tuple[str | None, ...], names: tuple[str, ...]) -> None:
        self.slots = slots
        self.names = names
        self.mask_index = names.index("attention_mask") if "attention_mask" in names else None

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The attention mask (B, L) of a packed batch (ones where the model has no mask input)."""
        if self.mask_index is None:
            return torch.ones_like(x[:, 0])
        return x[:, self.mask_index]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        length = max(1, int(self.mask(x).sum(1).max()))
        x = x[..., :length]
        by_name = {n: x[:, i] for i, n in enumerate(self.names)}
        return tuple(by_name[s] if s is not None else None for s in self.slots)


def tokenize(tokenizer: Any, texts: list[str], names: tuple[str, ...], max_length: int) -> torch.Tensor:
    """Texts → packed int64 (N, K, L), L the longest text after truncation to ``max_length`` tokens."""
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    ids = enc["input_ids"]
    columns = []
    for name in names:
        if name in enc:
            columns.append(enc[name].to(torch.int64))
        elif name == "attention_mask":
            columns.append(torch.ones_like(ids, dtype=torch.int64))
        else:
            columns.append(torch.zeros_like(ids, dtype=torch.int64))
    return torch.stack(columns, dim=1).contiguous()


def load_text_data(
    spec: str, folder: Path, inputs: ExampleInputs, *, max_length: int, seed: int, val_fraction: float
) -> DataSplits:
    """Read, tokenize and split a text ``--data`` file for the model of ``folder`` (see module docstring).

    Raises :class:`ConfigError` for a model without token inputs, a file or tokenizer fault, or a
    ``max_length`` beyond the model's positions.
    """
    from slimmer.train.data import Dataset, DataSplits

    names = tuple(inputs.names)
    if "input_ids" not in names or any(n not in TOKEN_INPUTS for n in names):
        raise ConfigError(
            f"text --data {spec} feeds token ids, but the model takes {', '.join(names)}",
            hint="give a text model's Hugging Face folder, or image / array data",
        )
    if not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"--max-length must be an integer ≥ 2, got {max_length!r}")
    texts, labels = read_texts(Path(spec))
    tokenizer = load_tokenizer(folder)
    x = tokenize(tokenizer, texts, names, max_length)
    ids = inputs.specs[names.index("input_ids")]
    if ids.high is not None and int(x[:, 0].max()) > ids.high:
        raise ConfigError(
            f"the tokenizer of {folder} gives token id {int(x[:, 0].max())}, beyond the model's vocabulary "
            f"(0..{int(ids.high)})",
            hint="the tokenizer files and config.json of the folder do not belong together",
        )
    y = torch.tensor(labels, dtype=torch.int64) if labels is not None else None
    n_eval = min(len(texts) - 1, max(1, int(round(len(texts) * val_fraction))))
    if n_eval < 1:
        raise ConfigError(f"--data {spec}: {len(texts)} text(s); at least 2 are needed (training and held out)")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(texts)))
    held, train = order[:n_eval], order[n_eval:]
    feed = TextFeed(inputs.slots, names)
    source = f"{spec} ({len(texts)} texts, ≤ {x.shape[-1]} tokens)"

    def part(idx: torch.Tensor) -> Dataset:
        return Dataset(x[idx], y[idx] if y is not None else None, source, feed=feed)

    return DataSplits(train=part(train), eval=part(held))
