"""Accuracy is measured on the whole official test split by default; the report says on how many samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import toy_models

from slimmer.stats import accuracy
from slimmer.train.data import HELD_OUT_EVAL_SAMPLES, load_data

TEST_IMAGES = HELD_OUT_EVAL_SAMPLES + 100  # more than the held-out cap, so the whole split is visibly used


def _idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def idx_folder(tmp_path) -> Path:
    """An IDX folder (MNIST layout) of 8×8 images: 256 training, 2,100 test, labels 0-9."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    folder.mkdir()
    for prefix, n in (("train", 256), ("t10k", TEST_IMAGES)):
        _idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 8, 8)))
        _idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return folder


def _tiny_accuracy(ckpt: Path, data: Path, n: int) -> float:
    model = toy_models.Tiny()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    splits = load_data(str(data), (1, 1, 8, 8), (0.0,), (1.0,))
    return accuracy(model.eval(), splits.eval.x[:n], splits.eval.y[:n])


def test_an_official_test_split_is_evaluated_whole_by_default(compress_json, tiny_ckpt, idx_folder):
    run, rep = compress_json(tiny_ckpt, "--arch", "toy_models:Tiny", "--data", idx_folder)
    assert run.code == 0, run.stderr
    assert rep["accuracy"]["evaluation"] == {
        "samples": TEST_IMAGES,
        "split_size": TEST_IMAGES,
        "split": "official test split",
    }
    assert rep["accuracy"]["before"] == pytest.approx(_tiny_accuracy(tiny_ckpt, idx_folder, TEST_IMAGES), abs=1e-12)


def test_an_explicit_eval_samples_wins(compress_json, tiny_ckpt, idx_folder):
    run, rep = compress_json(tiny_ckpt, "--arch", "toy_models:Tiny", "--data", idx_folder, "--eval-samples", "300")
    assert run.code == 0, run.stderr
    assert rep["accuracy"]["evaluation"]["samples"] == 300
    assert rep["accuracy"]["evaluation"]["split_size"] == TEST_IMAGES
    assert rep["accuracy"]["before"] == pytest.approx(_tiny_accuracy(tiny_ckpt, idx_folder, 300), abs=1e-12)


def test_a_held_out_split_is_capped_by_default(compress_json, tiny_ckpt, tmp_path):
    rng = np.random.default_rng(1)
    npz = tmp_path / "data.npz"
    np.savez(npz, x=rng.integers(0, 256, (2500, 8, 8), dtype=np.uint8), y=rng.integers(0, 10, 2500))
    run, rep = compress_json(tiny_ckpt, "--arch", "toy_models:Tiny", "--data", npz, "--val-fraction", "0.9")
    assert run.code == 0, run.stderr
    assert rep["accuracy"]["evaluation"] == {
        "samples": HELD_OUT_EVAL_SAMPLES,
        "split_size": 2250,
        "split": "held out (0.9 of --data)",
    }


@pytest.fixture
def own_labels_npz(tiny_ckpt, tmp_path) -> Path:
    """400 images of varied brightness labelled with the Tiny checkpoint's own predictions (accuracy
    before pruning: exactly 1.0), so pruning 70% of its weights visibly costs accuracy."""
    model = toy_models.Tiny()
    model.load_state_dict(torch.load(tiny_ckpt, weights_only=True))
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, (400, 8, 8)) * rng.uniform(0, 1, (400, 1, 1))).astype(np.uint8)
    with torch.no_grad():
        y = model.eval()(torch.from_numpy(x).float().div(255).unsqueeze(1)).argmax(1).numpy()
    path = tmp_path / "own.npz"
    np.savez(path, x=x, y=y)
    return path


GUARDED = ("--arch", "toy_models:Tiny", "--sparsity", "0.7", "--no-reconstruct")


def test_max_accuracy_drop_passes_within_and_fails_beyond_with_nothing_written(cli, tiny_ckpt, own_labels_npz):
    out = tiny_ckpt.parent / "out.onnx"
    flags = [*GUARDED, "--data", own_labels_npz, "-o", out, "--json"]
    ok = cli("compress", tiny_ckpt, *flags, "--max-accuracy-drop", "100")
    assert ok.code == 0, ok.stderr
    acc = ok.json()["accuracy"]
    assert acc["before"] == 1.0 and acc["after_prune"] < 1.0
    drop = 100 * (1.0 - acc["after_prune"])
    assert acc["drop_points"] == pytest.approx(drop, abs=1e-3) and acc["max_drop_points"] == 100
    assert out.is_file()

    for f in (out, out.with_name(out.name + ".report.json")):
        f.unlink()
    limit = round(drop / 2, 2)
    failed = cli("compress", tiny_ckpt, *flags, "--max-accuracy-drop", str(limit))
    assert failed.code == 5, failed.stderr
    rep = failed.json()
    assert rep["status"] == "failed" and rep["exit_code"] == 5 and rep["onnx"]["path"] is None
    assert f"accuracy dropped {drop:.2f} points" in rep["error"]
    assert f"more than --max-accuracy-drop {limit:g} by {drop - limit:.2f}" in rep["error"]
    assert rep["accuracy"]["drop_points"] == pytest.approx(drop, abs=1e-3)
    assert rep["accuracy"]["max_drop_points"] == limit
    # as for every acceptance failure: no ONNX file (nor its temporary), the report says why
    assert sorted(p.name for p in tiny_ckpt.parent.iterdir()) == ["out.onnx.report.json", "own.npz", "tiny.pt"]


@pytest.mark.parametrize("data", [None, "unlabelled"])
def test_max_accuracy_drop_without_labelled_data_is_a_usage_error(cli, tiny_ckpt, tmp_path, data):
    flags = ["--data", tmp_path / "x.npz"] if data else []
    if data:
        np.savez(tmp_path / "x.npz", x=np.zeros((64, 8, 8), dtype=np.uint8))
    before = sorted(p.name for p in tmp_path.iterdir())
    run = cli("compress", tiny_ckpt, *GUARDED, *flags, "--max-accuracy-drop", "1", "-o", tmp_path / "o.onnx", "--json")
    assert run.code == 2, run.stderr
    assert "--max-accuracy-drop needs label" in run.json()["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_accuracy_gated_is_the_exported_models_after_batchnorm_re_estimation(cli, tiny_ckpt, own_labels_npz):
    """Channel pruning re-estimates BatchNorm statistics after surgery; the accuracy figures (and the
    --max-accuracy-drop gate on them) were taken before it, on a model that is not the one exported."""
    import onnxruntime as ort

    out = tiny_ckpt.parent / "bn.onnx"
    flags = ("--arch", "toy_models:Tiny", "--method", "channel", "--sparsity", "0.5", "--no-reconstruct")
    run = cli("compress", tiny_ckpt, *flags, "--data", own_labels_npz, "--finetune-steps", "0", "-o", out, "--json")
    assert run.code == 0, run.stderr
    rep = run.json()
    assert rep["finetune"]["bn_recalibrated"] is True
    acc = rep["accuracy"]
    splits = load_data(str(own_labels_npz), (1, 1, 8, 8), (0.0,), (1.0,))
    n = rep["accuracy"]["evaluation"]["samples"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: splits.eval.x[:n].numpy()})[0]
    exported = float((logits.argmax(1) == splits.eval.y[:n].numpy()).mean())
    assert acc["drop_points"] == pytest.approx(100 * (acc["before"] - exported), abs=1e-3)
    assert acc["after_recalibrate"] == pytest.approx(exported, abs=1e-9)
    assert acc["after_recalibrate"] != acc["after_prune"], "the re-estimation changed the model here"
    assert "recover" in rep["timings_s"], "the re-estimation is not counted as export time"
