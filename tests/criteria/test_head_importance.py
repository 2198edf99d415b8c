"""The head-importance criterion (Michel et al. 2019): a head whose output is zeroed ranks lowest,
with labels (|∂CE/∂gate|) and without (the distillation loss's Gauss–Newton estimate)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers import BertConfig, BertForSequenceClassification, BertModel  # noqa: E402

from slimmer.config import CompressConfig  # noqa: E402
from slimmer.criteria import CRITERIA, ScoreContext  # noqa: E402
from slimmer.criteria.channel import channel_scores_from  # noqa: E402
from slimmer.errors import ConfigError  # noqa: E402
from slimmer.graph import build_groups  # noqa: E402
from slimmer.structures.unstructured import prunable_weights  # noqa: E402

DEAD_LAYER, DEAD_HEAD, HEAD = 0, 2, 8


def _config(**extra) -> BertConfig:
    return BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, initializer_range=0.2, **extra,
    )  # fmt: skip


def _kill_head(model: torch.nn.Module) -> None:
    """Zero the value rows (weight and bias) of one head: its context, the gated output, is exactly 0."""
    encoder = model.bert.encoder if hasattr(model, "bert") else model.encoder
    value = encoder.layer[DEAD_LAYER].attention.self.value
    rows = slice(DEAD_HEAD * HEAD, (DEAD_HEAD + 1) * HEAD)
    with torch.no_grad():
        value.weight[rows] = 0
        value.bias[rows] = 0


def _head_scores(model: torch.nn.Module, labels: bool) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, 100, (8, 12), generator=gen) for _ in range(3)]
    batches = [(x, torch.randint(0, 2, (8,), generator=gen) if labels else None) for x in ids]
    groups = build_groups(model, (ids[0][:1],))
    weights = dict(prunable_weights(model))
    ctx = ScoreContext(model, seed=0, batches=batches, extra={"groups": groups})
    scores = CRITERIA.get("head-importance").score(weights, ctx)
    heads = {}
    for group in groups.prunable:
        if group.heads:
            layer = int(group.heads[0].module.split("layer.")[1].split(".")[0])
            heads[layer] = channel_scores_from(scores, group)
    return heads


@pytest.mark.parametrize("labels", [False, True], ids=["distillation", "labels"])
def test_a_head_whose_output_is_zeroed_ranks_lowest(labels: bool) -> None:
    torch.manual_seed(0)
    model = (BertForSequenceClassification(_config(num_labels=2)) if labels else BertModel(_config())).eval()
    _kill_head(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    heads = _head_scores(model, labels)
    assert sorted(heads) == [0, 1] and all(len(s) == 4 for s in heads.values())
    dead = heads[DEAD_LAYER]
    assert float(dead[DEAD_HEAD]) == 0.0
    assert int(dead.argmin()) == DEAD_HEAD and float(dead.min()) < float(heads[1].min())
    assert all(float(s) > 0 for i, s in enumerate(dead) if i != DEAD_HEAD) and bool((heads[1] > 0).all())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left as it was
    assert all(p.grad is None for p in model.parameters())


def test_head_importance_is_for_channel_pruning_only() -> None:
    with pytest.raises(ConfigError, match="--method channel only"):
        CompressConfig(criterion="head-importance", methods=("unstructured",))
    assert CompressConfig(criterion="head-importance", methods=("channel",)).criterion == "head-importance"
