import torch
from torch import nn

from slimmer.stats import count_macs


def test_macs_of_attention_are_counted_despite_the_fused_fast_path():
    layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True).eval()
    x = torch.randn(1, 10, 64)
    # q/k/v/out projections 4·10·64·64, scores and weighted sum 2·10·10·64, MLP 2·10·64·128
    expected = 4 * 10 * 64 * 64 + 2 * 10 * 10 * 64 + 2 * 10 * 64 * 128
    assert count_macs(layer, x) == expected


def test_macs_of_a_conv():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_macs(conv, torch.randn(2, 3, 5, 5)) == 8 * 3 * 9 * 25  # batch 1 counted


def test_meta_copy_copies_no_weights_keeps_ties_and_leaves_the_model_alone() -> None:
    from torch import nn

    from slimmer.graph.macs import meta_copy

    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied
    model = nn.Sequential(emb, nn.BatchNorm1d(3), head).train()
    copy_ = meta_copy(model)
    assert all(t.is_meta for t in [*copy_.parameters(), *copy_.buffers()])
    assert copy_[0].weight is copy_[2].weight and isinstance(copy_[0].weight, nn.Parameter)
    assert not copy_.training and model.training
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert [n for n, _ in copy_.named_parameters()] == [n for n, _ in model.named_parameters()]
