"""The Python API on in-memory models: ``slimmer.api.compress(module, example_inputs, config)``."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
import user_models

from slimmer import api
from slimmer.config import CompressConfig
from slimmer.errors import ConfigError


@pytest.mark.parametrize("method", ["unstructured", "channel"])
def test_compress_an_in_memory_module_returns_the_pruned_module_equal_to_its_onnx(tmp_path, method):
    torch.manual_seed(0)
    model = user_models.TwoInput().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)
    config = CompressConfig(methods=(method,), output=tmp_path / "siamese.onnx")
    result = api.compress(model, (x, y), config)

    assert result.report.status == "ok" and result.report.exit_code == 0
    assert result.onnx_path == tmp_path / "siamese.onnx" and result.onnx_path.is_file()
    assert result.report_path.is_file()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the module given is left as is"
    if method == "channel":
        assert result.plan_path is not None and result.plan_path.is_file()
        assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())
    session = ort.InferenceSession(str(result.onnx_path))
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(4, 3, 16, 16, generator=gen), torch.randn(4, 3, 16, 16, generator=gen)
    (got,) = session.run(None, {"x": a.numpy(), "y": b.numpy()})
    with torch.no_grad():
        want = result.model(a, b).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_compress_takes_named_inputs_and_structured_outputs(tmp_path):
    torch.manual_seed(0)
    model = user_models.DictOut().eval()
    config = CompressConfig(methods=("channel",), output=tmp_path / "d.onnx")
    result = api.compress(model, {"x": torch.randn(1, 1, 28, 28)}, config)
    assert result.report.status == "ok"
    assert set(result.report.input["outputs"]) == {"embedding", "logits"}
    out = result.model(torch.randn(2, 1, 28, 28))
    assert set(out) == {"embedding", "logits"}


def test_compress_refuses_what_is_not_a_module(tmp_path):
    with pytest.raises(ConfigError, match="nn.Module"):
        api.compress("model.pt", torch.randn(1, 3), CompressConfig(output=tmp_path / "x.onnx"))


@pytest.mark.parametrize("method", ["unstructured", "channel"])
def test_a_module_left_in_training_mode_is_measured_as_in_inference(tmp_path, method):
    # torchvision and hand-written models are built in training mode; before the fix the forwards that check and
    # measure the model ran in it: the copy's BatchNorm statistics moved towards the random example and dropout
    # was on, so the pruned model carried other statistics than the user's and the agreement read 0.75 at sparsity 0
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(16, 10),
    )
    with torch.no_grad():  # statistics far from what a random example gives, so that an update shows
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(2.0, 3.0)
            bn.running_var.uniform_(4.0, 5.0)
    assert model.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sparsity = {"unstructured": {"sparsity": 0.0}, "channel": {"sparsity": 0.25}}[method]
    config = CompressConfig(methods=(method,), output=tmp_path / "m.onnx", **sparsity)
    result = api.compress(model, torch.randn(1, 1, 12, 12), config)

    assert result.report.status == "ok"
    assert model.training, "the module given is left as it is"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    bns = [m for m in result.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert torch.equal(bns[0].num_batches_tracked, before["1.num_batches_tracked"]), "no forward in training mode"
    if method == "unstructured":  # nothing removed: the same model, so the same outputs
        assert all(torch.equal(before[k], v) for k, v in result.model.state_dict().items())
        assert result.report.verification["cosine"] == pytest.approx(1.0, abs=1e-6)
        assert result.report.verification["top1_agreement"] == 1.0
    else:  # the kept channels keep their statistics
        kept = result.model[1].num_features
        assert kept < 8
        assert set(result.model[1].running_mean.tolist()) <= set(before["1.running_mean"].tolist())


def test_a_group_surgery_rolls_back_keeps_its_weights_not_the_pruning_mask(tmp_path):
    """Channel pruning zeroes the planned channels before surgery; a group the surgery rolls back
    ("kept whole") must get its weights back, not stay zeroed in the returned and exported model."""
    torch.manual_seed(0)
    model = user_models.BranchOnWidth().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = CompressConfig(methods=("channel",), sparsity=0.5, output=tmp_path / "w.onnx", keep_failed=True)
    result = api.compress(model, torch.randn(1, 3, 16, 16), config)

    assert any("a.bias" in w and "rolled back" in w for w in result.report.warnings), result.report.warnings
    assert result.model.a.out_channels == 16
    assert torch.equal(result.model.a.weight, before["a.weight"])
    assert torch.equal(result.model.a.bias, before["a.bias"])
    kept = result.model.b.out_channels
    assert kept < 16 and result.model.b.in_channels == 16
    assert int((result.model.b.weight.abs().sum((0, 2, 3)) == 0).sum()) == 0, "b's inputs from a are not masked"


@pytest.mark.parametrize("method", ["unstructured", "nm"])
def test_tied_weights_are_pruned_once_and_stay_tied(tmp_path, method):
    """Unstructured and N:M pruning name a shared weight after the layer they prune (``out.weight``),
    which ``named_parameters()`` lists under its first name only: every lookup of a weight by name
    failed with KeyError (exit 1)."""
    torch.manual_seed(0)
    model = user_models.TiedLM().eval()
    ids = torch.randint(0, 50, (1, 5), generator=torch.Generator().manual_seed(1))
    sparsity = {"sparsity": 0.5} if method == "unstructured" else {}
    result = api.compress(model, ids, CompressConfig(methods=(method,), output=tmp_path / "t.onnx", **sparsity))

    assert result.report.status == "ok", result.report.warnings
    pruned = result.model
    assert pruned.out.weight is pruned.emb.weight, "the tie is kept"
    zero = pruned.out.weight == 0
    assert 0.3 <= float(zero.float().mean()) <= 0.7, "the shared weight is pruned"
    if method == "nm":  # 2:4 along the input dimension of the Linear that reads it
        assert bool((zero.view(50, -1, 4).sum(-1) >= 2).all())
    else:
        assert result.report.sparsity["achieved"] == pytest.approx(0.5, abs=0.01)


def test_channel_pruning_keeps_a_tie_and_counts_the_shared_weight_once(tmp_path):
    """Surgery gave each name of a tied weight its own sliced copy: the tie was lost and
    ``params.after`` counted the embedding twice."""
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (1, 5), generator=torch.Generator().manual_seed(1))
    config = CompressConfig(methods=("channel",), sparsity=0.5, output=tmp_path / "t.onnx")
    result = api.compress(user_models.TiedLM().eval(), ids, config)
    assert result.report.status == "ok", result.report.warnings
    pruned = result.model
    assert pruned.out.weight is pruned.emb.weight and pruned.emb.weight.shape[1] < 16
    assert result.report.params["after"] == sum(p.numel() for p in pruned.parameters())  # each tensor once


@pytest.mark.parametrize(
    "example, message",
    [
        (torch.randn(0, 3, 16, 16), "has shape (0, 3, 16, 16): every dimension must be at least 1"),
        (torch.full((1, 3, 16, 16), float("nan")), "holds NaN or infinite values"),
    ],
    ids=["empty-batch", "nan"],
)
def test_an_example_input_without_samples_or_with_nan_is_an_input_error(tmp_path, example, message):
    """A batch-0 example crashed the batch resizing with ZeroDivisionError (exit 1)."""
    from slimmer.errors import InputError

    model = user_models.BranchOnWidth().eval()
    with pytest.raises(InputError, match=re.escape(message)) as caught:
        api.compress(model, example, CompressConfig(output=tmp_path / "e.onnx"))
    assert caught.value.exit_code == 3
    assert list(tmp_path.iterdir()) == []


def test_an_example_inputs_file_with_an_empty_array_exits_3(cli, tiny_ckpt, tmp_path):
    path = tmp_path / "ex.npz"
    np.savez(path, x=np.zeros((0, 1, 8, 8), np.float32))
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--example-inputs", path, "--json")
    assert run.code == 3, run.stderr
    assert "has shape (0, 1, 8, 8): every dimension must be at least 1" in run.json()["error"]
