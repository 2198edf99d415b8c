"""BatchNorm scale: a channel is as important as |γ| of the BatchNorm that follows it (Liu, Li,
Shen, Huang, Yan, Zhang, "Learning Efficient Convolutional Networks through Network Slimming",
ICCV 2017).

Network slimming trains with an L1 penalty on γ (see :mod:`slimmer.train.regularizers`) and then
removes the channels of small |γ|; the channel form lives in :mod:`slimmer.structures.channel`
(kind ``bn-scale``). This unstructured form broadcasts each output channel's |γ| over all the
weights that produce it, so a whole filter ranks together.

A BatchNorm "follows" a layer when its input is exactly that layer's output tensor, observed in one
eval-mode forward pass on zeros of ``ctx.extra["input_shape"]`` (or the first of ``ctx.batches``).
A scored weight with no such BatchNorm (a classifier, a conv before an add) cannot be ranked by γ:
that is a :class:`ConfigError` naming it, never a silent default; exclude those layers.
"""

from __future__ import annotations

import torch
from torch import nn

from slimmer.criteria._scoring import model_device
from slimmer.criteria.base import ScoreContext, register_criterion
from slimmer.errors import ConfigError

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _example_input(ctx: ScoreContext) -> torch.Tensor | tuple:
    shape = ctx.extra.get("input_shape")
    if shape is not None:
        return torch.zeros(tuple(shape), device=model_device(ctx.model))
    if ctx.extra.get("example_inputs") is not None:
        return tuple(ctx.extra["example_inputs"])
    if ctx.batches is not None:
        for x, _ in ctx.batches:
            return x[:1].to(model_device(ctx.model))
    raise ConfigError("--criterion bn-scale needs the model input shape to find each layer's BatchNorm")


def following_batchnorms(model: nn.Module, layer_names: list[str], example: torch.Tensor | tuple) -> dict[str, str]:
    """``{layer: batchnorm}`` for each layer whose output is fed directly to a BatchNorm."""
    modules = dict(model.named_modules())
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: dict[str, str] = {}
    handles = []

    def record(name: str):
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            if isinstance(out, torch.Tensor):
                produced[id(out)] = (name, out)  # the tensor is kept alive, so its id stays unique

        return hook

    def match(name: str):
        def hook(_m: nn.Module, inp: tuple) -> None:
            if inp and isinstance(inp[0], torch.Tensor) and id(inp[0]) in produced:
                layer, tensor = produced[id(inp[0])]
                if tensor is inp[0]:
                    pairs.setdefault(layer, name)

        return hook

    for name in layer_names:
        handles.append(modules[name].register_forward_hook(record(name)))
    for name, m in modules.items():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            handles.append(m.register_forward_pre_hook(match(name)))
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(*((example,) if isinstance(example, torch.Tensor) else example))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return pairs


@register_criterion("bn-scale", "none", "|γ| of the BatchNorm after each output channel (network slimming)")
def score_bn_scale(weights: dict[str, torch.Tensor], ctx: ScoreContext) -> dict[str, torch.Tensor]:
    layers = {n: n.rsplit(".", 1)[0] if "." in n else "" for n in weights}
    pairs = following_batchnorms(ctx.model, sorted(set(layers.values())), _example_input(ctx))
    modules = dict(ctx.model.named_modules())
    missing = sorted(n for n, layer in layers.items() if layer not in pairs)
    if missing:
        raise ConfigError(
            f"--criterion bn-scale: no BatchNorm follows {', '.join(missing)}",
            hint="exclude those layers, or use another criterion",
        )
    scores: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        layer = modules[layers[name]]
        bn = modules[pairs[layers[name]]]
        if not bn.affine:
            raise ConfigError(f"bn-scale: BatchNorm {pairs[layers[name]]!r} has no γ (not affine)")
        gamma = bn.weight.detach().abs().float()
        dim = 1 if isinstance(layer, _TRANSPOSED) else 0
        if w.shape[dim] != gamma.numel():
            raise ConfigError(
                f"--criterion bn-scale: {name} has {w.shape[dim]} output channels along dim {dim} but "
                f"BatchNorm {pairs[layers[name]]!r} has {gamma.numel()}"
            )
        view = [1] * w.dim()
        view[dim] = -1
        scores[name] = gamma.view(view).expand(w.shape).clone()
    return scores
