"""Hugging Face folders out: ``--save-pretrained DIR`` and reading such a folder back.

transformers (5.x) has no config field for per-layer head counts or feed-forward widths (head
pruning, ``pruned_heads``, was removed), so ``config.json`` alone cannot describe a pruned BERT.
The folder holds what rebuilds it exactly, two ways:

- ``config.json`` — the original config plus ``slimmer_pruned`` (the layers whose shapes and head
  counts changed) and an ``auto_map`` naming ``modeling_slimmer_pruned.py``;
- ``modeling_slimmer_pruned.py`` — a subclass of the architecture class that applies
  ``slimmer_pruned`` (:mod:`slimmer.hf_modeling`), so
  ``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` (or
  ``AutoModelForSequenceClassification``) loads the pruned model with transformers alone;
- ``model.safetensors`` — the pruned model's state_dict;
- ``slimmer_plan.json`` — the :class:`~slimmer.structures.plan.PruningPlan` that was applied;
- ``slimmer_pruned.json`` — task, per-module head counts and widths, and this note;
- the tokenizer files of the source folder, copied.

:func:`load_pruned` (and ``slimmer compress DIR``) rebuilds the model without running the folder's
code: the original class from the config, the plan's channels removed, the weights loaded
strictly. The folder is written to a temporary sibling and renamed into place, so nothing
half-written is left.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from slimmer.errors import ConfigError, InputError, OutputError

PLAN_FILE = "slimmer_plan.json"
INFO_FILE = "slimmer_pruned.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "added_tokens.json",
)
NOTE = (
    "transformers has no config field for per-layer head counts or feed-forward widths, so the folder "
    "carries modeling_slimmer_pruned.py: load it with {auto}.from_pretrained(DIR, trust_remote_code=True), "
    "or without running that code with slimmer.hf_save.load_pruned(DIR) (config.json + slimmer_plan.json + "
    "model.safetensors)"
)
AUTO_CLASSES = {"feature-extraction": "AutoModel", "sequence-classification": "AutoModelForSequenceClassification"}


def _config_with_class(model: nn.Module, source: Path, task: str) -> tuple[dict, str | None]:
    """The source's config.json plus ``slimmer_pruned`` and the ``auto_map`` of the pruned class,
    and that class's source (None when transformers does not export the architecture class)."""
    from slimmer.hf import _transformers
    from slimmer.hf_modeling import MODELING_FILE, modeling_source, pruned_sizes

    transformers = _transformers()
    raw = json.loads((source / "config.json").read_text())
    base = type(model).__name__
    if not hasattr(transformers, base):
        return raw, None
    hf_config = transformers.AutoConfig.from_pretrained(str(source), local_files_only=True)
    fresh = getattr(transformers, base)(hf_config)
    auto = AUTO_CLASSES[task]
    cls, code = modeling_source(base, auto)
    try:
        raw["slimmer_pruned"] = pruned_sizes(model, fresh)
    except ValueError as error:  # a pruned layer of a type the saved class cannot rebuild: not a bug (exit 3)
        raise InputError(
            f"--save-pretrained: {error}",
            hint="drop --save-pretrained (the ONNX file does not need it), or prune with --method unstructured",
        ) from None
    raw["auto_map"] = {auto: f"{MODELING_FILE.removesuffix('.py')}.{cls}"}
    raw["architectures"] = [cls]
    return raw, code


def _sizes(model: nn.Module) -> dict[str, dict[str, int]]:
    names = ("num_attention_heads", "n_heads", "num_heads", "all_head_size", "dim", "in_features", "out_features")
    out = {}
    for path, module in model.named_modules():
        found = {n: getattr(module, n) for n in names if isinstance(getattr(module, n, None), int)}
        if found and path:
            out[path] = found
    return out


def save_pretrained(model: nn.Module, plan: Any, source: Path, target: Path, task: str, force: bool) -> list[str]:
    """Write the pruned ``model`` as a folder (see module docstring); return notes for the report.

    Raises :class:`OutputError` when ``target`` exists and ``force`` is false or cannot be written.
    """
    from safetensors.torch import save_file

    target = Path(target)
    if target.exists() and not force:
        raise OutputError(f"{target} already exists", hint="pass --force to replace it, or choose another directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        raw, code = _config_with_class(model, source, task)
        (tmp / "config.json").write_text(json.dumps(raw, indent=2))
        if code is not None:
            from slimmer.hf_modeling import MODELING_FILE

            (tmp / MODELING_FILE).write_text(code)
        if plan is not None:
            (tmp / PLAN_FILE).write_text(plan.to_json())
        copied = [n for n in TOKENIZER_FILES if (source / n).is_file()]
        for name in copied:
            shutil.copyfile(source / name, tmp / name)
        note = NOTE.format(auto=AUTO_CLASSES[task])
        info = {"format": "slimmer-pruned-hf", "task": task, "note": note, "sizes": _sizes(model)}
        info["class"] = type(model).__name__  # the transformers class load_pruned rebuilds (T5EncoderModel)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tokenizer = f"tokenizer files copied: {', '.join(copied)}" if copied else "no tokenizer files in the source folder"
    if code is None:
        note = f"{type(model).__name__} is not a transformers class: load the folder with slimmer.hf_save.load_pruned"
    return [f"--save-pretrained {target}: {note}; {tokenizer}"]


def check_target(config: Any) -> None:
    """Before any work: ``--save-pretrained`` needs a Hugging Face folder as the model and a free target."""
    from slimmer.hf import is_folder

    if not is_folder(config.model):
        raise ConfigError(
            "--save-pretrained needs a Hugging Face model folder (config.json + weights) as the model",
            hint="give the folder itself as the model, or drop --save-pretrained",
        )
    if Path(config.save_pretrained).exists() and not config.force:
        raise OutputError(
            f"{config.save_pretrained} already exists", hint="pass --force to replace it, or choose another directory"
        )


def save_for_report(model: nn.Module, plan: Any, loaded: Any, config: Any) -> list[str]:
    """:func:`save_pretrained` with what the compress run knows; returns the report's notes."""
    arch = str(loaded.source.get("arch") or "")
    task = "sequence-classification" if "sequence-classification" in arch else "feature-extraction"
    return save_pretrained(model, plan, Path(loaded.source["path"]), config.save_pretrained, task, config.force)


def is_pruned_folder(path: Path) -> bool:
    return (Path(path) / INFO_FILE).is_file() and (Path(path) / "config.json").is_file()


def load_pruned(folder: Path, task: str | None = None) -> nn.Module:
    """Rebuild a folder written by :func:`save_pretrained`: original model, plan applied, weights loaded.

    Raises :class:`ConfigError` without transformers, :class:`InputError` when the files disagree.
    """
    from safetensors.torch import load_file

    from slimmer.graph import build_groups
    from slimmer.hf import _transformers, example_specs, model_class, read_json_object
    from slimmer.inputs import ExampleInputs
    from slimmer.structures.plan import PruningPlan
    from slimmer.surgery import remove_channels

    transformers = _transformers()
    folder = Path(folder)
    info = read_json_object(folder / INFO_FILE)
    task = task or info.get("task", "feature-extraction")
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    for key in ("auto_map", "slimmer_pruned"):  # the original class, never the folder's code
        if hasattr(config, key):
            delattr(config, key)
    config.architectures = None
    if getattr(config, "use_cache", False):  # as slimmer.hf.load_folder: no key/value cache in the graph
        config.use_cache = False
    auto = model_class(transformers, [info["class"]] if isinstance(info.get("class"), str) else None, task)
    model = auto.from_config(config).eval()
    if (folder / PLAN_FILE).is_file():
        specs, axes = example_specs(model, config)
        args = ExampleInputs.bind(model, specs, axes).args()
        plan = PruningPlan.load(folder / PLAN_FILE).bind(build_groups(model, args))
        remove_channels(model, plan)
    state = load_file(str(folder / "model.safetensors"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InputError(f"{folder}: the weights do not match config.json + {PLAN_FILE}: {str(error)[:300]}") from None
    if task not in ("feature-extraction", "sequence-classification"):
        raise ConfigError(f"unknown task {task!r}")
    return model.eval()
