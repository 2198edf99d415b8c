"""Models as users bring them: several inputs, integer token ids with a dynamic sequence length,
real example inputs from a file, and outputs that are dicts, dataclasses or ``ModelOutput``-style
``OrderedDict`` subclasses — each pruned (unstructured and channel), exported and verified."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import user_models

METHODS = ["unstructured", "channel"]


def _save(tmp_path, model: torch.nn.Module, name: str):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return path


def _pruned(report: dict, method: str) -> None:
    assert report["status"] == "ok"
    assert report["verification"]["passed"] is True
    if method == "channel":
        assert report["params"]["after"] < report["params"]["before"]
        assert report["surgery"]["channels_removed"] > 0
    else:
        assert report["sparsity"]["achieved"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("method", METHODS)
def test_two_input_model(compress_json, tmp_path, method):
    torch.manual_seed(0)
    ckpt = _save(tmp_path, user_models.TwoInput(), "siamese")
    run, report = compress_json(
        ckpt,
        "--arch", "user_models:TwoInput",
        "--input", "x:float32[1,3,16,16]",
        "--input", "y:float32[1,3,16,16]",
        "--method", method,
    )  # fmt: skip
    assert run.code == 0, run.stderr
    _pruned(report, method)
    assert [i["name"] for i in report["input"]["inputs"]] == ["x", "y"]
    session = ort.InferenceSession(report["onnx"]["path"])
    assert [i.name for i in session.get_inputs()] == ["x", "y"]
    assert {c["batch_size"] for c in report["verification"]["outputs"]} == {1, 3}


@pytest.mark.parametrize("method", METHODS)
def test_token_id_model_with_dynamic_batch_and_sequence(compress_json, tmp_path, method):
    torch.manual_seed(0)
    ckpt = _save(tmp_path, user_models.TokenEncoder(), "encoder")
    run, report = compress_json(
        ckpt,
        "--arch", "user_models:TokenEncoder",
        "--input", "input_ids:int64[1,16]:0..999",
        "--input", "attention_mask:int64[1,16]:1",
        "--dynamic-axis", "input_ids:1",
        "--dynamic-axis", "attention_mask:1",
        "--method", method,
    )  # fmt: skip
    assert run.code == 0, run.stderr
    _pruned(report, method)
    ids = next(i for i in report["input"]["inputs"] if i["name"] == "input_ids")
    assert ids["dtype"] == "int64" and ids["range"] == [0, 999] and ids["dynamic_axes"] == [0, 1]
    verified = {c["input_shapes"] for c in report["verification"]["outputs"]}
    assert verified == {"(1, 16), (1, 16)", "(3, 16), (3, 16)", "(1, 8), (1, 8)", "(3, 8), (3, 8)"}
    session = ort.InferenceSession(report["onnx"]["path"])
    assert session.get_inputs()[0].type == "tensor(int64)"
    for batch, length in ((2, 5), (4, 11)):  # any batch and length, not only the verified ones
        feed = {
            "input_ids": np.random.default_rng(0).integers(0, 1000, (batch, length)).astype(np.int64),
            "attention_mask": np.ones((batch, length), dtype=np.int64),
        }
        (out,) = session.run(None, feed)
        assert out.shape == (batch, length, 32)
    if method == "channel":
        assert report["sparsity"]["per_layer"], "the feed-forward width was pruned"


def test_token_ids_given_as_floats_name_the_fix(cli, tmp_path):
    ckpt = _save(tmp_path, user_models.TokenEncoder(), "encoder")
    run = cli("compress", ckpt, "--arch", "user_models:TokenEncoder", "--input-shape", "1,16", "--json")
    assert run.code == 2
    message = run.json()["error"] + " " + (run.json().get("hint") or "")
    assert "--input input_ids:int64" in message
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.parametrize("model", ["DictOut", "DataclassOut", "OrderedDictOut"])
@pytest.mark.parametrize("method", METHODS)
def test_structured_outputs_are_verified_leaf_by_leaf(compress_json, tmp_path, model, method):
    torch.manual_seed(0)
    ckpt = _save(tmp_path, getattr(user_models, model)(), model)
    run, report = compress_json(
        ckpt, "--arch", f"user_models:{model}", "--input-shape", "1,1,28,28", "--method", method
    )
    assert run.code == 0, run.stderr
    _pruned(report, method)
    leaves = {"DictOut": {"embedding", "logits"}, "DataclassOut": {"logits", "embedding"}}.get(
        model, {"logits", "pooler_output"}
    )
    assert {c["output"] for c in report["verification"]["outputs"]} == leaves
    assert set(report["input"]["outputs"]) == leaves
    session = ort.InferenceSession(report["onnx"]["path"])
    assert {o.name for o in session.get_outputs()} == leaves
    assert report["verification"]["top1_agreement"] is not None  # read from the logits leaf


@pytest.mark.parametrize(
    ("model", "options", "leaves"),
    [
        ("DataclassScalarsOut", ["--method", "channel"], ["logits", "embedding"]),
        ("DictScalarsOut", ["--exporter", "legacy"], ["logits"]),
        # the TorchScript exporter refused the leaf names of a tuple ("Invalid name: '0'", exit 4)
        ("TupleMixedOut", ["--exporter", "legacy"], ["output_0", "output_1.t"]),
        ("TupleMixedOut", ["--method", "channel"], ["0", "1.t"]),
    ],
)
def test_outputs_with_non_tensor_fields_export_their_tensors(compress_json, tmp_path, model, options, leaves):
    """An int, str, float or bool beside the tensors is left out of the graph (exit 4 before)."""
    ckpt = _save(tmp_path, getattr(user_models, model)(), model)
    run, report = compress_json(ckpt, "--arch", f"user_models:{model}", "--input-shape", "1,1,28,28", *options)
    assert run.code == 0, run.stderr
    _pruned(report, options[1] if options[0] == "--method" else "unstructured")
    verified = [n.removeprefix("output_") for n in leaves]  # the report names the leaves as pytree does
    assert [c["output"] for c in report["verification"]["outputs"]] == verified * 2  # batches 1 and 3
    session = ort.InferenceSession(report["onnx"]["path"])
    assert [o.name for o in session.get_outputs()] == leaves
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    assert all(out.shape[0] == 2 for out in session.run(None, {session.get_inputs()[0].name: x}))


@pytest.mark.parametrize("method", METHODS)
def test_example_inputs_from_an_npz(compress_json, tmp_path, method):
    torch.manual_seed(0)
    ckpt = _save(tmp_path, user_models.TwoInput(), "siamese")
    rng = np.random.default_rng(1)
    real = tmp_path / "inputs.npz"
    np.savez(
        real,
        y=rng.standard_normal((2, 3, 16, 16)).astype(np.float32),
        x=rng.standard_normal((2, 3, 16, 16)).astype(np.float32),
    )
    run, report = compress_json(ckpt, "--arch", "user_models:TwoInput", "--example-inputs", real, "--method", method)
    assert run.code == 0, run.stderr
    _pruned(report, method)
    assert [(i["name"], i["values"]) for i in report["input"]["inputs"]] == [("x", "file"), ("y", "file")]


def test_finetuning_on_data_with_a_dict_output_model(compress_json, tmp_path, fmnist_like_npz):
    torch.manual_seed(0)
    ckpt = _save(tmp_path, user_models.DictOut(), "dictout")
    run, report = compress_json(
        ckpt,
        "--arch", "user_models:DictOut",
        "--input-shape", "1,1,28,28",
        "--method", "channel",
        "--data", fmnist_like_npz,
        "--finetune-steps", "3",
        "--batch-size", "16",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert report["finetune"]["steps_done"] == 3
    assert 0.0 <= report["accuracy"]["after_finetune"] <= 1.0
    assert report["accuracy"]["before"] is not None


def test_output_name_picks_the_logits_leaf_and_unknown_names_are_refused(compress_json, tmp_path, fmnist_like_npz):
    ckpt = _save(tmp_path, user_models.DictOut(), "dictout")
    common = ("--arch", "user_models:DictOut", "--input-shape", "1,1,28,28", "--data", fmnist_like_npz)
    run, report = compress_json(ckpt, *common, "--output-name", "logits")
    assert run.code == 0, run.stderr
    run, report = compress_json(ckpt, *common, "--output-name", "nope", "-o", tmp_path / "b.onnx")
    assert run.code == 2
    assert "nope" in report["error"] and "logits" in (report.get("hint") or "")
    assert not (tmp_path / "b.onnx").exists()


def test_an_input_forward_does_not_take_is_named(cli, tmp_path):
    ckpt = _save(tmp_path, user_models.TwoInput(), "siamese")
    run = cli(
        "compress", ckpt, "--arch", "user_models:TwoInput", "--input", "x:float32[1,3,16,16]",
        "--input", "z:float32[1,3,16,16]", "--json",
    )  # fmt: skip
    assert run.code == 2
    body = run.json()
    assert "'z'" in body["error"] and "x, y" in body["hint"]


def test_a_missing_input_is_named(cli, tmp_path):
    ckpt = _save(tmp_path, user_models.TwoInput(), "siamese")
    run = cli("compress", ckpt, "--arch", "user_models:TwoInput", "--input", "x:float32[1,3,16,16]", "--json")
    assert run.code == 2
    assert "'y'" in run.json()["error"]


@pytest.mark.parametrize(
    "spec", ["ids:int64", "ids:int65[1,4]", "ids:int64[1,0]", "ids:int64[1,4]:9..1", "ids:int64[1,4]:0.5..2"]
)
def test_bad_input_specs_exit_2(cli, r20, spec):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--input", spec, "--json")
    assert run.code == 2
    assert "--input" in run.json()["error"]


def test_inspect_takes_named_inputs(cli, tmp_path):
    ckpt = _save(tmp_path, user_models.TokenEncoder(), "encoder")
    run = cli(
        "inspect", ckpt, "--arch", "user_models:TokenEncoder", "--input", "input_ids:int64[1,16]:0..999", "--json"
    )
    assert run.code == 0, run.stderr
    info = run.json()
    assert [i["name"] for i in info["inputs"]] == ["input_ids"] and info["macs"] > 0
    assert any(g["prunable"] for g in info["groups"])  # the feed-forward width


def test_an_output_named_like_an_input_gets_a_distinct_onnx_name(tmp_path):
    """ONNX names are unique across inputs and outputs: ``{"x": ...}`` returned for an input ``x``."""
    from slimmer import api
    from slimmer.config import CompressConfig

    class Echo(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x):
            return {"x": self.lin(x), "y": self.lin(x).relu()}

    result = api.compress(Echo(), {"x": torch.randn(1, 8)}, CompressConfig(output=tmp_path / "e.onnx"))
    assert result.report.status == "ok"
    session = ort.InferenceSession(str(result.onnx_path))
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert [o.name for o in session.get_outputs()] == ["output.x", "y"]
    assert {c["output"] for c in result.report.verification["outputs"]} == {"x", "y"}


def test_a_forward_that_modifies_its_input_in_place(compress_json, tmp_path):
    """Every forward whose inputs are read again runs on a copy: onnxruntime, surgery's masked original and the
    agreement see the inputs the user gave, not ones a forward has already normalized (exit 5 before)."""
    ckpt = _save(tmp_path, user_models.InplaceInput(), "inplace")
    run, report = compress_json(
        ckpt, "--arch", "user_models:InplaceInput", "--input-shape", "1,1,28,28", "--method", "channel"
    )
    assert run.code == 0, run.stderr
    _pruned(report, "channel")
    assert report["verification"]["max_abs_diff"] < 1e-4
    assert report["surgery"]["rolled_back"] == {} and report["surgery"]["max_abs_diff"] < 1e-4


def test_outputs_that_mix_the_rows_of_a_batch(compress_json, tmp_path):
    """(B, B) logits (CLIP-style) and a batch-centred output: the agreement compares the pruned model with the
    original on the same whole batch, and surgery's check sees a non-zero output (exit 1 before on the first)."""
    ckpt = _save(tmp_path, user_models.PairLogits(), "pair")
    run, report = compress_json(
        ckpt,
        "--arch", "user_models:PairLogits",
        "--input", "image:float32[2,1,28,28]",
        "--input", "text:float32[2,12]",
        "--method", "unstructured", "--sparsity", "0.5",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    _pruned(report, "unstructured")
    assert report["verification"]["cosine"] is not None and report["verification"]["cosine"] > 0.5
    ckpt = _save(tmp_path, user_models.BatchCentred(), "centred")
    run, report = compress_json(
        ckpt, "--arch", "user_models:BatchCentred", "--input-shape", "2,1,28,28", "--method", "channel", "--force"
    )
    assert run.code == 0, run.stderr
    assert report["surgery"]["output_scale"] > 0 and report["surgery"]["rolled_back"] == {}
