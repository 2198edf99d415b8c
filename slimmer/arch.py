"""Architecture resolution for ``--arch``: built-in names, torchvision, timm, ``module:callable``.

Unknown names fail with :class:`ConfigError` (exit 2) naming the closest matches. Weights are never
downloaded: torchvision models are built with ``weights=None`` and timm models with
``pretrained=False``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from slimmer.errors import ConfigError
from slimmer.registry import did_you_mean
from slimmer.zoo import ARCHITECTURES, Architecture


def _torchvision_names() -> list[str]:
    try:
        import torchvision

        return list(torchvision.models.list_models())
    except Exception:  # noqa: BLE001 - torchvision is optional
        return []


def _torchvision_arch(name: str) -> Architecture:
    try:
        import torchvision
    except ImportError:
        raise ConfigError(f"--arch torchvision:{name} needs torchvision", hint="pip install torchvision") from None
    names = torchvision.models.list_models()
    if name not in names:
        raise ConfigError(f"unknown torchvision model {name!r}.{did_you_mean(name, names)}")
    size = 299 if name == "inception_v3" else 224
    if name.startswith("raft") or name.startswith("mvit") or "video" in name:
        size = 224
    return Architecture(
        name=f"torchvision:{name}",
        build=lambda: torchvision.models.get_model(name, weights=None),
        input_shape=(1, 3, size, size),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )


def _timm_arch(name: str) -> Architecture:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"--arch timm:{name} needs timm", hint="pip install timm") from None
    names = timm.list_models()
    if name not in names:
        raise ConfigError(f"unknown timm model {name!r}.{did_you_mean(name, names)}")
    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    return Architecture(
        name=f"timm:{name}",
        build=lambda: timm.create_model(name, pretrained=False),
        input_shape=(1, *cfg.get("input_size", (3, 224, 224))),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
    )


def _import_user_module(spec: str, module_name: str) -> Any:
    """Import ``module_name`` for ``--arch module:callable``; the current folder is searched too, as
    ``python -m`` does (the ``slimmer`` script itself does not put it on ``sys.path``).

    Any failure of the user's module (not found, a syntax error, an exception at import) is a
    :class:`ConfigError` (exit 2) naming it.
    """
    top = module_name.split(".")[0]
    cwd = os.getcwd()
    if top not in sys.modules and cwd not in sys.path and "" not in sys.path:
        here = Path(cwd)
        if (here / f"{top}.py").is_file() or (here / top / "__init__.py").is_file():
            sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        hint = (
            f"make {module_name!r} importable: run slimmer from the folder holding {top}.py, or set "
            f"PYTHONPATH to that folder (e.g. PYTHONPATH=/path/to/code slimmer ...)"
        )
        if missing != module_name and not module_name.startswith(missing + "."):
            hint = f"{module_name} imports {missing!r}, which is not installed: pip install it"
        raise ConfigError(
            f"--arch {spec}: cannot import {module_name!r} (no module named {missing!r})", hint=hint
        ) from None
    except SyntaxError as exc:
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else module_name
        raise ConfigError(f"--arch {spec}: {module_name} has a syntax error ({where}: {exc.msg})") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module failed while importing
        raise ConfigError(
            f"--arch {spec}: importing {module_name} raised {type(exc).__name__}: {_first_line(exc)}",
            hint=f"fix {module_name} so that it imports cleanly (python -c 'import {module_name}')",
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "(no message)"


def checked_builder(spec: str, target: Callable[[], Any]) -> Callable[[], nn.Module]:
    """Wrap a user's builder: a call that fails, needs arguments, or returns something other than an
    ``nn.Module`` is a :class:`ConfigError` (exit 2) naming what it did."""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or spec

    def build() -> nn.Module:
        try:
            inspect.signature(target).bind()
        except TypeError as exc:
            raise ConfigError(
                f"--arch {spec}: {name} cannot be called without arguments ({exc})",
                hint="point --arch at a function or class that builds the model with no arguments",
            ) from None
        except ValueError:  # no signature available (a builtin): just call it
            pass
        try:
            model = target()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's builder failed
            raise ConfigError(
                f"--arch {spec}: calling {name}() raised {type(exc).__name__}: {_first_line(exc)}",
                hint="fix the builder; run it once in Python to see the full traceback",
            ) from None
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"--arch {spec}: {name}() returned {type(model).__name__ if model is not None else 'None'}, "
                "not a torch.nn.Module",
                hint="the builder must return the model (e.g. `return MyNet()`)",
            )
        return model

    return build


def _callable_arch(spec: str) -> Architecture:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--arch {spec!r}: expected package.module:callable")
    module = _import_user_module(spec, module_name)
    target: Any = module
    for part in attr.split("."):
        try:
            found = hasattr(target, part)
        except Exception:  # noqa: BLE001 - a module __getattr__ that raises
            found = False
        if not found:
            names = [n for n in dir(target) if not n.startswith("_")]
            raise ConfigError(f"--arch {spec}: {module_name} has no {attr!r}.{did_you_mean(part, names)}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"--arch {spec}: {attr} is not callable")
    shape = getattr(target, "input_shape", None)
    try:
        dims = tuple(int(d) for d in shape) if shape else ()
    except (TypeError, ValueError):
        raise ConfigError(f"--arch {spec}: {attr}.input_shape {shape!r} is not a tuple of integers") from None
    return Architecture(name=spec, build=checked_builder(spec, target), input_shape=dims)


def resolve_arch(spec: str) -> Architecture:
    """A built-in name, a bare torchvision name, ``torchvision:NAME``, ``timm:NAME`` or ``module:callable``."""
    spec = spec.strip()
    if spec.startswith("torchvision:"):
        return _torchvision_arch(spec.split(":", 1)[1])
    if spec.startswith("timm:"):
        return _timm_arch(spec.split(":", 1)[1])
    if ":" in spec:
        return _callable_arch(spec)
    if spec in ARCHITECTURES:
        return ARCHITECTURES.get(spec)
    tv = _torchvision_names()
    if spec in tv:
        return _torchvision_arch(spec)
    raise ConfigError(
        f"unknown architecture {spec!r}.{did_you_mean(spec, ARCHITECTURES.names() + tv)}",
        hint="use a built-in name, torchvision:NAME, timm:NAME or package.module:callable",
    )
