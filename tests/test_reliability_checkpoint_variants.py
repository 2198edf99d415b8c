"""Issue 19, kinds 8, 9 and 13 (RELIABILITY.md rows 38, 39): valid checkpoints that differ in harmless
ways are accepted with a note — no BatchNorm ``num_batches_tracked``, numpy scalars beside the
weights, constant ``-inf`` buffers (in the file or non-persistent) — while NaN stays refused."""

import numpy as np
import pytest
import torch
import toy_models
from json_stdout import one_json


def _compress(cli, path, arch, *extra):
    return cli("compress", path, "--arch", arch, "--exporter", "legacy", "--json", *extra)


def test_kind8_missing_num_batches_tracked_is_accepted_with_a_note(cli, tmp_path):
    sd = {k: v for k, v in toy_models.Tiny().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pt")
    run = _compress(cli, tmp_path / "old.pt", "toy_models:Tiny")
    assert run.code == 0, run.stderr
    assert any("num_batches_tracked" in w and "absent" in w for w in one_json(run.stdout)["warnings"])
    assert (tmp_path / "old.slim.onnx").is_file()


def test_kind8_other_missing_keys_are_still_refused(cli, tmp_path):
    sd = {k: v for k, v in toy_models.Tiny().state_dict().items() if k != "bn.running_var"}
    torch.save(sd, tmp_path / "bad.pt")
    run = _compress(cli, tmp_path / "bad.pt", "toy_models:Tiny")
    assert run.code == 3 and "1 missing keys (first: bn.running_var)" in run.stderr


@pytest.mark.parametrize("arch", ["toy_models:CausalMask", "toy_models:causal_mask_nonpersistent"])
def test_kind9_constant_minus_inf_buffer_is_accepted(cli, tmp_path, arch):
    model = toy_models.CausalMask() if arch.endswith("CausalMask") else toy_models.causal_mask_nonpersistent()
    torch.save(model.state_dict(), tmp_path / "attn.pt")
    assert ("mask" in model.state_dict()) == arch.endswith("CausalMask")
    run = _compress(cli, tmp_path / "attn.pt", arch)
    assert run.code == 0, run.stderr
    assert one_json(run.stdout)["verification"]["passed"] is True
    assert (tmp_path / "attn.slim.onnx").is_file()


def test_kind9_nan_in_a_buffer_is_still_refused(cli, tmp_path):
    sd = toy_models.Tiny().state_dict()
    sd["bn.running_mean"][1] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    run = _compress(cli, tmp_path / "nan.pt", "toy_models:Tiny")
    assert run.code == 3 and "buffer 'bn.running_mean' holds 1 NaN values" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pt"]


def test_kind9_inf_in_a_parameter_is_still_refused(cli, tmp_path):
    sd = toy_models.Tiny().state_dict()
    sd["fc.bias"][0] = float("-inf")
    torch.save(sd, tmp_path / "inf.pt")
    run = _compress(cli, tmp_path / "inf.pt", "toy_models:Tiny")
    assert run.code == 3 and "tensor 'fc.bias' holds 1 NaN/Inf values" in run.stderr


def test_kind13_numpy_scalars_beside_the_weights_are_accepted(cli, tmp_path):
    ckpt = {
        "state_dict": toy_models.Tiny().state_dict(),
        "best_acc": np.float64(0.913),
        "epoch": 12,
        "dtype": np.dtype("float32"),
    }
    torch.save(ckpt, tmp_path / "train.pt")
    run = _compress(cli, tmp_path / "train.pt", "toy_models:Tiny")
    assert run.code == 0, run.stderr
    warnings = one_json(run.stdout)["warnings"]
    assert any("numpy values beside the weights were ignored: best_acc, dtype" in w for w in warnings)


def test_kind13_other_globals_are_still_refused(cli, tmp_path):
    ckpt = {"state_dict": toy_models.Tiny().state_dict(), "model": toy_models.Tiny()}
    torch.save(ckpt, tmp_path / "mod.pt")
    run = _compress(cli, tmp_path / "mod.pt", "toy_models:Tiny")
    assert run.code == 3 and "toy_models.Tiny" in run.stderr and "Refused" in run.stderr


def test_tied_weights_stored_once_as_safetensors_save_model_writes_them_are_accepted(cli, tmp_path):
    """``safetensors.torch.save_model`` keeps one name of a shared tensor; the other was a missing key (exit 3)."""
    import user_models
    from safetensors.torch import load_file, save_model

    torch.manual_seed(0)
    model = user_models.TiedLM()
    save_model(model, str(tmp_path / "tied.safetensors"))
    stored = load_file(str(tmp_path / "tied.safetensors"))
    assert ("emb.weight" in stored) != ("out.weight" in stored), "one name of the two is stored"
    run = cli(
        "compress", tmp_path / "tied.safetensors", "--arch", "user_models:TiedLM",
        "--input", "ids:int64[1,5]:0..49", "--json",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    report = one_json(run.stdout)
    assert any("a tied weight the checkpoint stores once" in w for w in report["warnings"])
    assert report["params"]["before"] == sum(p.numel() for p in model.parameters())


def test_a_missing_key_that_is_not_tied_is_still_refused(cli, tmp_path):
    import user_models
    from safetensors.torch import save_file

    state = {k: v for k, v in user_models.TiedLM().state_dict().items() if k not in ("emb.weight", "out.weight")}
    save_file(state, str(tmp_path / "cut.safetensors"))
    ckpt = tmp_path / "cut.safetensors"
    run = cli("compress", ckpt, "--arch", "user_models:TiedLM", "--input", "ids:int64[1,5]:0..49")
    assert run.code == 3 and "2 missing keys" in run.stderr
