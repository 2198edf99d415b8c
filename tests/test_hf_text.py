"""Text --data for Hugging Face folders (tiny random BERT and its own WordPiece tokenizer, no
download): tokenized with the folder's tokenizer, embedding distillation without labels,
CE + KD with labels, the held-out embedding cosine in the report, exit 2 for bad files."""

from __future__ import annotations

import json
import random

import pytest
import torch

pytest.importorskip("transformers")

import hf_models  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast  # noqa: E402

WORDS = "the a of and to in is was it for on with as by at from that this be are or an which not but".split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"]
VOCAB += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]


def _sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) if rng.random() < 0.6 else "".join(rng.sample(letters, 3)) for _ in range(12)]
        out.append(" ".join(words[: rng.randint(4, 12)]))
    return out


def _tokenizer_files(folder) -> None:
    assert len(VOCAB) <= hf_models.VOCAB
    BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(folder)


def _tiny_bert(**extra) -> BertConfig:
    """hf_models.tiny_bert's sizes; weights drawn 10x wider than BERT's 0.02, so that attention and
    FFN outweigh the embeddings in the residual stream and pruning them visibly moves the embedding."""
    return BertConfig(
        vocab_size=hf_models.VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, initializer_range=0.2, **extra,
    )  # fmt: skip


@pytest.fixture
def text_folder(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "tiny-bert"
    BertModel(_tiny_bert()).eval().save_pretrained(folder)
    _tokenizer_files(folder)
    return folder


@pytest.fixture
def texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(_sentences(80)) + "\n\n")
    return path


def test_text_without_labels_distils_the_embeddings(compress_json, text_folder, texts):
    run, report = compress_json(
        text_folder, "--method", "channel", "--macs-target", "0.5", "--data", texts, "--finetune-steps", "30",
        "--batch-size", "16", "--optimizer", "adamw", "--lr", "0.002", "--max-length", "16",
        "--criterion", "head-importance",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert report["pruning"]["criterion"] == "head-importance"
    emb = report["embedding"]
    assert emb["held_out_texts"] == 8 and emb["pooling"] == "mean over the attention mask"
    cos = emb["cosine_to_original"]
    assert -1 <= cos["after_prune"] < 0.999 and cos["after_finetune"] > cos["after_prune"]
    assert "bn_recalibrated" not in report["finetune"]  # BERT has no BatchNorm to re-estimate
    assert (
        report["finetune"]["kd_weight"] == 1.0 and report["finetune"]["final_loss"] < report["finetune"]["initial_loss"]
    )
    assert report["accuracy"]["before"] is None  # no labels, no accuracy
    assert report["verification"]["passed"] and report["macs"]["after"] <= 0.5 * report["macs"]["before"]


def test_labelled_jsonl_trains_a_classifier_and_reports_accuracy(compress_json, tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "tiny-cls"
    BertForSequenceClassification(_tiny_bert(num_labels=2)).eval().save_pretrained(folder)
    _tokenizer_files(folder)
    rows = [{"text": s, "label": int(s.startswith("the"))} for s in _sentences(60, seed=1)]
    data = tmp_path / "labelled.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    run, report = compress_json(
        folder, "--method", "channel", "--macs-target", "0.6", "--data", data, "--finetune-steps", "5",
        "--batch-size", "8", "--optimizer", "adamw", "--lr", "0.001", "--kd",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert report["input"]["arch"] == "transformers:BertForSequenceClassification (sequence-classification)"
    acc = report["accuracy"]
    assert all(0 <= acc[k] <= 1 for k in ("before", "after_prune", "after_finetune"))
    assert 0 < report["finetune"]["kd_weight"] < 1  # labels: cross-entropy and distillation


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.txt", b"caf\xe9 au lait\n", "not UTF-8"),
        ("empty.txt", b"\n  \n", "holds no text"),
        ("bad.jsonl", b'{"text": "fine"}\n{"text": oops}\n', "line 2: not JSON"),
        ("nolabel.jsonl", b'{"text": "one", "label": 1}\n{"text": "two"}\n', "line 2: no 'label'"),
        ("notext.jsonl", b'{"label": 1}\n', "line 1: no non-empty string field 'text'"),
    ],
)
def test_bad_text_files_exit_2_and_write_nothing(compress_json, text_folder, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    run, report = compress_json(text_folder, "--method", "channel", "--data", path, "--finetune-steps", "2")
    assert run.code == 2, run.stderr
    assert message in report["error"] and str(path) in report["error"]
    assert not list(tmp_path.glob("*.onnx"))


def test_a_folder_without_a_tokenizer_exits_2(compress_json, texts, tmp_path):
    folder = tmp_path / "no-tokenizer"
    hf_models.tiny_bert().save_pretrained(folder)
    run, report = compress_json(folder, "--method", "channel", "--data", texts, "--finetune-steps", "2")
    assert run.code == 2
    assert "tokenizer" in report["error"] and "tokenizer" in report["hint"]
    assert not list(tmp_path.glob("*.onnx"))


def test_text_data_needs_a_folder_model(compress_json, texts, tmp_path):
    path = tmp_path / "bert.pt"
    torch.save(hf_models.tiny_bert().state_dict(), path)
    run, report = compress_json(
        path, "--arch", "hf_models:tiny_bert", "--input", "input_ids:int64[1,16]:0..99", "--data", texts
    )  # fmt: skip
    assert run.code == 2
    assert "not a Hugging Face folder" in report["error"]
