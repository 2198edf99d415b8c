"""Checkpoint format detection, safe loading and architecture resolution (``--arch``).

A checkpoint is a program until proven otherwise. The format is detected from the bytes before
anything is loaded; state dicts and safetensors load with ``weights_only=True`` passed explicitly
(so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off) and ``map_location="cpu"``. Formats
that run code when loaded (pickled modules, TorchScript, ``.pt2``) are refused unless the caller
passes ``trust_remote_code=True`` — which only the command-line flag sets.
"""

from __future__ import annotations

import json
import pickletools
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimmer.arch import resolve_arch
from slimmer.errors import ConfigError, InputError, UnsafeCheckpointError
from slimmer.paths import is_utf8, sha256_file
from slimmer.weights import build_with_weights, check_finite, check_tensors, load_into  # noqa: F401
from slimmer.zoo import ARCHITECTURES, Architecture

LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "network")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict")
PREFIXES = ("module.", "_orig_mod.")
TRUST_HINT = "pass --trust-remote-code only if you trust where this file came from"


@dataclass
class LoadedModel:
    """What loading produced: the module, where it came from, and what was learned on the way."""

    model: nn.Module
    path: Path
    sha256: str
    format: str
    arch: Architecture | None
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- format detection


def detect_format(path: Path) -> str:
    """One of ``state-zip``, ``pickle``, ``safetensors``, ``torchscript``, ``pt2``; raise otherwise.

    Looks only at bytes: the zip directory, the first bytes of the file, the safetensors header.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(64)
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a checkpoint file") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise InputError(f"{path} is empty (0 bytes)", hint="check that the download or copy finished")
    if head.startswith(LFS_MAGIC):
        raise InputError(
            f"{path} is a Git LFS pointer, not the checkpoint itself: run `git lfs pull`",
            hint="run `git lfs pull` to fetch the real file",
        )
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(path)
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{":
            if n > SAFETENSORS_MAX_HEADER:
                raise InputError(f"{path}: safetensors header too large ({n} bytes declared)")
            if n > size - 8:
                raise InputError(
                    f"{path}: safetensors file is truncated (incomplete metadata: header declares "
                    f"{n} bytes, file has {size - 8})"
                )
            return "safetensors"
    raise InputError(
        f"{path} is not a checkpoint slimmer can read (not a torch zip, pickle or safetensors file)",
        hint="pass a .pt/.pth/.bin state_dict or a .safetensors file",
    )


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            bad = zf.testzip()
    except Exception as exc:  # noqa: BLE001 - zipfile and zlib raise many kinds on damaged archives
        raise InputError(f"{path} is corrupt or truncated (a damaged zip archive: {exc})") from None
    if bad is not None:
        raise InputError(f"{path} is corrupt or truncated (CRC error in {bad})")
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in tails or any(t.startswith("models/") for t in tails):
        return "pt2"
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "data.pkl" in tails:
        return "state-zip"
    raise InputError(f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl inside)")


# ----------------------------------------------------------------------------- pickle inspection


def pickle_globals(data: bytes) -> list[str]:
    """Every ``module.name`` a pickle stream (or several concatenated) would import; runs nothing."""
    found: list[str] = []
    pos = 0
    while pos < len(data):
        strings: list[str] = []
        memo: dict[int, Any] = {}
        end = pos
        try:
            for op, arg, at in pickletools.genops(data[pos:]):
                end = pos + at
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(arg)
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                    memo[arg] = strings[-1]
                elif op.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(memo.get(arg), str):
                    strings.append(memo[arg])
                elif op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif op.name == "STOP":
                    end = pos + at + 1
                    break
        except Exception:  # noqa: BLE001 - a malformed stream: what was seen so far is what we report
            break
        if end <= pos:
            break
        pos = end
        if pos < len(data) and data[pos : pos + 1] != b"\x80":
            break  # past the pickles: raw storage bytes in the legacy format
    return list(dict.fromkeys(found))


def _safe_globals() -> set[str]:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except Exception:  # noqa: BLE001 - private API moved: fall back to the torch.save essentials
        return {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter"}


NUMPY_SCALAR_GLOBALS = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype")


def is_numpy_safe(name: str) -> bool:
    """The numpy globals a training checkpoint holds beside its weights (a ``best_acc`` scalar, a dtype),
    which torch's weights-only loader reads once allow-listed: they build values, never run code."""
    return name in NUMPY_SCALAR_GLOBALS or (name.startswith("numpy.dtypes.") and name.endswith("DType"))


def numpy_safe_objects() -> list[Any]:
    """The objects of :data:`NUMPY_SCALAR_GLOBALS` and ``numpy.dtypes.*DType`` for ``safe_globals``."""
    try:
        import numpy as np
    except ImportError:
        return []
    core = getattr(np, "_core", None) or np.core
    objs: list[Any] = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        names = [n for n in dir(dtypes) if n.endswith("DType")]
        objs += [getattr(dtypes, n) for n in names if isinstance(getattr(dtypes, n), type)]
    return objs


def unsafe_globals(path: Path, fmt: str) -> list[str]:
    """The globals a full unpickling would import beyond what ``weights_only`` allows."""
    if fmt == "state-zip":
        try:
            found = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path} is corrupt or truncated ({exc})") from None
        return [g for g in found if not is_numpy_safe(g)]
    data = path.read_bytes()
    allowed = _safe_globals()
    return [g for g in pickle_globals(data) if g not in allowed and not g.endswith("Storage") and not is_numpy_safe(g)]


def _refuse(path: Path, fmt: str, found: list[str], what: str) -> UnsafeCheckpointError:
    # torch returns the globals in set order (it varies between runs): name the user's own code first
    found = sorted(set(found), key=lambda g: (g.startswith(("torch.", "builtins.", "collections.")), g))
    named = ", ".join(found[:8]) + (f" (+{len(found) - 8} more)" if len(found) > 8 else "")
    detail = f"; loading it would import: {named}" if found else ""
    return UnsafeCheckpointError(
        f"{path} is {what}, which runs code when loaded{detail}. Refused.",
        unsafe_globals=found,
        hint=(
            "save a state_dict instead (torch.save(model.state_dict(), path) or safetensors) and pass "
            f"--arch to build the model; or {TRUST_HINT}"
        ),
    )


# ----------------------------------------------------------------------------- loading


def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(numpy_safe_objects()):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # noqa: BLE001 - any failure of the safe loader is a rejected input
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):
            raise _refuse(path, "pickle", unsafe_globals(path, "pickle"), "a pickle of Python objects") from None
        raise InputError(f"{path} is corrupt or truncated: {text}") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    try:
        if not is_utf8(path):  # the Rust loader takes UTF-8 paths only
            return load(path.read_bytes())
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path} is not a valid safetensors file: {exc}") from None


def unwrap_state_dict(obj: Any, path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    """Find the tensors in a checkpoint dict: plain, or under state_dict/model/EMA keys; strip prefixes."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    extras = [str(k) for k, v in obj.items() if type(v).__module__.split(".")[0] == "numpy"]
    if extras:
        notes.append(f"numpy values beside the weights were ignored: {', '.join(extras[:5])}")
    sd: Any = obj
    if not _is_tensor_dict(sd):
        for key in STATE_DICT_KEYS + EMA_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, dict) and _is_tensor_dict(inner):
                sd = inner
                notes.append(f"weights taken from the checkpoint's {key!r} entry")
                break
        else:
            raise InputError(
                f"{path} holds a dict but no state_dict in it (keys: {', '.join(map(str, list(obj)[:10]))})"
            )
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    for prefix in PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
            notes.append(f"stripped the {prefix!r} prefix from every key")
    return sd


def _is_tensor_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) for k in d) and any(isinstance(v, torch.Tensor) for v in d.values())


def load_checkpoint(
    path: str | Path,
    *,
    arch: str | None = None,
    trust_remote_code: bool = False,
    expect_sha256: str | None = None,
) -> LoadedModel:
    """Detect, check and load a checkpoint into an eval-mode ``nn.Module`` on the CPU."""
    path = Path(path)
    fmt = detect_format(path)
    digest = sha256_file(path)
    if expect_sha256 is not None and digest.lower() != expect_sha256.strip().lower():
        raise InputError(
            f"{path} has sha256 {digest}, not the expected {expect_sha256.strip().lower()}",
            hint="the file changed since the digest was recorded: fetch it again",
        )
    architecture = resolve_arch(arch) if arch else None
    notes: list[str] = []
    model: nn.Module | None = None
    state: dict[str, torch.Tensor] | None = None

    if fmt == "safetensors":
        state = _load_safetensors(path)
    elif fmt in ("state-zip", "pickle"):
        found = unsafe_globals(path, fmt)
        if found and not trust_remote_code:
            raise _refuse(path, fmt, found, "a pickled Python object (e.g. a whole nn.Module)")
        if found:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
            notes.append("loaded with --trust-remote-code (unpickling ran code from the file)")
        else:
            obj = _torch_load(path)
        if isinstance(obj, nn.Module) and architecture is None:
            model = obj
        else:
            state = unwrap_state_dict(obj, path, notes)
    elif fmt in ("torchscript", "pt2"):
        what = "a TorchScript archive" if fmt == "torchscript" else "a torch.export (.pt2) archive"
        if not trust_remote_code:
            raise _refuse(path, fmt, [], what)
        if architecture is None:
            raise InputError(
                f"{path} is {what}: it cannot be structurally pruned or re-exported without its Python "
                "source; pass --arch",
                hint="e.g. --arch torchvision:resnet18; its weights are then loaded strictly into that model",
            )
        try:
            if fmt == "torchscript":
                state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
            else:
                state = dict(torch.export.load(str(path)).state_dict)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path} could not be loaded as {what}: {str(exc).splitlines()[0]}") from None
        notes.append(f"weights extracted from {what} (--trust-remote-code)")

    if model is None:
        if architecture is None:
            raise ConfigError(
                f"{path} holds only weights (a state_dict); slimmer needs the architecture to rebuild the model",
                hint="pass --arch NAME: a built-in name ("
                + ", ".join(ARCHITECTURES.names())
                + "), torchvision:NAME, timm:NAME or package.module:callable",
            )
        assert state is not None
        model, more = build_with_weights(architecture, state)
        notes += more
    model = model.float().eval()
    check_finite(model)
    return LoadedModel(model=model, path=path, sha256=digest, format=fmt, arch=architecture, notes=notes)


def describe_safetensors_metadata(path: Path) -> dict[str, str]:
    """The free-form metadata of a safetensors header (e.g. the bundled model's recorded accuracy)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(min(n, SAFETENSORS_MAX_HEADER)))
    return dict(header.get("__metadata__", {}))
