"""Issue 19, kinds 11 and 12 (RELIABILITY.md rows 40, 41): labels outside the model's classes, NaN in
``--data`` and NaN from the original model itself are refused before any work, naming the source."""

import numpy as np
import pytest
import torch
import toy_models
from json_stdout import one_json


def _npz(path, x, y=None):
    np.savez(path, x=x, **({"y": y} if y is not None else {}))
    return path


def test_kind11_labels_outside_the_classes(cli, tiny_ckpt, tmp_path):
    rng = np.random.default_rng(0)
    data = _npz(tmp_path / "d.npz", rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), rng.integers(0, 12, 40))
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--data", data, "--json")
    assert run.code == 3, run.stderr
    report = one_json(run.stdout)
    assert "labels range over 0..11, but the model has 10 outputs (classes 0..9)" in report["error"]
    assert "pruning" not in run.stderr  # refused before any work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "tiny.pt"]


def test_kind11_negative_labels(cli, tiny_ckpt, tmp_path):
    x = np.zeros((20, 8, 8), np.uint8)
    data = _npz(tmp_path / "d.npz", x, np.r_[np.full(10, -1), np.arange(10)])
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--data", data)
    assert run.code == 3 and "labels range over -1..9" in run.stderr


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.eye(10)[np.arange(40) % 10], "'y' has shape (40, 10); labels must be one class id per sample"),
        (np.full(40, 3.5), "'y' holds values that are not whole numbers"),
    ],
    ids=["one-hot", "fractional"],
)
def test_kind11_labels_that_are_not_class_ids(cli, tiny_ckpt, tmp_path, labels, message):
    """One-hot labels crashed the accuracy count (exit 1); fractional ones were silently truncated."""
    x = np.zeros((40, 8, 8), np.uint8)
    data = _npz(tmp_path / "d.npz", x, labels)
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--data", data, "--json")
    assert run.code == 3, run.stderr
    assert message in one_json(run.stdout)["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "tiny.pt"]


def test_kind12_nan_pixel_in_the_data_names_the_data(cli, tiny_ckpt, tmp_path):
    x = np.random.default_rng(0).random((30, 8, 8)).astype(np.float32)
    x[7, 3, 3] = np.nan
    data = _npz(tmp_path / "nan.npz", x, np.zeros(30, np.int64))
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--data", data, "--val-fraction", "1.0", "--json")
    assert run.code == 3, run.stderr
    error = one_json(run.stdout)["error"]
    assert f"--data {data}" in error and "1 non-finite values (NaN/Inf), in 1 samples" in error
    assert "onnxruntime" not in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.npz", "tiny.pt"]


def test_kind12_nan_from_the_model_itself_names_the_model(cli, tmp_path):
    torch.save(toy_models.LogOfNegative().state_dict(), tmp_path / "log.pt")
    run = cli("compress", tmp_path / "log.pt", "--arch", "toy_models:LogOfNegative", "--json")
    assert run.code == 3, run.stderr
    error = one_json(run.stdout)["error"]
    assert "the original model itself produces non-finite outputs" in error and "before any pruning" in error
    assert "onnxruntime" not in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.pt"]


def test_fine_tuning_asked_with_no_sample_left_to_train_on_exits_3(cli, tiny_ckpt, tmp_path):
    """One sample, all held out for evaluation: --finetune-steps 3 ran nothing, exit 0, no warning."""
    data = _npz(tmp_path / "one.npz", np.zeros((1, 8, 8), np.uint8), np.zeros(1, np.int64))
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--data", data, "--finetune-steps", "3", "--json")
    assert run.code == 3, run.stderr
    assert "no sample is left to fine-tune on (1 held out for evaluation)" in one_json(run.stdout)["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npz", "tiny.pt"]
