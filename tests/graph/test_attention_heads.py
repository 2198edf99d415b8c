"""Attention heads as channel groups: a timm-style fused-qkv block, grouped-query attention, and a
head count the engine cannot rewrite (written here, random weights)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimmer.graph import build_groups


class FusedQkvAttention(nn.Module):
    """timm's ViT attention: one qkv Linear, reshape(B, N, 3, H, D), permute, unbind."""

    def __init__(self, dim: int = 32, num_heads: int = 4, sdpa: bool = False, fixed_heads: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.sdpa, self.fixed = num_heads, dim // num_heads, sdpa, fixed_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        heads = 4 if self.fixed else self.num_heads  # a count fixed in forward() cannot be rewritten
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.sdpa:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            x = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    """Pre-norm transformer block: attention and a GELU MLP, each in a residual branch."""

    def __init__(self, attn: nn.Module, dim: int = 32) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(dim), attn, nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class GroupedQueryAttention(nn.Module):
    """Llama-style GQA: 4 query heads share 2 key/value heads (repeat_kv or SDPA's enable_gqa)."""

    def __init__(self, dim: int = 32, heads: int = 4, kv_heads: int = 2, head_dim: int = 8, sdpa: bool = False):
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim, self.sdpa = heads, kv_heads, head_dim, sdpa
        self.q_proj, self.o_proj = nn.Linear(dim, heads * head_dim), nn.Linear(heads * head_dim, dim)
        self.k_proj, self.v_proj = nn.Linear(dim, kv_heads * head_dim), nn.Linear(dim, kv_heads * head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, -1, self.head_dim).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:
            g = self.num_heads // self.num_key_value_heads
            shape = (b, self.num_key_value_heads, g, n, self.head_dim)
            k = k[:, :, None].expand(shape).reshape(b, self.num_heads, n, self.head_dim)
            v = v[:, :, None].expand(shape).reshape(b, self.num_heads, n, self.head_dim)
            o = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim**0.5, dim=-1) @ v
        return self.o_proj(o.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


def _head_group(groups):
    (group,) = [g for g in groups.groups if g.heads]
    return group


def test_fused_qkv_block_has_one_channel_per_head(check):
    for sdpa in (False, True):
        torch.manual_seed(0)
        model = Block(FusedQkvAttention(sdpa=sdpa))
        groups, result = check(model, torch.randn(2, 8, 32), sparsity=0.5)
        heads = _head_group(groups)
        assert heads.prunable and heads.channels == 4
        rows = {m.name: m.indices for m in heads.members}
        # head 1: its q, k and v rows of the fused weight, and its 8 columns of the projection
        assert rows["attn.qkv.weight"][1] == (*range(8, 16), *range(40, 48), *range(72, 80))
        assert rows["attn.proj.weight"][1] == tuple(range(8, 16))
        kept = len(next(g for g in result.plan.groups if g.id == heads.id).kept)
        assert kept < 4
        assert model.attn.num_heads == kept and model.attn.head_dim == 8
        assert model.attn.qkv.out_features == 3 * 8 * kept and model.attn.proj.in_features == 8 * kept
        assert any(g.prunable and not g.heads and g.channels == 128 for g in groups.groups)  # the MLP width


def test_grouped_query_attention_keeps_kv_sharing_consistent(check):
    for sdpa in (False, True):
        torch.manual_seed(0)
        model = Block(GroupedQueryAttention(sdpa=sdpa))
        groups, result = check(model, torch.randn(2, 8, 32), sparsity=0.5)
        heads = _head_group(groups)
        assert heads.channels == 2  # one channel = one kv head with the 2 query heads that read it
        rows = {m.name: m.indices for m in heads.members}
        assert rows["attn.k_proj.weight"][1] == tuple(range(8, 16))
        assert rows["attn.q_proj.weight"][1] == tuple(range(16, 32))
        assert rows["attn.o_proj.weight"][1] == tuple(range(16, 32))
        kept = len(next(g for g in result.plan.groups if g.id == heads.id).kept)
        assert kept == 1
        attn = model.attn
        assert (attn.num_heads, attn.num_key_value_heads) == (2 * kept, kept)
        assert attn.q_proj.out_features == 16 * kept and attn.k_proj.out_features == 8 * kept


def test_a_head_count_fixed_in_forward_is_a_named_barrier():
    model = Block(FusedQkvAttention(fixed_heads=True)).eval()
    model.attn.num_heads = 5  # not the count forward() uses: nothing slimmer could update
    groups = build_groups(model, (torch.randn(2, 8, 32),))
    (heads,) = [g for g in groups.groups if "attn.qkv.weight" in {m.name for m in g.members} and g.channels == 4]
    assert not heads.prunable
    assert "head count 4 of attn is not a module attribute slimmer can update" in heads.blocked_by
    assert any(g.prunable and g.channels == 128 for g in groups.groups)  # the MLP is still pruned
