"""Hugging Face model folders in: ``slimmer compress path/to/folder`` (config.json + weights).

The model is built from ``config.json`` with transformers' Auto classes (``--task``:
``feature-extraction`` → ``AutoModel``, ``sequence-classification`` →
``AutoModelForSequenceClassification``; the default is sequence-classification when the config
names a ``*ForSequenceClassification`` architecture, else feature-extraction; for feature extraction
the base class the config names, such as ``T5EncoderModel``, when transformers has it). Remote code
(``auto_map`` in the config) is never run unless ``--trust-remote-code``.

Weights are read by slimmer itself, like any checkpoint: ``model.safetensors`` as tensors only,
``pytorch_model.bin`` after the pickle scan of :mod:`slimmer.checkpoint` (refused when it would
run code). Keys are matched exactly, up to the base-model prefix (``bert.``) a task head adds;
the one mismatch accepted is ``position_ids``, a non-persistent buffer that older transformers
versions saved and newer ones rebuild, which is noted in the report. When the keys do not match
because transformers renames them on load (transformers ≥ 5 keeps a model's checkpoint names on disk,
e.g. ViT), the checked file is loaded by transformers' ``from_pretrained`` with its checkpoint
conversion instead; a weight still missing, unexpected or of another shape refuses the folder.

The example inputs come from the forward signature and the config, so no ``--input`` is needed:
``input_ids`` int64 in ``[0, vocab_size)``, ``attention_mask`` of ones and ``token_type_ids`` of
zeros when forward takes them, shape (1, L) with L = min(128, max_position_embeddings), batch and
sequence dynamic; or ``pixel_values`` float32 (1, C, H, W) for an image model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimmer.errors import ConfigError, InputError

if TYPE_CHECKING:
    from slimmer.config import CompressConfig
    from slimmer.stages import Loaded

TASKS = ("feature-extraction", "sequence-classification")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
KNOWN_BUFFERS = ("position_ids",)
"""Non-persistent buffers older transformers versions saved; accepted when present and unused."""
DEFAULT_LENGTH = 128
INSTALL_HINT = 'pip install "slimmer[hf]"'


def is_folder(path: Path | None) -> bool:
    """Whether ``path`` is a Hugging Face model folder (config.json and a weights file)."""
    return (
        path is not None
        and Path(path).is_dir()
        and (Path(path) / "config.json").is_file()
        and any((Path(path) / name).is_file() for name in WEIGHT_FILES)
    )


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "a Hugging Face model folder needs the transformers package, which is not installed",
            hint=INSTALL_HINT,
        ) from None
    return transformers


def model_class(transformers: Any, architectures: Any, task: str) -> Any:
    """What builds the model: for feature extraction, the base class the config names when transformers
    has it and it is not a task head (``T5EncoderModel``, which ``AutoModel`` would build as the whole
    encoder-decoder ``T5Model``); else ``AutoModel`` / ``AutoModelForSequenceClassification``. Both
    answer ``from_config``."""
    if task == "feature-extraction":
        name = architectures[0] if isinstance(architectures, list) and architectures else None
        named = getattr(transformers, name, None) if isinstance(name, str) else None
        if named is not None and name.endswith("Model") and "For" not in name and "Head" not in name:
            return _FromConfig(named)
        return transformers.AutoModel
    return transformers.AutoModelForSequenceClassification


class _FromConfig:
    """A model class with the Auto classes' ``from_config(config, trust_remote_code=...)``."""

    def __init__(self, cls: Any) -> None:
        self.cls = cls

    def from_config(self, config: Any, trust_remote_code: bool = False) -> Any:
        return self.cls(config)

    def from_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("trust_remote_code", None)
        return self.cls.from_pretrained(*args, **kwargs)


def default_task(raw_config: dict[str, Any]) -> str:
    """``sequence-classification`` when the config names such an architecture, else feature-extraction."""
    architectures = raw_config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "sequence-classification"
    return "feature-extraction"


def _weights(folder: Path, trust_remote_code: bool) -> tuple[Path, str, dict[str, torch.Tensor]]:
    from slimmer.checkpoint import _load_safetensors, _refuse, _torch_load, unsafe_globals, unwrap_state_dict

    path = next(folder / name for name in WEIGHT_FILES if (folder / name).is_file())
    if path.suffix == ".safetensors":
        return path, "hf-safetensors", _load_safetensors(path)
    from slimmer.checkpoint import detect_format

    fmt = detect_format(path)
    found = unsafe_globals(path, fmt)
    if found:
        raise _refuse(path, fmt, found, "a pickled Python object")
    return path, "hf-bin", unwrap_state_dict(_torch_load(path), path, [])


def _align(state: dict[str, torch.Tensor], own: set[str], prefix: str) -> dict[str, torch.Tensor]:
    """Add or strip the base-model prefix (``bert.``) so the checkpoint's keys meet the model's."""
    if not prefix:
        return state
    dotted = prefix + "."
    model_prefixed = any(k.startswith(dotted) for k in own)
    state_prefixed = any(k.startswith(dotted) for k in state)
    if state_prefixed and not model_prefixed:
        return {k[len(dotted) :] if k.startswith(dotted) else k: v for k, v in state.items()}
    if model_prefixed and not state_prefixed:
        return {(dotted + k if dotted + k in own else k): v for k, v in state.items()}
    return state


def _load_converted(auto: Any, folder: Path, hf_config: Any, trust_remote_code: bool, mismatch: InputError):
    """The model loaded by transformers' own ``from_pretrained``, which applies its checkpoint conversion
    (key renames such as ViT's ``encoder.layer.N.attention.attention.query`` → ``layers.N.attention.q_proj``)
    where slimmer's exact matching failed. Only after the weights file passed slimmer's own checks (a
    pickle was scanned, safetensors read without code). Raises :class:`InputError` naming the weights
    transformers too finds missing, unexpected or mis-shaped (``mismatch`` when it cannot load at all)."""
    try:
        model, info = auto.from_pretrained(
            str(folder),
            config=hf_config,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            dtype=torch.float32,
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError):
        raise mismatch from None
    parts = []
    for label, key in (
        ("missing", "missing_keys"),
        ("unexpected", "unexpected_keys"),
        ("of another shape", "mismatched_keys"),
    ):
        found = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(key) or ())
        if found:
            parts.append(f"{label} {len(found)} ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})")
    if parts:  # named after transformers' conversion: the keys that are really wrong, not the renamed ones
        raise InputError(
            f"{folder} does not match the model built from config.json (keys as transformers renames them): "
            + "; ".join(parts),
            hint=mismatch.hint,
        )
    return model, [f"{folder.name}: weights renamed on load by transformers' checkpoint conversion"]


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path, task: str) -> list[str]:
    """Load ``state`` into ``model`` exactly (up to known buffers); return notes. Raises InputError."""
    own = model.state_dict()
    state = _align(state, set(own), getattr(model, "base_model_prefix", ""))
    notes = []
    known = sorted(k for k in state if k not in own and k.rsplit(".", 1)[-1] in KNOWN_BUFFERS)
    for key in known:
        del state[key]
    if known:
        notes.append(
            f"{path.name}: ignored {', '.join(known)} (a non-persistent buffer older transformers versions "
            "saved; the model rebuilds it)"
        )
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and k.rsplit(".", 1)[-1] not in KNOWN_BUFFERS)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        if unexpected:
            more = ", ..." if len(unexpected) > 3 else ""
            parts.append(f"unexpected {len(unexpected)} ({', '.join(unexpected[:3])}{more})")
        raise InputError(
            f"{path} does not match the {task} model built from config.json: " + "; ".join(parts),
            hint="choose the head with --task " + " or --task ".join(TASKS),
        )
    shapes = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        k = shapes[0]
        raise InputError(
            f"{path}: {k} has shape {tuple(state[k].shape)}, the model built from config.json {tuple(own[k].shape)}"
        )
    model.load_state_dict(state, strict=False)
    return notes


def example_specs(model: nn.Module, config: Any) -> tuple[list[Any], list[tuple[str, int]]]:
    """Input specs and dynamic axes from the forward signature and the config (see module docstring)."""
    from slimmer.inputs import InputSpec, forward_parameters

    names = [p.name for p in forward_parameters(model)]
    if "input_ids" in names and getattr(config, "vocab_size", None):
        length = min(DEFAULT_LENGTH, int(getattr(config, "max_position_embeddings", None) or DEFAULT_LENGTH))
        specs = [InputSpec("input_ids", torch.int64, (1, length), low=0, high=int(config.vocab_size) - 1)]
        if "attention_mask" in names:
            specs.append(InputSpec("attention_mask", torch.int64, (1, length), low=1, high=1))
        if "token_type_ids" in names and getattr(config, "type_vocab_size", 0):
            specs.append(InputSpec("token_type_ids", torch.int64, (1, length), low=0, high=0))
        return specs, [(s.name, 1) for s in specs]
    if "pixel_values" in names and getattr(config, "image_size", None):
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        channels = int(getattr(config, "num_channels", 3))
        return [InputSpec("pixel_values", torch.float32, (1, channels, size, size))], []
    raise ConfigError(
        f"cannot derive example inputs for {type(model).__name__} (forward takes {', '.join(names[:6])})",
        hint="give them with --input NAME:DTYPE[SHAPE] (e.g. --input input_ids:int64[1,128]:0..30521)",
    )


def read_json_object(path: Path) -> dict:
    """The JSON object in ``path`` (a folder's ``config.json``, ``slimmer_pruned.json``). Raises
    :class:`InputError` (exit 3) when the file cannot be read, is not JSON, or holds no object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{path}: not a readable JSON file ({type(error).__name__}: {error})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: holds a JSON {type(value).__name__}, not an object")
    return value


def load_folder(config: CompressConfig) -> Loaded:
    """Build the model of a Hugging Face folder, load its weights, derive its example inputs.

    Raises :class:`ConfigError` (exit 2) when transformers is missing, the task is unknown or
    remote code would be needed without ``--trust-remote-code``; :class:`InputError` (exit 3)
    when the weights do not match the config or a pickle would run code.
    """
    from slimmer.inputs import ExampleInputs
    from slimmer.paths import sha256_file
    from slimmer.stages import Loaded, resolve_inputs

    transformers = _transformers()
    folder = Path(config.model)
    raw = read_json_object(folder / "config.json")
    task = getattr(config, "task", None) or default_task(raw)
    if task not in TASKS:
        raise ConfigError(f"--task {task}: unknown; use one of {', '.join(TASKS)}")
    from slimmer.hf_save import is_pruned_folder

    if raw.get("auto_map") and not config.trust_remote_code and not is_pruned_folder(folder):
        raise ConfigError(
            f"{folder}/config.json needs code from the model's repository (auto_map)",
            hint="pass --trust-remote-code only if you trust that code",
        )
    try:
        hf_config = transformers.AutoConfig.from_pretrained(
            str(folder), trust_remote_code=config.trust_remote_code, local_files_only=True
        )
    except (ValueError, KeyError, OSError) as error:  # an unknown model_type, a field transformers refuses
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(
            f"transformers cannot read {folder}/config.json: {first}",
            hint="check the folder's config.json (model_type) and the installed transformers version",
        ) from None
    if getattr(hf_config, "use_cache", False):  # a decoder's key/value cache is no output of a pruned graph
        hf_config.use_cache = False
    auto = model_class(transformers, raw.get("architectures"), task)
    try:
        model = auto.from_config(hf_config, trust_remote_code=config.trust_remote_code)
    except ValueError as error:
        raise ConfigError(
            f"transformers cannot build a {task} model for {folder}: {str(error).splitlines()[0]}"
        ) from None
    path, fmt, state = _weights(folder, config.trust_remote_code)
    from slimmer.hf_save import load_pruned

    if is_pruned_folder(folder):  # written by --save-pretrained: the plan rebuilds the pruned sizes
        model, notes, fmt = load_pruned(folder, task), [f"{folder}: a pruned model written by slimmer"], "hf-pruned"
    else:
        try:
            notes = _load_weights(model, state, path, task)
        except InputError as mismatch:  # transformers ≥ 5 renames some models' keys on load (ViT: layers.N...)
            model, notes = _load_converted(auto, folder, hf_config, config.trust_remote_code, mismatch)
    model.eval()
    if config.inputs or config.example_inputs is not None or config.input_shape:
        inputs = resolve_inputs(config, model, None)
    else:
        specs, axes = example_specs(model, hf_config)
        inputs = ExampleInputs.bind(model, specs, axes, config.dynamic_batch)
    source = {
        "path": str(folder),
        "sha256": sha256_file(path),
        "format": fmt,
        "arch": f"transformers:{type(model).__name__} ({task})",
    }
    return Loaded(model=model, inputs=inputs, source=source, notes=tuple(notes))
