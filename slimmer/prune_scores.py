"""What a pruning criterion may use when it scores weights: :func:`score_context`."""

from __future__ import annotations

import torch
from torch import nn

from slimmer.config import CompressConfig
from slimmer.criteria import ScoreContext
from slimmer.inputs import as_args, batch_of
from slimmer.train.data import DataSplits

SCORE_BATCH, SCORE_BATCHES = 128, 10


def score_context(model: nn.Module, config: CompressConfig, example: tuple, data: DataSplits | None) -> ScoreContext:
    """What a criterion may use: a few seeded training batches (when there is data) and the targets."""
    batches = None
    if data is not None and len(data.train):
        gen = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(len(data.train), generator=gen)[: SCORE_BATCH * SCORE_BATCHES]
        batches = [
            (data.train.x[idx], data.train.y[idx] if data.train.y is not None else None)
            for idx in order.split(SCORE_BATCH)
        ]
    args = as_args(example)
    single = len(args) == 1 and isinstance(args[0], torch.Tensor) and args[0].is_floating_point()
    extra = {
        "sparsity": config.target_sparsity,
        "input_shape": (1, *args[0].shape[1:]) if single else None,
        "scope": config.scope,
        "output_name": config.output_name,
        "example_inputs": batch_of(args, 1),
        "feed": data.train.feed if data is not None else None,  # text data packs several inputs per sample
    }
    return ScoreContext(model=model, seed=config.seed, batches=batches, extra=extra)
