"""Models as users bring them (several inputs, token ids, structured outputs), importable as
``--arch user_models:NAME`` (tests/ is on sys.path). Small enough that a compress run takes seconds."""

from __future__ import annotations

import collections
import dataclasses

import torch
from torch import nn


def _branch(c_in: int = 3, width: int = 32) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class TwoInput(nn.Module):
    """A Siamese-style net: ``forward(x, y)``, one branch each, joined before the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a = _branch()
        self.b = _branch()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.a(x), self.b(y)], dim=1))


class TokenEncoder(nn.Module):
    """Token ids and an attention mask in, per-token hidden states out (a sentence-encoder shape)."""

    def __init__(self, vocab: int = 1000, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.up = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.down = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(input_ids)
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1).to(h.dtype)
        return self.norm(h + self.down(self.act(self.up(h))))


class _ConvNet(nn.Module):
    def __init__(self, c_in: int = 1) -> None:
        super().__init__()
        self.features = _branch(c_in, 32)
        self.head = nn.Linear(32, 10)


class DictOut(_ConvNet):
    """Returns ``{"logits": ..., "embedding": ...}``."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {"embedding": f, "logits": self.head(f)}


@dataclasses.dataclass
class Prediction:
    logits: torch.Tensor
    embedding: torch.Tensor
    note: torch.Tensor | None = None


class DataclassOut(_ConvNet):
    """Returns a plain dataclass (not registered with the pytree by the user)."""

    def forward(self, x: torch.Tensor) -> Prediction:
        f = self.features(x)
        return Prediction(logits=self.head(f), embedding=f)


@dataclasses.dataclass
class PredictionWithScalars:
    logits: torch.Tensor
    num_layers: int
    label: str
    embedding: torch.Tensor | None = None


class DataclassScalarsOut(_ConvNet):
    """A dataclass holding an ``int`` and a ``str`` beside its tensors (no ONNX graph returns them)."""

    def forward(self, x: torch.Tensor) -> PredictionWithScalars:
        f = self.features(x)
        return PredictionWithScalars(logits=self.head(f), num_layers=2, label="conv", embedding=f)


class DictScalarsOut(_ConvNet):
    """A plain dict with a float, a bool and a string beside the logits."""

    def forward(self, x: torch.Tensor) -> dict:
        return {"temperature": 0.5, "logits": self.head(self.features(x)), "normalized": True, "kind": "cls"}


class TupleMixedOut(_ConvNet):
    """A tuple whose leaves are named ``0`` and ``1.t`` (and an int the graph leaves out)."""

    def forward(self, x: torch.Tensor) -> tuple:
        f = self.features(x)
        return self.head(f), {"aux": 3, "t": f}


class ModelOutputLike(collections.OrderedDict):
    """The shape of Hugging Face's ``ModelOutput``: an ``OrderedDict`` subclass with attribute access."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class OrderedDictOut(_ConvNet):
    def forward(self, x: torch.Tensor) -> ModelOutputLike:
        f = self.features(x)
        return ModelOutputLike(logits=self.head(f), pooler_output=f)


class InplaceInput(_ConvNet):
    """Normalizes its input in place before the convolutions (a preprocessing habit users bring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2.0).add_(1.0)
        return self.head(self.features(x))


class PairLogits(nn.Module):
    """Two towers, CLIP-style: ``(B, B)`` similarity logits first, then the image embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.image = _branch(1, 32)
        self.image_proj = nn.Linear(32, 8)
        self.text = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 8))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        a = nn.functional.normalize(self.image_proj(self.image(image)), dim=-1)
        b = nn.functional.normalize(self.text(text), dim=-1)
        return {"logits_per_image": 10 * a @ b.T, "image_embeds": a}


class BatchCentred(_ConvNet):
    """Logits centred over the batch: every row is zero at batch 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.features(x))
        return y - y.mean(0, keepdim=True)


class BranchOnWidth(nn.Module):
    """Runs a block only when its input has the width it was built for (Python control flow on a
    channel count): removing ``a``'s channels silently skips ``b``, so surgery must roll ``a`` back."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        if x.shape[1] == 16:
            x = torch.relu(self.b(x))
        return self.fc(x.flatten(2).mean(-1))


class TiedLM(nn.Module):
    """A token model whose output projection is its embedding (tied weights, as in most language
    models): the shared tensor is ``emb.weight`` to ``named_parameters()`` and ``out.weight`` to the
    Linear that unstructured and N:M pruning cover."""

    def __init__(self, vocab: int = 50, width: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.mid = nn.Sequential(nn.Linear(width, 48), nn.ReLU(), nn.Linear(48, width))
        self.out = nn.Linear(width, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.mid(self.emb(ids)))
