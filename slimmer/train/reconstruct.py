"""Layer-wise least-squares reconstruction of a pruned model, before fine-tuning.

Pruning removes weights; the weights that stay were trained alongside the removed ones and no
longer produce the layer's output. Layer-wise reconstruction re-solves them, one layer at a time in
forward order, so that each layer of the pruned model reproduces the original model's output of
the same layer from the input it now receives:

    min_W ‖W·X_pruned − Y_original‖²  with W restricted to the kept weights,

which for each output row ``o`` with kept input set ``K_o`` is the damped normal equations
``(H_KK + δI) w_K = (X·Y_o)_K`` with ``H = X·Xᵀ`` (the Hessian of the layer-wise squared error,
as in layer-wise Optimal Brain Surgeon, Dong et al., NeurIPS 2017, and Optimal Brain Compression,
Frantar & Alistarh, NeurIPS 2022, which solve the same masked problem exactly) and ``δ`` =
:data:`DAMPING` × the mean diagonal. Taking ``X`` from the *pruned* model means each layer also
corrects what the layers before it got wrong. After channel removal every kept row is dense and the
targets are the original outputs of the kept channels: the least-squares reconstruction of He,
Zhang & Sun ("Channel Pruning for Accelerating Very Deep Neural Networks", ICCV 2017).

Needs only inputs, no labels: :data:`SAMPLES` training images. ``H`` and ``X·Y`` are accumulated
chunk by chunk (float64), and every forward stops at the layer being solved. Layers whose exact
solve would cost more than :data:`MAX_SOLVE_FLOPS` (wide layers with many different row masks) and
grouped convolutions are left as they are and listed. Measured on resnet20-fmnist at 90% LAMP:
15.2% → 90.1% test accuracy with no fine-tuning (512 images, docs/BENCHMARKS.md "Accuracy"); see
:func:`slimmer.recover.reconstructs` for when ``compress`` runs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SAMPLES = 512
CHUNK = 64
CACHE_BYTES = 512 * 2**20  # the original's sampled outputs kept from one pass (beyond: recomputed per layer)
ROWS = 32768  # rows of the least-squares problem per layer: output positions sampled over the images
DAMPING = 0.01
MAX_SOLVE_FLOPS = 2e10


class _Stop(Exception):
    """Raised by a forward hook once the layer of interest has run: the rest of the forward is not needed."""


@dataclass
class ReconstructResult:
    """What :func:`reconstruct` did: layers solved (relative output error before → after), skipped, time."""

    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "skipped": self.skipped, "samples": self.samples, "seconds": self.seconds}


def _layers_in_order(model: nn.Module, example: torch.Tensor) -> list[tuple[str, torch.Size]]:
    """``(path, output shape)`` of each Conv2d/Linear, in the order the forward first calls them."""
    order: dict[str, torch.Size] = {}

    def seen(name: str, output: torch.Tensor) -> None:  # a forward hook must return None
        order.setdefault(name, output.shape)

    handles = [
        m.register_forward_hook(lambda mod, i, o, name=name: seen(name, o))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return list(order.items())


def _cached_targets(
    original: nn.Module, images: torch.Tensor, wanted: dict[str, torch.Tensor | None]
) -> dict[str, list[torch.Tensor]]:
    """One pass of ``original`` over the chunks, keeping each wanted layer's sampled outputs
    (``wanted``: path → positions) — instead of one forward per layer and chunk."""
    store: dict[str, list[torch.Tensor]] = {path: [] for path in wanted}
    modules = dict(original.named_modules())
    handles = [
        modules[path].register_forward_hook(
            lambda mod, i, o, path=path: store[path].append(_targets(mod, o.detach(), wanted[path]).float().cpu())
        )
        for path in wanted
    ]
    try:
        with torch.no_grad():
            for chunk in images.split(CHUNK):
                original(chunk)
    finally:
        for h in handles:
            h.remove()
    return store


def _run_to(model: nn.Module, layer: nn.Module, x: torch.Tensor, want: str) -> torch.Tensor:
    """The input (``want="in"``) or output (``"out"``) of ``layer`` when ``model`` runs on ``x``."""
    box: dict[str, torch.Tensor] = {}

    def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        box["t"] = (inputs[0] if want == "in" else output).detach()
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "t" not in box:
        raise RuntimeError("the layer did not run in the forward pass")
    return box["t"]


def _columns(layer: nn.Module, inputs: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """Rows = output positions (``positions`` of each image's output grid, all when None), columns =
    the layer's inputs at that position, plus a ones column for the bias."""
    if isinstance(layer, nn.Conv2d):
        u = F.unfold(inputs, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        if positions is not None:
            u = u[:, :, positions]
        cols = u.transpose(1, 2).reshape(-1, u.shape[1])
    else:
        cols = inputs.reshape(-1, inputs.shape[-1])
    if layer.bias is not None:
        cols = torch.cat([cols, torch.ones(cols.shape[0], 1, dtype=cols.dtype, device=cols.device)], 1)
    return cols


def _targets(layer: nn.Module, out: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    if not isinstance(layer, nn.Conv2d):
        return out.reshape(-1, out.shape[-1])
    flat = out.flatten(2)
    if positions is not None:
        flat = flat[:, :, positions]
    return flat.transpose(1, 2).reshape(-1, out.shape[1])


def _positions(layer: nn.Module, out_shape: torch.Size, images: int, seed: int) -> torch.Tensor | None:
    """A fixed random subset of output positions per image, so each layer sees ~:data:`ROWS` rows."""
    if not isinstance(layer, nn.Conv2d):
        return None
    grid = out_shape[2] * out_shape[3]
    per_image = max(1, -(-ROWS // max(images, 1)))
    if per_image >= grid:
        return None
    return torch.randperm(grid, generator=torch.Generator().manual_seed(seed))[:per_image].sort().values


def _refusal(layer: nn.Module, keep: torch.Tensor, max_flops: float) -> str | None:
    if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"):
        return "grouped or non-zero-padded convolution"
    n = keep.shape[1]
    if bool(keep.all()):  # one factorization serves every row
        flops = n**3 / 3 + n**2 * keep.shape[0]
    else:  # one solve per row, on its own kept set
        flops = float((keep.sum(1).double() ** 3).sum()) / 3
    if flops > max_flops:
        return f"the exact solve would take ~{flops:.1e} flops (limit {max_flops:.0e})"
    return None


def _solve(h: torch.Tensor, r: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Rows of the new weight: row ``o`` solves ``h[K,K] w = r[K,o]`` on its kept set ``K``."""
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    h = h + DAMPING * float(h.diagonal().mean().clamp_min(1e-12)) * eye
    if bool(keep.all()):
        return torch.linalg.solve(h, r).T
    out = torch.zeros(keep.shape, dtype=h.dtype)
    for o in range(keep.shape[0]):
        k = keep[o].nonzero().squeeze(1)
        if len(k):
            out[o, k] = torch.linalg.solve(h[k][:, k], r[k, o])
    return out


def reconstruct(
    model: nn.Module,
    original: nn.Module,
    images: torch.Tensor,
    *,
    keep_masks: dict[str, torch.Tensor] | None = None,
    kept_outputs: dict[str, torch.Tensor] | None = None,
    progress: Callable[[str], None] | None = None,
    max_solve_flops: float = MAX_SOLVE_FLOPS,
) -> ReconstructResult:
    """Re-solve every Conv2d/Linear of ``model`` (in place, forward order) to match ``original``.

    ``keep_masks`` maps ``"layer.weight"`` to the boolean keep-mask of a pruned layer (its zeros stay
    zero); other layers are solved dense. ``kept_outputs`` maps a layer path to the indices of the
    original layer's output channels it kept (after channel removal); by default all of them.
    ``images`` are calibration inputs (no labels). Both models are put in eval mode and restored.
    """
    t0 = time.time()
    result = ReconstructResult(samples=len(images))
    modes = (model.training, original.training)
    model.eval()
    original.eval()
    keep_masks, kept_outputs = keep_masks or {}, kept_outputs or {}
    params = next(model.parameters())
    images = images.to(device=params.device, dtype=params.dtype)
    reference = dict(original.named_modules())
    try:
        layers = _layers_in_order(model, images[:1])
        positions = {
            path: _positions(model.get_submodule(path), shape, len(images), seed=i)
            for i, (path, shape) in enumerate(layers)
        }
        wanted, budget = {}, CACHE_BYTES
        for path, shape in layers:
            p = positions[path]
            per_image = (len(p) if p is not None else (shape[2] * shape[3] if len(shape) == 4 else 1)) * shape[1]
            if path in reference and budget >= per_image * len(images) * 4:
                wanted[path] = p
                budget -= per_image * len(images) * 4
        cached = _cached_targets(original, images, wanted)
        for path, _ in layers:
            layer, ref = model.get_submodule(path), reference.get(path)
            if ref is None or not isinstance(ref, type(layer)):
                result.skipped[path] = "no layer of the same kind at this path in the original"
                continue
            weight = layer.weight.detach()
            rows = weight.reshape(weight.shape[0], -1)
            mask = keep_masks.get(f"{path}.weight")
            keep = (mask.reshape(rows.shape) if mask is not None else torch.ones_like(rows, dtype=torch.bool)).cpu()
            if layer.bias is not None:
                keep = torch.cat([keep, torch.ones(keep.shape[0], 1, dtype=torch.bool)], 1)
            reason = _refusal(layer, keep, max_solve_flops)
            if reason:
                result.skipped[path] = reason
                continue
            channels = kept_outputs.get(path)
            h = torch.zeros(keep.shape[1], keep.shape[1], dtype=torch.float64)
            r = torch.zeros(keep.shape[1], keep.shape[0], dtype=torch.float64)
            err_ref = 0.0
            for i, chunk in enumerate(images.split(CHUNK)):
                if path in cached:
                    y = cached[path][i]
                else:
                    y = _targets(ref, _run_to(original, ref, chunk, "out"), positions[path]).float().cpu()
                x = _columns(layer, _run_to(model, layer, chunk, "in"), positions[path]).float().cpu()
                if channels is not None:
                    y = y[:, channels]
                h += (x.T @ x).double()  # float32 products per chunk, summed in float64
                r += (x.T @ y).double()
                err_ref += float(y.double().pow(2).sum())
            cached.pop(path, None)
            w_now = torch.cat([rows, layer.bias.detach()[:, None]], 1) if layer.bias is not None else rows
            w_now = w_now.double().cpu()
            # ‖Xw − y‖² = wᵀHw − 2wᵀr + ‖y‖², for the weights now and the solved ones
            err_before = float((w_now @ h * w_now).sum() - 2 * (w_now * r.T).sum()) + err_ref
            new = _solve(h, r, keep)
            err_after = float((new @ h * new).sum() - 2 * (new * r.T).sum()) + err_ref
            scale = max(err_ref, 1e-30)
            if err_after >= err_before:  # nothing to gain (an unpruned layer fed its own inputs): keep it
                result.skipped[path] = f"no improvement (relative error {err_before / scale:.2e})"
                continue
            with torch.no_grad():
                w = new[:, : rows.shape[1]] if layer.bias is not None else new
                layer.weight.copy_(w.reshape(weight.shape).to(weight))
                if layer.bias is not None:
                    layer.bias.copy_(new[:, -1].to(layer.bias))
            result.layers[path] = {
                "rel_error_before": round(err_before / scale, 6),
                "rel_error_after": round(max(err_after, 0.0) / scale, 6),
            }
            if progress is not None:
                progress(f"{path}: relative error {err_before / scale:.4f} -> {max(err_after, 0.0) / scale:.4f}")
    finally:
        model.train(modes[0])
        original.train(modes[1])
    result.seconds = round(time.time() - t0, 2)
    return result
