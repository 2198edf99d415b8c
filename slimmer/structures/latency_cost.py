"""A latency estimate per channel, so the channel planner can prefer channels that cost time.

MACs are a poor proxy for CPU latency: a depthwise convolution does few MACs per byte it moves,
and element-wise work (BatchNorm, activations, residual adds, squeeze-excite products) scales with
the activation size, not with the MACs. Measured with onnxruntime (CPUExecutionProvider, one
thread, AVX-512, NCHWc kernels) on mobilenet_v2 and efficientnet_b0, a layer's time is fitted to
within ~20% by

    time ≈ max(MACs · c_kind, weight elements · C_WEIGHT) + (input elements + output elements) · C_ELEMENT

with c_kind ≈ 0.020 ns/MAC for dense convolutions and linear layers, ≈ 0.033 ns/MAC for
depthwise ones, and C_ELEMENT ≈ 0.07 ns per activation element. The weight term is a roofline's
memory side: a linear layer at batch 1 (a CNN's classifier) does one MAC per weight it reads and is
bound by weight bytes, ~14 dense MACs' time per weight element (measured on a 1280→1000 Gemm by
``slimmer bench --calibrate``); a convolution reuses each weight at every position and stays on
the MACs side. Only the ratios matter to the
planner, so the constants below are relative to a dense MAC. They are a property of the kernels
and the machine, not of a model: a channel of a group removes MACs and activation elements from
every layer it touches, and :class:`LatencyByWeight` turns that into an estimated time saved.

The built-in constants (:data:`BUILT_IN`) were fitted once, on one machine; ``slimmer bench
--calibrate`` measures them where slimmer runs (:mod:`slimmer.export.calibrate`) and writes a JSON
file that ``compress --latency-costs FILE`` reads back with :func:`load_latency_costs`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimmer.errors import ConfigError, InputError
from slimmer.graph.groups import ChannelGroup

# Estimated cost per unit, relative to one MAC of a dense convolution or linear layer.
COST_DENSE_MAC = 1.0
COST_DEPTHWISE_MAC = 1.6
COST_ELEMENT = 3.5  # one activation element read or written (plus the element-wise ops on it)
COST_WEIGHT = 14.0  # one weight element read, when the layer is bound by weight bytes (batch-1 Gemm)


@dataclass(frozen=True)
class LatencyCosts:
    """Estimated time per unit of work, relative to one dense MAC (only the ratios matter).

    ``dense_mac``: one MAC of a dense convolution or linear layer (1.0 after calibration);
    ``depthwise_mac``: one MAC of a depthwise convolution; ``element``: one activation element read
    or written by a Conv/Linear layer (input plus output elements); ``weight``: one weight element
    read, the floor of a layer's time when it reuses its weights less than ``weight / dense_mac``
    times (a linear layer at batch 1). ``fit_error`` is the relative
    RMS error of the calibration's fit (None for the built-ins); ``machine``, ``threads`` and
    ``onnxruntime`` say where and how the constants were measured; ``source`` is the file they were
    read from (``"built-in"`` for :data:`BUILT_IN`, None for freshly measured constants; not
    written to files).
    """

    dense_mac: float = COST_DENSE_MAC
    depthwise_mac: float = COST_DEPTHWISE_MAC
    element: float = COST_ELEMENT
    fit_error: float | None = None
    machine: str | None = None
    threads: int | None = None
    onnxruntime: str | None = None
    source: str | None = None
    weight: float = COST_WEIGHT  # last, so positional construction of the earlier fields still holds

    def to_dict(self) -> dict[str, Any]:
        """The constants and where they come from (what the report's ``pruning.latency_costs`` holds)."""
        return asdict(self)


BUILT_IN = LatencyCosts(source="built-in")
"""The constants fitted by hand on mobilenet_v2 and efficientnet_b0 (see the module docstring)."""
MAX_COST = 1e6  # no unit of work costs a million dense MACs; larger constants overflow the ranking's sums
COST_FIELDS = ("dense_mac", "depthwise_mac", "element")
OPTIONAL_FIELDS = ("weight",)  # files written before the weight term have no "weight": the built-in is used
FILE_FORMAT = "slimmer-latency-costs"
FILE_VERSION = 1


def constants_for(path: Path | None, *, latency_aware: bool, speedup: float | None) -> LatencyCosts:
    """The constants a ``compress`` run ranks channels with: ``--latency-costs`` ``path``'s, else :data:`BUILT_IN`.

    The file weighs latency-aware ranking only, so it needs ``--latency-aware`` or ``--speedup``:
    :class:`ConfigError` (exit 2) otherwise. This is the one place that rule lives (drop it should
    latency-aware ranking become the default). A bad file raises as :func:`load_latency_costs` does.
    """
    if path is None:
        return BUILT_IN
    if not (latency_aware or speedup is not None):
        raise ConfigError(
            "--latency-costs weighs latency-aware channel ranking: it needs --latency-aware or --speedup",
            hint="add --latency-aware, or drop --latency-costs",
        )
    return load_latency_costs(Path(path))


def load_latency_costs(path: Path) -> LatencyCosts:
    """Read a ``slimmer bench --calibrate`` file (JSON object with ``dense_mac``, ``depthwise_mac``,
    ``element`` and optionally ``weight``; other keys are metadata).

    Raises :class:`InputError` (exit 3) naming the file, and the field when one is at fault: no such
    file, not JSON, not an object, a constant missing, not a finite number (an integer too large
    for a float included), negative, above :data:`MAX_COST`, or a ``dense_mac`` of 0 (every other
    constant is relative to it).
    """
    where = f"--latency-costs {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{where}: no such file", hint="write one with `slimmer bench --calibrate -o FILE`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(
            f"{where}: not valid JSON ({exc})", hint="write one with `slimmer bench --calibrate -o FILE`"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object with {', '.join(COST_FIELDS)}")
    values: dict[str, float] = {}
    for name in COST_FIELDS + OPTIONAL_FIELDS:
        if name not in data and name in OPTIONAL_FIELDS:
            continue
        if name not in data:
            raise InputError(f"{where}: the field {name!r} is missing", hint="expected " + ", ".join(COST_FIELDS))
        value = data[name]
        try:  # an integer too large for a float overflows here
            number = None if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)
        except OverflowError:
            number = None
        if number is None or not math.isfinite(number):
            shown = f"{str(value)[:20]}… ({len(str(value))} digits)" if isinstance(value, int) else repr(value)
            raise InputError(f"{where}: the field {name!r} must be a finite number, got {shown}")
        if number < 0 or (name == "dense_mac" and number == 0):
            bound = "> 0" if name == "dense_mac" else "≥ 0"
            raise InputError(f"{where}: the field {name!r} must be {bound}, got {value!r}")
        if number > MAX_COST:
            raise InputError(
                f"{where}: the field {name!r} is {number:g}, more than {MAX_COST:g} dense MACs per unit",
                hint="the constants are relative to a dense MAC; write them with `slimmer bench --calibrate -o FILE`",
            )
        values[name] = number
    meta = {k: data.get(k) for k in ("fit_error", "machine", "threads", "onnxruntime")}
    fit_error = meta["fit_error"] if isinstance(meta["fit_error"], (int, float)) else None
    threads = meta["threads"] if isinstance(meta["threads"], int) and not isinstance(meta["threads"], bool) else None
    return LatencyCosts(
        **values,
        fit_error=None if fit_error is None else float(fit_error),
        machine=meta["machine"] if isinstance(meta["machine"], str) else None,
        threads=threads,
        onnxruntime=meta["onnxruntime"] if isinstance(meta["onnxruntime"], str) else None,
        source=str(path),
    )


class LatencyByWeight:
    """Estimated time and MACs of each Conv/Linear layer, keyed by its weight's name.

    For a weight, ``out_dim``/``in_dim`` are the weight dims holding output/input channels
    (a depthwise convolution's channel dim is both). Removing a fraction of a dim removes that
    fraction of the layer's MACs and of the activation elements on that side. ``costs``: the
    constants to weigh MACs and elements with (:data:`BUILT_IN` unless calibrated).
    """

    def __init__(self, model: nn.Module, example_inputs: Sequence[Any], costs: LatencyCosts = BUILT_IN) -> None:
        self.costs = costs
        self.layers: dict[str, dict[str, Any]] = {}
        hooks = []
        for path, module in model.named_modules():
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                hooks.append(module.register_forward_hook(self._hook(path)))
        try:
            with torch.no_grad():
                model(*example_inputs)
        finally:
            for hook in hooks:
                hook.remove()

    def _hook(self, path: str):
        def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not inputs or not isinstance(inputs[0], torch.Tensor) or not isinstance(output, torch.Tensor):
                return
            weight = module.weight
            in_el, out_el = inputs[0].numel(), output.numel()
            if isinstance(module, nn.Linear):
                macs = weight.numel() * (out_el // max(weight.shape[0], 1))
                out_dim, in_dim, depthwise = 0, 1, False
            else:
                transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
                positions = (in_el if transposed else out_el) // max(
                    module.in_channels if transposed else module.out_channels, 1
                )
                macs = weight.numel() * positions
                out_dim, in_dim = (1, 0) if transposed else (0, 1)
                depthwise = module.groups > 1 and module.groups == module.in_channels
            if depthwise:
                out_dim = in_dim = 0
            entry = self.layers.setdefault(
                f"{path}.weight",
                {"shape": tuple(weight.shape), "macs": 0, "weights": 0, "in": 0, "out": 0, "depthwise": depthwise},
            )
            entry.update(out_dim=out_dim, in_dim=in_dim)
            entry["macs"] += macs  # a module called twice counts twice
            entry["weights"] += weight.numel()  # and reads its weights twice
            entry["in"] += in_el
            entry["out"] += out_el

        return record

    @property
    def total(self) -> float:
        """Estimated time of every Conv/Linear layer, in dense-MAC units."""
        return sum(self._cost(e, e["in"], e["out"]) for e in self.layers.values())

    @property
    def total_macs(self) -> int:
        return sum(e["macs"] for e in self.layers.values())

    def _cost(self, entry: dict[str, Any], in_el: float, out_el: float) -> float:
        per_mac = self.costs.depthwise_mac if entry["depthwise"] else self.costs.dense_mac
        compute = max(entry["macs"] * per_mac, entry["weights"] * self.costs.weight)
        return compute + (in_el + out_el) * self.costs.element

    def per_channel(self, group: ChannelGroup) -> tuple[float, float]:
        """(estimated time, MACs) removed by pruning one channel of ``group`` (mean over its channels).

        Linear in the removed fraction, at the full width: the ranking key, not a prediction.
        """
        time = macs = 0.0
        for member in group.members:
            entry = self.layers.get(member.name)
            if entry is None or member.dim not in (entry["out_dim"], entry["in_dim"]):
                continue
            size = entry["shape"][member.dim]
            share = sum(len(idx) for idx in member.indices) / group.channels / size
            touches_out = member.dim == entry["out_dim"]
            touches_in = member.dim == entry["in_dim"]
            in_el = entry["in"] if touches_in else 0.0
            out_el = entry["out"] if touches_out else 0.0
            time += share * self._cost(entry, in_el, out_el)
            macs += share * entry["macs"]
        return time, macs

    def relative_cost(self, groups: Sequence[ChannelGroup]) -> list[float]:
        """Per group: estimated time per MAC of its channels over the model's average (1.0 = average).

        Groups whose channels touch no Conv/Linear MACs get 1.0 (neutral), as does a cost that is not
        finite (constants so large that the sums overflow).
        """
        macs_total = self.total_macs
        if not macs_total:
            return [1.0 for _ in groups]
        average = self.total / macs_total
        out = []
        for group in groups:
            time, macs = self.per_channel(group)
            relative = time / macs / average if macs > 0 and time > 0 else 1.0
            out.append(relative if math.isfinite(relative) else 1.0)  # neutral when the sums overflow
        return out
