"""Example inputs: the named inputs of ``forward`` as a pytree of tensors of any dtype.

Every stage feeds the model through :class:`ExampleInputs` — the forward check, MACs, graph capture,
criteria, surgery, export and verification — so none of them assumes one float image tensor. The
inputs are given in one of three ways (the CLI's ``--input-shape``, ``--input`` and
``--example-inputs``):

- one float input of a shape (``1,3,224,224``), named ``input``;
- named specs ``NAME:DTYPE[SHAPE][:RANGE]`` (``input_ids:int64[1,128]:0..30521``,
  ``attention_mask:int64[1,128]:1``): values are drawn at random, integers uniformly from the
  inclusive range or set to the constant;
- the real arrays of an ``.npz`` / ``.safetensors`` file, by name.

Names bind to the parameters of ``forward`` by name and are passed positionally (a parameter left
out before a given one is passed as ``None``), so every lower layer keeps calling
``model(*args)``. The batch axis (dim 0) is dynamic in the ONNX graph unless asked otherwise;
``--dynamic-axis NAME:DIM`` adds another (e.g. a sequence length).
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimmer.errors import ConfigError, InputError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "double": torch.float64,
    "int64": torch.int64,
    "long": torch.int64,
    "int32": torch.int32,
    "int": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
"""Data types an input spec may name (``--input NAME:DTYPE[...]``)."""

DEFAULT_NAME = "input"
_SPEC = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*):(?P<dtype>[a-z0-9]+)\[(?P<shape>[^\]]*)\](?::(?P<range>.+))?$")


@dataclass(frozen=True)
class InputSpec:
    """One input of ``forward``.

    ``shape`` is the user's shape, batch first. Random values: floats from N(0, 1), or uniformly
    from ``[low, high]`` when a range is given; integers uniformly from ``[low, high]``
    (inclusive, default ``[0, 1]``); ``low == high`` is a constant. ``value`` holds real values
    (``--example-inputs``); ``dynamic`` lists the dimensions that stay symbolic in the ONNX graph
    besides the batch.
    """

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    low: float | None = None
    high: float | None = None
    dynamic: tuple[int, ...] = ()
    value: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def is_float(self) -> bool:
        return self.dtype.is_floating_point

    def describe(self) -> str:
        """``input_ids:int64[1,128]:0..30521`` — the spec as the user would write it."""
        dtype = next(k for k, v in DTYPES.items() if v == self.dtype)
        text = f"{self.name}:{dtype}[{','.join(map(str, self.shape))}]"
        if self.low is not None:
            text += f":{self.low:g}" if self.low == self.high else f":{self.low:g}..{self.high:g}"
        return text

    def make(self, batch: int, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
        """A tensor of this input at batch size ``batch``, its dynamic dims scaled by ``scale``."""
        shape = [batch, *self.shape[1:]]
        for d in self.dynamic:
            shape[d] = max(1, int(round(self.shape[d] * scale)))
        if self.value is not None:
            return _resize(self.value, shape, generator)
        if self.dtype == torch.bool:
            return torch.randint(0, 2, shape, generator=generator).bool()
        if not self.is_float:
            low = 0 if self.low is None else int(self.low)
            high = 1 if self.high is None else int(self.high)
            return torch.randint(low, high + 1, shape, generator=generator, dtype=torch.int64).to(self.dtype)
        if self.low is None:
            return torch.randn(shape, generator=generator).to(self.dtype)
        u = torch.rand(shape, generator=generator)
        return (self.low + (self.high - self.low) * u).to(self.dtype)


def _resize(value: torch.Tensor, shape: list[int], generator: torch.Generator) -> torch.Tensor:
    """Real values at another batch size or length: rows repeated (floats beyond the real rows get
    a little noise, so two rows never coincide), longer dims truncated, shorter ones repeated."""
    out = value
    for dim, size in enumerate(shape):
        have = out.shape[dim]
        if size != have:
            idx = torch.arange(size) % have
            out = out.index_select(dim, idx)
    if out.is_floating_point() and shape[0] > value.shape[0]:
        extra = out[value.shape[0] :]
        spread = float(value.float().std()) if value.numel() > 1 else 1.0
        noise = torch.randn(extra.shape, generator=generator) * 0.05 * (spread or 1.0)
        out = torch.cat([out[: value.shape[0]], (extra.float() + noise).to(out.dtype)])
    return out.contiguous()


def parse_input_spec(text: str) -> InputSpec:
    """``NAME:DTYPE[D0,D1,...][:LOW..HIGH | :CONST]`` → :class:`InputSpec`. Raises :class:`ConfigError`."""
    m = _SPEC.match(str(text).strip().replace(" ", ""))
    if m is None:
        raise ConfigError(
            f"--input {text!r}: expected NAME:DTYPE[SHAPE] with an optional :LOW..HIGH or :CONSTANT",
            hint="e.g. --input input_ids:int64[1,128]:0..30521 --input attention_mask:int64[1,128]:1",
        )
    dtype = DTYPES.get(m["dtype"])
    if dtype is None:
        raise ConfigError(f"--input {text!r}: unknown dtype {m['dtype']!r}; one of {', '.join(DTYPES)}")
    try:
        shape = tuple(int(p) for p in m["shape"].split(",") if p)
    except ValueError:
        raise ConfigError(f"--input {text!r}: the shape must be integers separated by commas") from None
    if not shape or any(d <= 0 for d in shape):
        raise ConfigError(f"--input {text!r}: need at least one dimension (batch first), all positive")
    low = high = None
    if m["range"] is not None:
        low, high = _parse_range(m["range"], text)
        if not dtype.is_floating_point and (low != int(low) or high != int(high)):
            raise ConfigError(f"--input {text!r}: an integer input needs an integer range")
    return InputSpec(m["name"], dtype, shape, low, high)


def _parse_range(text: str, spec: str) -> tuple[float, float]:
    try:
        if ".." in text:
            a, b = text.split("..", 1)
            low, high = float(a), float(b)
        else:
            low = high = float(text)
    except ValueError:
        raise ConfigError(f"--input {spec!r}: the range must be LOW..HIGH or one constant, got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(f"--input {spec!r}: the range {text!r} must be finite with LOW ≤ HIGH")
    return low, high


def parse_dynamic_axis(text: str) -> tuple[str, int]:
    """``NAME:DIM`` → (input name, dimension index ≥ 1). Raises :class:`ConfigError`."""
    name, _, dim = str(text).partition(":")
    try:
        d = int(dim)
    except ValueError:
        d = -1
    if not name or d < 1:
        raise ConfigError(
            f"--dynamic-axis {text!r}: expected NAME:DIM with DIM ≥ 1 (the batch, dim 0, is dynamic already)",
            hint="e.g. --dynamic-axis input_ids:1 for a sequence length",
        )
    return name, d


def load_example_file(path: Path) -> list[InputSpec]:
    """Named arrays of an ``.npz`` (no pickles) or ``.safetensors`` file → specs holding the values.

    Raises :class:`InputError` (exit 3) for a missing, unreadable or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--example-inputs {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            arrays = dict(load_file(str(path)))
        else:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
        raise InputError(
            f"--example-inputs {path}: not a readable .npz or .safetensors file ({type(exc).__name__}: {exc})",
            hint="save named arrays with numpy.savez(path, input_ids=..., attention_mask=...)",
        ) from None
    if not arrays:
        raise InputError(f"--example-inputs {path}: the file holds no arrays")
    specs = []
    for name, value in arrays.items():
        if value.ndim == 0:
            raise InputError(f"--example-inputs {path}: array {name!r} is a scalar; inputs need a batch dimension")
        if 0 in value.shape:
            raise InputError(
                f"--example-inputs {path}: array {name!r} has shape {tuple(value.shape)}: every dimension must be "
                "at least 1 (at least one sample)"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(f"--example-inputs {path}: array {name!r} holds NaN or infinite values")
        specs.append(InputSpec(name, value.dtype, tuple(value.shape), value=value.contiguous()))
    return specs


def forward_parameters(model: nn.Module) -> list[inspect.Parameter]:
    """The parameters of ``model.forward`` (``self`` excluded)."""
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []


@dataclass(frozen=True)
class ExampleInputs:
    """The inputs of ``forward``, bound to its positional slots.

    ``slots`` has one entry per positional parameter up to the last given input: the input's name,
    or ``None`` for a parameter not given (passed as ``None``). ``args(batch, seed)`` builds a
    positional argument tuple.
    """

    specs: tuple[InputSpec, ...]
    slots: tuple[str | None, ...]
    dynamic_batch: bool = True

    @classmethod
    def single(cls, shape: tuple[int, ...], dynamic_batch: bool = True) -> ExampleInputs:
        """One float input of ``shape`` (batch first), named ``input`` — ``--input-shape``."""
        spec = InputSpec(DEFAULT_NAME, torch.float32, tuple(shape))
        return cls((spec,), (DEFAULT_NAME,), dynamic_batch)

    @classmethod
    def bind(
        cls,
        model: nn.Module,
        specs: list[InputSpec],
        dynamic_axes: list[tuple[str, int]] | None = None,
        dynamic_batch: bool = True,
    ) -> ExampleInputs:
        """Bind named specs to ``model.forward``'s parameters. Raises :class:`ConfigError` for a name
        ``forward`` does not take, a keyword-only parameter, or a missing required parameter."""
        by_name = {s.name: s for s in specs}
        if len(by_name) != len(specs):
            raise ConfigError("two inputs share a name: " + ", ".join(s.name for s in specs))
        for name, dim in dynamic_axes or ():
            spec = by_name.get(name)
            if spec is None:
                raise ConfigError(f"--dynamic-axis {name}:{dim}: no input is named {name!r}")
            if dim >= len(spec.shape):
                raise ConfigError(f"--dynamic-axis {name}:{dim}: input {name!r} has {len(spec.shape)} dimensions")
            by_name[name] = replace(spec, dynamic=tuple(sorted({*spec.dynamic, dim})))
        params = forward_parameters(model)
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        takes_varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
        names = [p.name for p in positional]
        if len(by_name) == 1 and DEFAULT_NAME in by_name and names and DEFAULT_NAME not in names:
            return cls((by_name[DEFAULT_NAME],), (DEFAULT_NAME,), dynamic_batch)  # --input-shape: the first one
        unknown = [n for n in by_name if n not in names]
        if unknown and not (takes_varargs and not names):
            keyword_only = {p.name for p in params if p.kind == p.KEYWORD_ONLY}
            bad = unknown[0]
            if bad in keyword_only:
                raise ConfigError(f"input {bad!r} is a keyword-only parameter of forward(), which slimmer cannot bind")
            raise ConfigError(
                f"forward() of {type(model).__name__} has no parameter named {bad!r}",
                hint="name the inputs after forward()'s parameters: " + ", ".join(names or ["(none)"]),
            )
        if unknown:  # forward(*args): inputs in the order given
            slots = tuple(by_name)
        else:
            last = max(names.index(n) for n in by_name)
            slots = tuple(n if n in by_name else None for n in names[: last + 1])
            missing = [
                p.name for p in positional[: last + 1] if p.name not in by_name and p.default is inspect.Parameter.empty
            ]
            missing += [p.name for p in positional[last + 1 :] if p.default is inspect.Parameter.empty]
            if missing:
                raise ConfigError(
                    f"forward() of {type(model).__name__} needs the input {missing[0]!r}, which was not given",
                    hint="give every input of forward() with --input NAME:DTYPE[SHAPE] (or in --example-inputs)",
                )
        ordered = tuple(by_name[n] for n in slots if n is not None)
        return cls(ordered, slots, dynamic_batch)

    @property
    def names(self) -> list[str]:
        """The given inputs' names, in forward() order (the ONNX graph's input names)."""
        return [s.name for s in self.specs]

    @property
    def batch(self) -> int:
        """The user's batch size (of the first input)."""
        return self.specs[0].shape[0]

    @property
    def first(self) -> InputSpec:
        return self.specs[0]

    @property
    def single_float(self) -> bool:
        """One float input: what ``--data`` images, augmentation and SynFlow's all-ones input need."""
        return len(self.specs) == 1 and self.specs[0].is_float

    @property
    def has_dynamic_length(self) -> bool:
        return any(s.dynamic for s in self.specs)

    def args(self, batch: int | None = None, seed: int = 0, scale: float = 1.0) -> tuple[Any, ...]:
        """Positional arguments for ``forward`` at ``batch`` (default: the user's), seeded."""
        gen = torch.Generator().manual_seed(seed)
        by_name = {s.name: s for s in self.specs}
        b = self.batch if batch is None else batch
        return tuple(by_name[n].make(b, gen, scale) if n is not None else None for n in self.slots)

    def tensors(self, args: tuple[Any, ...]) -> dict[str, torch.Tensor]:
        """The given inputs of a positional argument tuple, by name (for onnxruntime)."""
        return {n: a for n, a in zip(self.slots, args, strict=True) if n is not None}

    def bind_batch(self, x: Any) -> tuple[Any, ...]:
        """A data batch as positional arguments: a tensor is the first input, a dict is by name."""
        if isinstance(x, dict):
            return tuple(x.get(n) if n is not None else None for n in self.slots)
        if isinstance(x, (tuple, list)):
            return tuple(x)
        return (x,)

    def dynamic_shapes(self) -> tuple[Any, ...] | None:
        """torch.export's ``dynamic_shapes`` for :meth:`args`: batch (unless static) and the extra axes."""
        if not self.dynamic_batch and not self.has_dynamic_length:
            return None
        by_name = {s.name: s for s in self.specs}
        out = []
        for n in self.slots:
            spec = by_name.get(n) if n is not None else None
            if spec is None:
                out.append(None)
                continue
            dims = set(spec.dynamic) | ({0} if self.dynamic_batch else set())
            out.append({d: torch.export.Dim.DYNAMIC for d in sorted(dims)} or None)
        return tuple(out)

    def to_dict(self) -> list[dict]:
        """The inputs for the report: name, dtype, shape, range, dynamic axes, real or random."""
        return [
            {
                "name": s.name,
                "dtype": str(s.dtype).removeprefix("torch."),
                "shape": list(s.shape),
                "range": None if s.low is None else [s.low, s.high],
                "dynamic_axes": ([0] if self.dynamic_batch else []) + list(s.dynamic),
                "values": "file" if s.value is not None else "random",
            }
            for s in self.specs
        ]


def as_args(example: Any) -> tuple[Any, ...]:
    """A tensor or a sequence of positional arguments → a tuple of positional arguments."""
    return (example,) if isinstance(example, torch.Tensor) else tuple(example)


def fresh(args: Any) -> tuple[Any, ...]:
    """Positional arguments (a tensor or a sequence) with every tensor cloned, for a forward whose inputs are
    read again afterwards: a user's forward may modify its inputs in place (``x.mul_(2)``), and the next
    forward, onnxruntime, or a later evaluation on the same tensors would then see other values."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in as_args(args))


def batch_size_of(args: tuple[Any, ...]) -> int:
    """The batch size of the first tensor argument."""
    return next(int(a.shape[0]) for a in as_args(args) if isinstance(a, torch.Tensor))


def batch_of(args: tuple[Any, ...], size: int) -> tuple[Any, ...]:
    """The first ``size`` rows of every tensor argument."""
    return tuple(a[:size] if isinstance(a, torch.Tensor) else a for a in args)


def check_finite_inputs(args: tuple[Any, ...], names: list[str]) -> None:
    """Real example inputs must be finite (random ones are by construction) and hold at least one
    sample: a dimension of size 0 is an :class:`InputError` too."""
    for name, a in zip(names, (a for a in args if a is not None), strict=False):
        if isinstance(a, torch.Tensor) and 0 in a.shape:
            raise InputError(
                f"the example input {name!r} has shape {tuple(a.shape)}: every dimension must be at least 1",
                hint="give at least one sample (batch ≥ 1)",
            )
        if isinstance(a, torch.Tensor) and a.is_floating_point() and not bool(torch.isfinite(a).all()):
            raise InputError(f"the example input {name!r} holds NaN or infinite values")
