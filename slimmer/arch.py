"""Architecture resolution for ``--arch``: built-in names, torchvision, timm, ``module:callable``.

Unknown names fail with :class:`ConfigError` (exit 2) naming the closest matches. Weights are never
downloaded: torchvision models are built with ``weights=None`` and timm models with
``pretrained=False``.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def _callable_arch(spec: str) -> Architecture:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--arch {spec}: cannot import {module_name!r} ({exc})") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            raise ConfigError(f"--arch {spec}: {module_name} has no {attr!r}.{did_you_mean(part, names)}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"--arch {spec}: {attr} is not callable")
    shape = getattr(target, "input_shape", None)
    return Architecture(name=spec, build=target, input_shape=tuple(shape) if shape else ())


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
