"""The data stage: ``--data`` read and split into training and evaluation samples for the loaded model.

Images (``.npz``, IDX folders, class folders, ``fashion-mnist``) feed a model with one float input,
normalized with ``--mean``/``--std`` or the architecture's; text (``.txt``, ``.jsonl``) is tokenized with
a Hugging Face folder's tokenizer (:mod:`slimmer.train.text`). Nothing here prints or exits.
"""

from __future__ import annotations

from pathlib import Path

from slimmer.config import CompressConfig
from slimmer.errors import ConfigError, InputError
from slimmer.stages import Loaded
from slimmer.train.data import DataSplits, load_data


def read_data(config: CompressConfig, loaded: Loaded) -> DataSplits | None:
    """``--data`` for a one-input model (images normalized with ``--mean``/``--std`` or the
    architecture's). Raises :class:`ConfigError` for a model with other inputs, :class:`InputError`
    when ``--finetune-steps`` asks for training and no sample is left to train on."""
    if config.data is None:
        return None
    data = _read_data(config, loaded)
    if config.finetune_steps > 0 and not len(data.train):
        raise InputError(
            f"--data {config.data}: no sample is left to fine-tune on ({len(data.eval)} held out for evaluation)",
            hint="give more samples, or a smaller --val-fraction, or drop --finetune-steps",
        )
    return data


def _read_data(config: CompressConfig, loaded: Loaded) -> DataSplits:
    from slimmer.train.text import is_text_source

    if is_text_source(config.data):  # .txt / .jsonl, tokenized with the model folder's tokenizer
        return _read_text(config, loaded)
    if not loaded.inputs.single_float:
        raise ConfigError(
            "--data feeds one float tensor per sample; this model takes "
            + ", ".join(s.describe() for s in loaded.inputs.specs),
            hint="drop --data (fine-tuning and accuracy need a model with one float input)",
        )
    from slimmer.sources import check_normalization

    check_normalization(config.mean, config.std, loaded.inputs.first.shape)
    mean = config.mean or loaded.mean or (0.0,)
    std = config.std or loaded.std or (1.0,)
    return load_data(
        config.data, loaded.inputs.first.shape, mean, std, seed=config.seed, val_fraction=config.val_fraction
    )


def _read_text(config: CompressConfig, loaded: Loaded) -> DataSplits:
    """Text ``--data`` for a Hugging Face folder (:mod:`slimmer.train.text`). Raises :class:`ConfigError`
    for a model that is not a folder with a tokenizer or a ``--max-length`` beyond its positions."""
    from slimmer.hf import is_folder
    from slimmer.train.text import DEFAULT_MAX_LENGTH, load_text_data

    folder = Path(str(loaded.source.get("path") or ""))
    if not is_folder(folder):
        raise ConfigError(
            f"text --data {config.data} is tokenized with the model folder's tokenizer; the model is not a "
            "Hugging Face folder",
            hint="give the model as its Hugging Face folder (config.json, weights and tokenizer files)",
        )
    positions = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    length = config.max_length or min(DEFAULT_MAX_LENGTH, positions if isinstance(positions, int) else 10**9)
    if isinstance(positions, int) and length > positions:
        raise ConfigError(f"--max-length {length}: the model has {positions} positions", hint=f"use ≤ {positions}")
    return load_text_data(
        config.data,
        folder,
        loaded.inputs,
        max_length=length,
        seed=config.seed,
        val_fraction=config.val_fraction,
    )
