"""Tiny Hugging Face models with random weights (no download), for ``--arch hf_models:NAME``."""

from __future__ import annotations

from transformers import (
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    GPT2Config,
    GPT2Model,
    T5Config,
    T5EncoderModel,
    ViTConfig,
    ViTModel,
)

VOCAB = 100


def tiny_bert() -> BertModel:
    """BERT: hidden 32, 2 layers, 4 heads of 8, FFN 64, vocabulary 100."""
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertModel(config).eval()


def tiny_distilbert() -> DistilBertModel:
    """DistilBERT: dim 32, 2 layers, 4 heads of 8, FFN 64, vocabulary 100."""
    config = DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64
    )
    return DistilBertModel(config).eval()


def tiny_vit() -> ViTModel:
    """ViT: 32x32 images in 8x8 patches, hidden 32, 2 layers, 4 heads of 8, FFN 64."""
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    return ViTModel(config).eval()


def tiny_gpt2() -> GPT2Model:
    """GPT-2: hidden 32, 2 layers, 4 heads of 8, FFN 128 (transformers' Conv1D layers), vocabulary 100."""
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    return GPT2Model(config).eval()


def tiny_t5_encoder() -> T5EncoderModel:
    """T5's encoder alone: d_model 32, 2 layers, 4 heads of 8, FFN 64, vocabulary 100."""
    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    return T5EncoderModel(config).eval()
