"""``slimmer compress`` end to end through the CLI: exit codes, report, files present or absent."""

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from slimmer.export import verify as verify_mod

REPORT_KEYS = {
    "schema_version",
    "slimmer_version",
    "status",
    "exit_code",
    "input",
    "config",
    "params",
    "macs",
    "sparsity",
    "onnx",
    "verification",
    "accuracy",
    "latency_ms",
    "warnings",
}


def conv_linear_zero_fraction(onnx_path, names) -> float:
    model = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    arrays = [inits[n] for n in names if n in inits]
    assert len(arrays) == len(names), f"initializers not found: {set(names) - set(inits)}"
    return sum(int((a == 0).sum()) for a in arrays) / sum(a.size for a in arrays)


def test_compress_writes_verified_onnx_and_full_report(cli, r20, partial_files):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--sparsity", "0.8", "--criterion", "lamp", "--json")
    assert run.code == 0, run.stderr
    report = run.json()
    assert REPORT_KEYS <= set(report)
    assert report["status"] == "ok" and report["exit_code"] == 0
    out = r20.with_name("r20.slim.onnx")
    assert report["onnx"]["path"] == str(out) and out.is_file()
    assert report["onnx"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert report["onnx"]["size_bytes"] == out.stat().st_size
    assert report["input"]["sha256"] == hashlib.sha256(r20.read_bytes()).hexdigest()
    assert report["input"]["format"] == "state-zip"
    assert abs(report["sparsity"]["achieved"] - 0.8) <= 0.005
    assert set(report["sparsity"]["per_layer"]) >= {"conv1.weight", "fc.weight"}
    v = report["verification"]
    assert v["passed"] is True and v["max_abs_diff"] <= 1e-4 and 0 < v["cosine"] <= 1.0000001
    assert v["atol"] == 1e-4 and v["rtol"] == 1e-3
    assert {c["batch_size"] for c in v["outputs"]} == {1, 3}
    assert report["config"]["seed"] == 0 and report["config"]["criterion"] == "lamp"
    assert report["accuracy"] == {"before": None, "after_prune": None, "after_finetune": None}
    assert json.loads(out.with_name("r20.slim.onnx.report.json").read_text())["onnx"] == report["onnx"]
    assert report["macs"]["before"] == report["macs"]["after"] == 31_021_952
    assert partial_files(r20.parent) == []
    assert "\x1b[" not in run.stdout
    zeros = conv_linear_zero_fraction(out, list(report["sparsity"]["per_layer"]))
    assert abs(zeros - 0.8) <= 0.005


def test_json_mode_prints_exactly_one_object(cli, r20):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--sparsity", "0.3", "--json")
    assert run.code == 0
    decoder = json.JSONDecoder()
    obj, end = decoder.raw_decode(run.stdout)
    assert run.stdout[end:].strip() == "" and obj["status"] == "ok"


@pytest.mark.parametrize("value", ["1.0", "-0.1", "nan", "1.5", "inf"])
def test_row14_bad_sparsity_exits_2_and_writes_nothing(cli, r20, value):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--sparsity", value)
    assert run.code == 2
    assert "--sparsity must be a number in [0, 1)" in run.stderr
    assert sorted(p.name for p in r20.parent.iterdir()) == ["r20.pt"]


def test_row25_existing_output_kept_without_force(cli, r20, partial_files):
    out = r20.with_name("r20.slim.onnx")
    out.write_bytes(b"OLD")
    run = cli("compress", r20, "--arch", "resnet20-fmnist")
    assert run.code == 3 and "already exists" in run.stderr and "--force" in run.stderr
    assert out.read_bytes() == b"OLD"
    assert partial_files(r20.parent) == []


def test_row19_verification_failure_exits_5_and_leaves_no_output(cli, r20, partial_files, monkeypatch):
    real = verify_mod.named_arrays
    monkeypatch.setattr(verify_mod, "named_arrays", lambda out: [(n, o + 0.5) for n, o in real(out)])
    out = r20.with_name("r20.slim.onnx")
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--json")
    assert run.code == 5
    report = run.json()
    assert report["status"] == "failed" and report["exit_code"] == 5
    assert report["verification"]["passed"] is False
    assert report["verification"]["max_abs_diff"] == pytest.approx(0.5, abs=1e-3)
    assert "output" in report["error"] and "max abs diff 0.5" in report["error"]
    assert not out.exists() and report["onnx"]["path"] is None
    assert out.with_name("r20.slim.onnx.report.json").is_file()
    assert partial_files(r20.parent) == []


def test_keep_failed_keeps_artifact_under_a_failed_name(cli, r20, monkeypatch):
    real = verify_mod.named_arrays
    monkeypatch.setattr(verify_mod, "named_arrays", lambda out: [(n, o * np.nan) for n, o in real(out)])
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--keep-failed", "--json")
    assert run.code == 5
    assert "non-finite" in run.json()["error"]
    assert not r20.with_name("r20.slim.onnx").exists()
    kept = r20.with_name("r20.slim.onnx.FAILED-VERIFICATION")
    assert kept.is_file() and run.json()["onnx"]["path"] == str(kept)


def test_row15_sparsity_short_of_request_exits_5(cli, r20, monkeypatch):
    from slimmer.structures import unstructured

    monkeypatch.setattr(unstructured.MaskSet, "sparsity", property(lambda self: 0.2))
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--sparsity", "0.5", "--json")
    assert run.code == 5
    assert "sparsity not reached: requested 0.5000, achieved 0.2000" in run.json()["error"]
    assert not r20.with_name("r20.slim.onnx").exists()


def test_row22_opset_below_18_is_an_export_error(cli, r20, partial_files):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--opset", "13")
    assert run.code == 4
    assert "requested 13, produced 18" in run.stderr
    assert not r20.with_name("r20.slim.onnx").exists() and partial_files(r20.parent) == []


def test_explicit_supported_opset_is_written(cli, r20, tmp_path):
    out = tmp_path / "o18.onnx"
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "-o", out, "--opset", "18", "--json")
    assert run.code == 0, run.stderr
    assert run.json()["onnx"]["opset"] == 18
    assert [o.version for o in onnx.load(str(out)).opset_import if o.domain == ""] == [18]


def test_row28_same_seed_gives_identical_onnx_and_report(cli, r20, tmp_path):
    reports = []
    for name in ("a.onnx", "b.onnx"):
        run = cli(
            "compress",
            r20,
            "--arch",
            "resnet20-fmnist",
            "--criterion",
            "random",
            "--seed",
            "7",
            "-o",
            tmp_path / name,
            "--json",
        )
        assert run.code == 0
        reports.append(run.json())
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    for r in reports:
        r.pop("timings_s")
        r["onnx"].pop("path")
        r["config"].pop("output")
        r["config"].pop("report")
    assert reports[0] == reports[1]


def test_static_batch_verifies_at_the_given_batch(cli, r20, tmp_path):
    run = cli(
        "compress",
        r20,
        "--arch",
        "resnet20-fmnist",
        "--static-batch",
        "--input-shape",
        "2,1,28,28",
        "-o",
        tmp_path / "s.onnx",
        "--json",
    )
    assert run.code == 0, run.stderr
    assert {c["batch_size"] for c in run.json()["verification"]["outputs"]} == {2}
    dims = onnx.load(str(tmp_path / "s.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 1, 28, 28]


def test_unknown_arch_exits_2_with_suggestion(cli, r20):
    run = cli("compress", r20, "--arch", "resnet20-fmnsit")
    assert run.code == 2 and "Did you mean 'resnet20-fmnist'" in run.stderr


def test_state_dict_without_arch_exits_2(cli, r20):
    run = cli("compress", r20)
    assert run.code == 2 and "--arch" in run.stderr


def test_missing_model_file_exits_3(cli, tmp_path):
    run = cli("compress", tmp_path / "nope.pt", "--arch", "resnet20-fmnist")
    assert run.code == 3 and "no such file" in run.stderr


def test_errors_have_no_traceback_unless_debug(cli, r20):
    r20.write_bytes(b"")
    run = cli("compress", r20, "--arch", "resnet20-fmnist")
    assert run.code == 3 and "Traceback" not in run.stderr and "empty" in run.stderr
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--debug")
    assert run.code == 3 and "Traceback" in run.stderr


def test_internal_error_exits_1_and_says_bug(cli, r20, monkeypatch):
    import slimmer.assemble

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(slimmer.assemble, "count_macs", broken)  # MACs after pruning, in the report assembly
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--json")
    assert run.code == 1
    assert "internal error" in run.stderr and "bug" in run.stderr
    assert run.json()["exit_code"] == 1
    assert not r20.with_name("r20.slim.onnx").exists()
