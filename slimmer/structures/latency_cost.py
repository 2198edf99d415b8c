"""A latency estimate per channel, so the channel planner can prefer channels that cost time.

MACs are a poor proxy for CPU latency: a depthwise convolution does few MACs per byte it moves,
and element-wise work (BatchNorm, activations, residual adds, squeeze-excite products) scales with
the activation size, not with the MACs. Measured with onnxruntime (CPUExecutionProvider, one
thread, AVX-512, NCHWc kernels) on mobilenet_v2 and efficientnet_b0, a layer's time is fitted to
within ~20% by

    time ≈ MACs · c_kind + (input elements + output elements) · C_ELEMENT

with c_kind ≈ 0.020 ns/MAC for dense convolutions and linear layers, ≈ 0.033 ns/MAC for
depthwise ones, and C_ELEMENT ≈ 0.07 ns per activation element. Only the ratios matter to the
planner, so the constants below are relative to a dense MAC. They are a property of the kernels,
not of a model: a channel of a group removes MACs and activation elements from every layer it
touches, and :class:`LatencyByWeight` turns that into an estimated time saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from slimmer.graph.groups import ChannelGroup

# Estimated cost per unit, relative to one MAC of a dense convolution or linear layer.
COST_DENSE_MAC = 1.0
COST_DEPTHWISE_MAC = 1.6
COST_ELEMENT = 3.5  # one activation element read or written (plus the element-wise ops on it)


class LatencyByWeight:
    """Estimated time and MACs of each Conv/Linear layer, keyed by its weight's name.

    For a weight, ``out_dim``/``in_dim`` are the weight dims holding output/input channels
    (a depthwise convolution's channel dim is both). Removing a fraction of a dim removes that
    fraction of the layer's MACs and of the activation elements on that side.
    """

    def __init__(self, model: nn.Module, example_inputs: Sequence[Any]) -> None:
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
                {"shape": tuple(weight.shape), "macs": 0, "in": 0, "out": 0, "depthwise": depthwise},
            )
            entry.update(out_dim=out_dim, in_dim=in_dim)
            entry["macs"] += macs  # a module called twice counts twice
            entry["in"] += in_el
            entry["out"] += out_el

        return record

    @property
    def total(self) -> float:
        """Estimated time of every Conv/Linear layer, in dense-MAC units."""
        return sum(self._cost(e, e["macs"], e["in"], e["out"]) for e in self.layers.values())

    @property
    def total_macs(self) -> int:
        return sum(e["macs"] for e in self.layers.values())

    @staticmethod
    def _cost(entry: dict[str, Any], macs: float, in_el: float, out_el: float) -> float:
        per_mac = COST_DEPTHWISE_MAC if entry["depthwise"] else COST_DENSE_MAC
        return macs * per_mac + (in_el + out_el) * COST_ELEMENT

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
            time += share * self._cost(entry, entry["macs"], in_el, out_el)
            macs += share * entry["macs"]
        return time, macs

    def relative_cost(self, groups: Sequence[ChannelGroup]) -> list[float]:
        """Per group: estimated time per MAC of its channels over the model's average (1.0 = average).

        Groups whose channels touch no Conv/Linear MACs get 1.0 (neutral).
        """
        macs_total = self.total_macs
        if not macs_total:
            return [1.0 for _ in groups]
        average = self.total / macs_total
        out = []
        for group in groups:
            time, macs = self.per_channel(group)
            out.append(time / macs / average if macs > 0 and time > 0 else 1.0)
        return out
