"""``compress --quantize int8``: the verified float file, then its int8 file, gated like compress."""

from __future__ import annotations

import pytest
from quick_options import QUICK_EXPORT

LOOSE = ("--min-agreement", "0", "--min-cosine", "0", "--max-quantization-drop", "100", "--quantize-anyway")


def test_compress_then_int8_writes_both_files_and_reports_quantization(compress_json, r20, tmp_path, fmnist_like_npz):
    run, report = compress_json(
        r20, "--arch", "resnet20-fmnist", "--method", "channel", "--sparsity", "0.5", "--data", fmnist_like_npz,
        "--quantize", "int8", "--calibration-samples", "32", *LOOSE,
    )  # fmt: skip
    assert run.code == 0, run.stderr
    q = report["quantization"]
    for key in ("method", "calibration", "per_channel", "size_bytes_float", "size_bytes_int8", "agreement", "cosine",
                "accuracy_float", "accuracy_int8", "latency_ms_float", "latency_ms_int8"):  # fmt: skip
        assert key in q, key
    assert q["method"] == "int8" and q["kept"] == "int8"
    assert (tmp_path / "out.onnx").is_file() and (tmp_path / "out.int8.onnx").is_file()
    assert q["size_bytes_int8"] < q["size_bytes_float"]
    assert q["accuracy_float"] is not None  # the labelled held-out split of --data


def test_int8_accuracy_is_measured_on_the_same_held_out_images_as_the_float_accuracy(compress_json, r20, tmp_path):
    """The int8 row of the table sat beside the float accuracy but was measured on the first 512 held-out
    images only: 91.99% against 91.00% for the same float model in the demo."""
    import numpy as np

    rng = np.random.default_rng(1)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.integers(0, 256, (700, 28, 28), dtype=np.uint8), y=rng.integers(0, 10, 700))
    run, report = compress_json(
        r20, "--arch", "resnet20-fmnist", "--method", "channel", "--sparsity", "0.5", "--data", data,
        "--val-fraction", "0.8", "--finetune-steps", "0", "--quantize", "int8", "--calibration-samples", "32", *LOOSE,
        *QUICK_EXPORT,
    )  # fmt: skip
    assert run.code == 0, run.stderr
    q, acc = report["quantization"], report["accuracy"]
    assert acc["evaluation"]["samples"] == 560 and q["eval_samples"] == 560
    final = next(acc[k] for k in ("after_finetune", "after_reconstruct", "after_prune") if acc.get(k) is not None)
    assert q["accuracy_float"] == pytest.approx(final, abs=2 / 560)  # the same file: onnxruntime vs torch, ≤ 2 images


def test_a_failed_int8_gate_exits_5_with_no_int8_file(compress_json, r20, tmp_path, fmnist_like_npz):
    run, report = compress_json(
        r20, "--arch", "resnet20-fmnist", "--data", fmnist_like_npz, "--quantize", "int8",
        "--calibration-samples", "16", "--min-cosine", "1.0", "--min-agreement", "0", *QUICK_EXPORT,
    )  # fmt: skip
    assert run.code == 5, run.stderr
    assert report["status"] == "failed" and "cosine" in report["error"]
    assert not (tmp_path / "out.int8.onnx").exists()
    assert not list(tmp_path.glob(".*.partial"))
    assert (tmp_path / "out.onnx").is_file()  # the float file was verified before int8 was tried


def test_int8_without_data_warns_that_random_calibration_is_unreliable(compress_json, r20, tmp_path):
    run, report = compress_json(r20, "--arch", "resnet20-fmnist", "--quantize", "int8", *LOOSE, *QUICK_EXPORT)
    assert run.code == 0, run.stderr
    assert any("random inputs" in w for w in report["warnings"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--quantize", "int4"), "--quantize"),
        (("--quantize", "int8", "--calibration-method", "magic"), "--calibration-method"),
        (("--quantize", "int8", "--min-agreement", "2"), "--min-agreement"),
    ],
)
def test_bad_int8_options_exit_2_before_any_work(compress_json, r20, tmp_path, flags, message):
    run, report = compress_json(r20, "--arch", "resnet20-fmnist", *flags)
    assert run.code == 2
    assert message in report["error"]
    assert not list(tmp_path.glob("*.onnx"))


def test_an_existing_int8_output_is_refused_without_force(compress_json, r20, tmp_path):
    (tmp_path / "out.int8.onnx").write_bytes(b"keep me")
    run, report = compress_json(r20, "--arch", "resnet20-fmnist", "--quantize", "int8")
    assert run.code == 3
    assert (tmp_path / "out.int8.onnx").read_bytes() == b"keep me"
    assert not (tmp_path / "out.onnx").exists()


def test_an_interruption_during_int8_names_the_float_file_already_written(compress_json, r20, tmp_path, monkeypatch):
    """The float file is published before int8 starts; an interruption there said "no output was written"."""

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("slimmer.quantize_run.after_compress", stop)
    run, report = compress_json(r20, "--arch", "resnet20-fmnist", "--quantize", "int8", *LOOSE, *QUICK_EXPORT)
    assert run.code == 130
    assert (tmp_path / "out.onnx").is_file() and not (tmp_path / "out.int8.onnx").exists()
    assert report["error"] == f"interrupted; written before it: {tmp_path / 'out.onnx'}"
