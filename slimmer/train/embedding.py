"""Sentence embeddings: mean pooling, the embedding distillation loss and the held-out cosine.

A sentence-embedding model (all-MiniLM-L6-v2 and the like) is used through the mean of its last
hidden states over the real tokens (Reimers & Gurevych, "Sentence-BERT", EMNLP 2019, mean
pooling). Without labels the pruned model learns to reproduce the original: the loss is
``(1 − cos(e_s, e_t)) + MSE(h_s, h_t)``, the cosine distance of the mean-pooled embeddings plus
the mean squared error of the hidden states over the real tokens (the hidden-state term of
Sanh et al.'s DistilBERT loss and its cosine term, here on the pooled embedding). A 2-D output
(a pooled embedding) is compared as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimmer.inputs import fresh
from slimmer.outputs import logits_of


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, H) hidden states → (B, H) mean over the tokens where ``mask`` (B, L) is nonzero.
    A 2-D ``hidden`` is returned as it is."""
    if hidden.ndim == 2:
        return hidden
    if mask is None:
        return hidden.mean(1)
    m = mask[:, : hidden.shape[1]].to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def embedding_distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``mean(1 − cos(pool(s), pool(t))) + MSE(s, t)`` over real tokens, in float32 (see module docstring).

    ``student``/``teacher``: (B, L, H) hidden states or (B, H) embeddings; ``mask`` (B, L) or None.
    """
    s, t = student.float(), teacher.float()
    cosine = F.cosine_similarity(mean_pool(s, mask), mean_pool(t, mask), dim=-1)
    if s.ndim == 3 and mask is not None:
        keep = mask[:, : s.shape[1]].bool()
        mse = F.mse_loss(s[keep], t[keep])
    else:
        mse = F.mse_loss(s, t)
    return (1.0 - cosine).mean() + mse


@torch.no_grad()
def embedding_cosine(
    model: nn.Module,
    original: nn.Module,
    dataset: object,
    output_name: str | None = None,
    batch_size: int = 64,
) -> float:
    """Mean cosine similarity (over the texts) between ``model``'s and ``original``'s mean-pooled
    embeddings on ``dataset`` (a :class:`~slimmer.train.data.Dataset` with a text feed), eval mode."""
    model.eval()
    original.eval()
    feed = dataset.feed  # type: ignore[attr-defined]
    total, count = 0.0, 0
    for i in range(0, len(dataset), batch_size):  # type: ignore[arg-type]
        x = dataset.x[i : i + batch_size]  # type: ignore[attr-defined]
        args, mask = feed(x), feed.mask(x)
        s = mean_pool(logits_of(model(*fresh(args)), output_name).float(), mask)
        t = mean_pool(logits_of(original(*args), output_name).float(), mask)
        total += float(F.cosine_similarity(s, t, dim=-1).sum())
        count += int(x.shape[0])
    return total / max(1, count)


class EmbeddingCosine:
    """The report's held-out embedding cosine for text ``--data``: ``model`` against the original on
    at most ``limit`` held-out texts (:func:`embedding_cosine`)."""

    def __init__(self, original: nn.Module, dataset: object, output_name: str | None, limit: int) -> None:
        from slimmer.train.data import Dataset

        held: Dataset = dataset  # type: ignore[assignment]
        self.original = original
        self.output_name = output_name
        self.dataset = Dataset(held.x[:limit], None, held.source, feed=held.feed)

    def __call__(self, model: nn.Module) -> float:
        return embedding_cosine(model, self.original, self.dataset, self.output_name)

    def describe(self, values: dict[str, float]) -> dict[str, object]:
        """The report's ``embedding`` section: the cosines with what they were measured on."""
        return {
            "held_out_texts": len(self.dataset),
            "pooling": "mean over the attention mask",
            "output": self.output_name or "the first floating output",
            "cosine_to_original": values,
        }


def embedding_evaluator(
    original: nn.Module | None, data: object, output_name: str | None, limit: int
) -> EmbeddingCosine | None:
    """An :class:`EmbeddingCosine` for text data (a dataset with a feed) that has held-out texts, else None."""
    held = getattr(data, "eval", None)
    if held is None or getattr(held, "feed", None) is None or not len(held):
        return None
    return EmbeddingCosine(original, held, output_name, limit)
