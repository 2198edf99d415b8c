"""Model measurements: parameter counts, MACs (via torch's FlopCounterMode), accuracy."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from slimmer.graph.macs import count_macs as count_graph_macs
from slimmer.graph.macs import to_meta
from slimmer.inputs import as_args, batch_of, fresh
from slimmer.outputs import logits_of


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor | tuple) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (MACs = FLOPs / 2, dense).

    Counted on a ``meta``-device copy: on real CPU tensors in eval mode without grad,
    ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` take a fused fast path that the
    flop counter never sees (a ViT-B/16 counted 11.3 G instead of 17.6 G). A model that cannot run
    on ``meta`` is counted on real tensors with autograd on, which also disables the fast path.
    """
    args = batch_of(as_args(example), 1)
    try:
        meta_model, meta_inputs = to_meta(model, args)
        return count_graph_macs(meta_model, meta_inputs)
    except Exception:  # noqa: BLE001 - e.g. .item() in forward: count on real tensors instead
        counter = FlopCounterMode(display=False)
        grad_args = tuple(
            a.detach().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args
        )
        with torch.enable_grad(), counter:
            model(*grad_args)
        return int(counter.get_total_flops() // 2)


@torch.no_grad()
def accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 500,
    output_name: str | None = None,
    feed: Callable[[torch.Tensor], tuple] | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, evaluated in batches in eval mode, read from the
    logits leaf of the output (:func:`slimmer.outputs.logits_of`). ``feed`` unpacks a batch into
    ``forward``'s arguments (text data: :class:`slimmer.train.text.TextFeed`)."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        batch = x[i : i + batch_size]
        out = logits_of(model(*fresh(feed(batch) if feed is not None else batch)), output_name)
        correct += int((out.argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(1, len(x))
