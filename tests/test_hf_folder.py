"""Hugging Face model folders given as the model: built from config.json, weights read safely,
example inputs derived from the forward signature (tiny random BERT, no download)."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

pytest.importorskip("transformers")

import hf_models  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModel  # noqa: E402

from slimmer.hf_save import load_pruned  # noqa: E402


@pytest.fixture
def bert_folder(tmp_path):
    """A folder as transformers 4.8 wrote it: config.json, model.safetensors with position_ids."""
    torch.manual_seed(0)
    model = hf_models.tiny_bert()
    folder = tmp_path / "tiny-bert"
    model.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    save_file(state, folder / "model.safetensors")
    return folder


def test_a_folder_is_compressed_without_input_options(compress_json, bert_folder, tmp_path):
    saved = tmp_path / "pruned-bert"
    run, report = compress_json(
        bert_folder, "--method", "channel", "--macs-target", "0.5", "--save-pretrained", saved
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert report["input"]["format"] == "hf-safetensors"
    assert report["input"]["arch"] == "transformers:BertModel (feature-extraction)"
    inputs = {i["name"]: i for i in report["input"]["inputs"]}
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    assert inputs["input_ids"]["range"] == [0, hf_models.VOCAB - 1] and inputs["input_ids"]["shape"] == [1, 64]
    assert all(i["dynamic_axes"] == [0, 1] and i["dtype"] == "int64" for i in inputs.values())
    assert any("embeddings.position_ids" in w and "non-persistent" in w for w in report["warnings"])
    assert report["macs"]["after"] <= 0.5 * report["macs"]["before"]
    heads = {k: v for k, v in report["sparsity"]["per_layer"].items() if "attention" in k}  # by weight
    assert len({k.split(".attention")[0] for k in heads}) == 2 and max(heads.values()) > 0
    verified = {c["input_shapes"] for c in report["verification"]["outputs"]}
    assert {"(1, 64), (1, 64), (1, 64)", "(3, 32), (3, 32), (3, 32)"} <= verified
    # the saved folder rebuilds the pruned model, in transformers (its class in the folder) and in
    # slimmer (from the plan, without running the folder's code); both give what the ONNX file gives
    assert sorted(p.name for p in saved.iterdir()) == [
        "config.json", "model.safetensors", "modeling_slimmer_pruned.py", "slimmer_plan.json", "slimmer_pruned.json"
    ]  # fmt: skip
    assert any(
        "--save-pretrained" in w and "AutoModel.from_pretrained(DIR, trust_remote_code=True)" in w
        for w in report["warnings"]
    )
    ids = np.random.default_rng(0).integers(0, hf_models.VOCAB, (2, 12)).astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    feed["attention_mask"][1, 7:] = 0
    session = ort.InferenceSession(report["onnx"]["path"])
    names = [o.name for o in session.get_outputs()]
    onnx_hidden = session.run(None, feed)[names.index("last_hidden_state")]
    for model in (AutoModel.from_pretrained(saved, trust_remote_code=True), load_pruned(saved)):
        attention = [layer.attention.self for layer in model.encoder.layer]
        assert all(a.num_attention_heads * 8 == a.query.out_features for a in attention)
        assert min(a.num_attention_heads for a in attention) < 4
        with torch.no_grad():
            torch_hidden = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state.numpy()
        assert np.abs(onnx_hidden - torch_hidden).max() <= 1e-4
    assert type(AutoModel.from_pretrained(saved, trust_remote_code=True)).__name__ == "SlimmerPrunedBertModel"
    with pytest.raises(RuntimeError, match="mismatched"):  # without the folder's class: refused, never reinitialized
        AutoModel.from_pretrained(saved, trust_remote_code=False)


def test_a_decoder_folder_with_conv1d_layers_and_a_cache(compress_json, tmp_path):
    """GPT-2: its key/value cache is no graph output (exit 4 before), and surgery updates Conv1D's ``nf``
    (nothing was removed before); the fused q/k/v projection is kept whole and the report says so."""
    torch.manual_seed(0)
    folder = tmp_path / "tiny-gpt2"
    hf_models.tiny_gpt2().save_pretrained(folder)
    saved = tmp_path / "pruned-gpt2"  # --save-pretrained exited 1: Conv1D "cannot be rebuilt from config"
    run, report = compress_json(folder, "--method", "channel", "--sparsity", "0.5", "--save-pretrained", saved)
    assert run.code == 0, run.stderr
    assert report["surgery"]["channels_removed"] > 0 and report["params"]["after"] < report["params"]["before"]
    ids = torch.randint(0, hf_models.VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(report["onnx"]["path"])
    feeds = {i.name: ids.numpy() if i.name == "input_ids" else np.ones((2, 16), np.int64) for i in session.get_inputs()}
    (want,) = session.run(None, feeds)
    for rebuilt in (load_pruned(saved), AutoModel.from_pretrained(saved, trust_remote_code=True, use_cache=False)):
        with torch.no_grad():
            got = rebuilt.eval()(input_ids=ids, attention_mask=torch.ones(2, 16, dtype=torch.long)).last_hidden_state
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
    assert report["verification"]["passed"] and [n for n in report["input"]["outputs"]] == ["last_hidden_state"]
    assert any("h.0.attn.c_attn" in w and "kept whole" in w for w in report["warnings"])
    run = compress_json(folder, "--method", "nm", "-o", tmp_path / "nm.onnx")[0]
    assert run.code == 2 and "Conv1D" in run.json()["error"] and "--method unstructured" in run.json()["hint"]


def test_a_folder_whose_keys_transformers_renames_on_load(tmp_path):
    """transformers ≥ 5 saves ViT under its checkpoint names (``encoder.layer.0.attention.attention.query``)
    and renames them on load (``layers.0.attention.q_proj``): slimmer's exact matching refused the folder
    that transformers itself had just written (exit 3). The weights must be the saved ones, not random."""
    from slimmer.config import CompressConfig
    from slimmer.hf import load_folder

    torch.manual_seed(0)
    saved = hf_models.tiny_vit()
    folder = tmp_path / "tiny-vit"
    saved.save_pretrained(folder)
    loaded = load_folder(CompressConfig(model=folder))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = saved(pixel_values=pixels).last_hidden_state
        got = loaded.model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(got, want)

    from safetensors.torch import load_file

    from slimmer.errors import InputError

    state = load_file(folder / "model.safetensors")  # one weight missing: refused, naming that weight
    del state["encoder.layer.0.attention.attention.query.weight"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(InputError) as refused:
        load_folder(CompressConfig(model=folder))
    assert "missing 1 (layers.0.attention.q_proj.weight)" in str(refused.value), refused.value


def test_an_encoder_only_folder_is_built_as_the_class_its_config_names(compress_json, tmp_path):
    """config.json names T5EncoderModel; AutoModel built the whole encoder-decoder T5Model and the folder
    was refused as not matching it (exit 3, with a --task hint neither task could satisfy)."""
    torch.manual_seed(0)
    folder = tmp_path / "t5-encoder"
    hf_models.tiny_t5_encoder().save_pretrained(folder)
    saved = tmp_path / "pruned-t5"
    run, report = compress_json(folder, "--method", "channel", "--sparsity", "0.5", "--save-pretrained", saved)
    assert run.code == 0, run.stderr
    assert report["input"]["arch"] == "transformers:T5EncoderModel (feature-extraction)"
    assert report["params"]["after"] < report["params"]["before"]
    ids = torch.randint(0, hf_models.VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(report["onnx"]["path"])
    feeds = {i.name: ids.numpy() if i.name == "input_ids" else np.ones((2, 16), np.int64) for i in session.get_inputs()}
    (want,) = session.run(None, feeds)
    rebuilt = load_pruned(saved)  # the saved folder names the class too
    assert type(rebuilt).__name__ == "T5EncoderModel"
    with torch.no_grad():
        got = rebuilt(input_ids=ids, attention_mask=torch.ones(2, 16, dtype=torch.long)).last_hidden_state
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_a_pruned_layer_the_saved_class_cannot_rebuild_is_exit_3_not_a_bug(
    compress_json, bert_folder, tmp_path, monkeypatch
):
    """--save-pretrained on a model with a layer type the saved class cannot resize ended in exit 1
    ("internal error: ValueError") after the ONNX file was written; it is exit 3 naming the layer and the file."""

    def unresizable(pruned, fresh):
        raise ValueError("encoder.layer.0.odd (OddLayer) changed shape and cannot be rebuilt from config")

    monkeypatch.setattr("slimmer.hf_modeling.pruned_sizes", unresizable)
    saved = tmp_path / "pruned"
    run, report = compress_json(bert_folder, "--method", "channel", "--sparsity", "0.3", "--save-pretrained", saved)
    assert run.code == 3, run.stderr
    assert "OddLayer" in report["error"] and "written before it" in report["error"] and not saved.exists()


def test_weights_that_do_not_match_the_config_are_refused(compress_json, bert_folder, tmp_path):
    state = {"pooler.dense.weight": torch.zeros(32, 32), "extra.weight": torch.zeros(3)}
    save_file(state, bert_folder / "model.safetensors")
    run, report = compress_json(bert_folder, "--method", "channel")
    assert run.code == 3
    assert "unexpected 1 (extra.weight)" in report["error"] and "missing" in report["error"]
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "config.json: not a readable JSON file (JSONDecodeError"),
        ("[1, 2]", "config.json: holds a JSON list, not an object"),
        (None, "transformers cannot read"),  # a model_type transformers does not know
    ],
    ids=["not-json", "not-an-object", "unknown-model-type"],
)
def test_a_config_json_that_cannot_be_read_exits_3_naming_it(compress_json, bert_folder, tmp_path, text, message):
    """These crashed with JSONDecodeError, AttributeError or transformers' ValueError (exit 1)."""
    if text is None:
        config = json.loads((bert_folder / "config.json").read_text())
        config["model_type"] = "nosuchmodel"
        text = json.dumps(config)
    (bert_folder / "config.json").write_text(text)
    run, report = compress_json(bert_folder, "--method", "channel")
    assert run.code == 3, run.stderr
    assert message in report["error"]
    assert not list(tmp_path.glob("*.onnx"))


def test_remote_code_needs_trust(compress_json, bert_folder):
    config = json.loads((bert_folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (bert_folder / "config.json").write_text(json.dumps(config))
    run, report = compress_json(bert_folder, "--method", "channel")
    assert run.code == 2
    assert "auto_map" in report["error"] and "--trust-remote-code" in report["hint"]


def test_missing_transformers_says_how_to_install(compress_json, bert_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    run, report = compress_json(bert_folder, "--method", "channel")
    assert run.code == 2
    assert "transformers" in report["error"] and report["hint"] == 'pip install "slimmer[hf]"'
