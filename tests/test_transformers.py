"""Hugging Face transformers with tiny random configs (no download): heads and feed-forward width
pruned to about half the MACs, pruned == masked original, the attention modules' head counts
updated, and the ONNX file verified at two batch sizes and two sequence lengths."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

import hf_models  # noqa: E402

from slimmer.graph import build_groups  # noqa: E402
from slimmer.structures.channel import plan_channels  # noqa: E402
from slimmer.surgery import mask_model, shrink  # noqa: E402

TOKENS = (
    "--input", f"input_ids:int64[1,16]:0..{hf_models.VOCAB - 1}",
    "--input", "attention_mask:int64[1,16]:1",
    "--dynamic-axis", "input_ids:1",
    "--dynamic-axis", "attention_mask:1",
)  # fmt: skip
# model factory -> (head-count attribute, head-width attribute or None) of its attention modules
MODELS = {
    "tiny_bert": ("num_attention_heads", "all_head_size"),
    "tiny_distilbert": ("n_heads", "dim"),
    "tiny_vit": ("num_attention_heads", None),
}
QUERY = ("query", "q_lin", "q_proj")


def _inputs(name: str) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    if name == "tiny_vit":
        return (torch.randn(2, 3, 32, 32, generator=generator),)
    ids = torch.randint(0, hf_models.VOCAB, (2, 16), generator=generator)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 11:] = 0  # padding: the additive attention mask is part of the graph
    return ids, mask


@pytest.mark.parametrize("name", sorted(MODELS))
def test_heads_and_ffn_pruned_equal_to_the_masked_original(name):
    torch.manual_seed(0)
    model = getattr(hf_models, name)()
    count_attr, width_attr = MODELS[name]
    x = _inputs(name)
    groups = build_groups(model, x)
    heads = [g for g in groups.prunable if g.heads]
    assert len(heads) == 2 and all(g.channels == 4 for g in heads)  # one group per layer, one channel per head
    plan = plan_channels(groups, model, macs_target=0.5, example_inputs=x, round_to=1)
    assert plan.macs_after <= 0.5 * plan.macs_before
    untouched = copy.deepcopy(model)
    result = shrink(model, plan, x)
    assert not result.rolled_back
    with torch.no_grad():
        pruned = model(*x).last_hidden_state
        reference = mask_model(untouched, result.plan)(*x).last_hidden_state
    assert (pruned - reference).abs().max().item() <= 1e-5 * reference.abs().max().item()
    kept = {g.id: len(g.kept) for g in result.plan.groups}
    for group in heads:
        attention = model.get_submodule(group.heads[0].module)
        assert 1 <= kept[group.id] < 4
        assert getattr(attention, count_attr) == kept[group.id]
        (query,) = [getattr(attention, q) for q in QUERY if hasattr(attention, q)]
        assert query.out_features == 8 * kept[group.id]
        if width_attr:
            assert getattr(attention, width_attr) == 8 * kept[group.id]
    ffn = [g for g in groups.prunable if not g.heads]
    assert ffn and all(kept[g.id] < g.channels for g in ffn)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_latency_aware_ranking_plans_every_transformer(name):
    """BERT builds its attention mask with ``.item()``, which meta tensors cannot do; the latency table is
    recorded on the same copy as the MACs counts (real when meta fails), not on a meta copy of its own (a
    RuntimeError, exit 1, with ``--latency-aware`` on BERT before)."""
    torch.manual_seed(0)
    model = getattr(hf_models, name)()
    x = _inputs(name)
    groups = build_groups(model, x)
    plan = plan_channels(groups, model, macs_target=0.5, example_inputs=x, round_to=1, latency_aware=True)
    assert 0.4 * plan.macs_before <= plan.macs_after <= 0.5 * plan.macs_before
    assert "channels ranked by score per estimated time per MAC (latency-aware)" in plan.notes
    assert any(len(g.kept) < g.channels for g in plan.groups)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compress_cli_verifies_onnx_at_two_batches_and_two_lengths(compress_json, tmp_path, name):
    torch.manual_seed(0)
    checkpoint = tmp_path / f"{name}.pt"
    torch.save(getattr(hf_models, name)().state_dict(), checkpoint)
    shape = ("--input-shape", "1,3,32,32") if name == "tiny_vit" else TOKENS
    run, report = compress_json(
        checkpoint, "--arch", f"hf_models:{name}", *shape, "--method", "channel", "--macs-target", "0.5",
        "--round-to", "1",  # widths of 32 and 64: the default rounding to 16 would leave too few choices
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert report["verification"]["passed"] is True
    assert report["macs"]["after"] <= 0.5 * report["macs"]["before"]
    per_layer = report["sparsity"]["per_layer"]
    attention = {k: v for k, v in per_layer.items() if "attention" in k}  # keyed by the weights changed
    ffn = [v for k, v in per_layer.items() if "attention" not in k]
    blocks = {k.split(".attention")[0] for k in attention}
    assert len(blocks) == 2 and max(attention.values()) > 0 and ffn and max(ffn) > 0
    verified = {c["input_shapes"] for c in report["verification"]["outputs"]}
    if name == "tiny_vit":
        assert verified == {"(1, 3, 32, 32)", "(3, 3, 32, 32)"}
    else:
        assert verified == {"(1, 16), (1, 16)", "(3, 16), (3, 16)", "(1, 8), (1, 8)", "(3, 8), (3, 8)"}


def test_prune_heads_only_leaves_the_ffn_whole(compress_json, tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "bert.pt"
    torch.save(hf_models.tiny_bert().state_dict(), checkpoint)
    run, report = compress_json(
        checkpoint, "--arch", "hf_models:tiny_bert", *TOKENS, "--method", "channel", "--sparsity", "0.5",
        "--prune", "heads", "--round-to", "1",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    per_layer = report["sparsity"]["per_layer"]
    heads = {k: v for k, v in per_layer.items() if "attention" in k}  # keyed by the weights changed
    assert len({k.split(".attention")[0] for k in heads}) == 2 and set(heads.values()) == {0.5}
    assert all(v == 0 for k, v in per_layer.items() if "attention" not in k)
    run, report = compress_json(checkpoint, "--arch", "hf_models:tiny_bert", *TOKENS, "--method", "channel",
                                "--prune", "heads,mlp", "-o", tmp_path / "b.onnx")  # fmt: skip
    assert run.code == 2 and "--prune heads,mlp: choose from heads, ffn" in report["error"]
