"""Verification figures and ``slimmer verify`` (RELIABILITY.md rows 18, 19, 24, 31)."""

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from slimmer.export.verify import compare

pytestmark = pytest.mark.xdist_group("test_verify")  # one worker builds the module's `exported` once


def test_nan_never_equals_nan():
    a = np.array([1.0, np.nan])
    check = compare("logits", 1, a, a.copy(), atol=1e-4, rtol=1e-3)
    assert not check.finite and not check.passed and "non-finite" in check.reason


def test_atol_and_rtol_together():
    want = np.array([1000.0, 0.0])
    assert compare("y", 1, want + [0.5, 0.0], want, atol=1e-4, rtol=1e-3).passed  # 0.5 ≤ 0.1 + 1
    c = compare("y", 1, want + [2.0, 0.0], want, atol=1e-4, rtol=1e-3)
    assert not c.passed and c.max_abs_diff == 2.0 and c.max_rel_diff == pytest.approx(2.0 / 1000)
    small = np.array([0.5, 0.0])  # scale below 1: atol is absolute
    assert not compare("y", 1, small + [0.0, 2e-4], small, atol=1e-4, rtol=1e-3).passed
    assert compare("y", 1, small + [0.0, 9e-5], small, atol=1e-4, rtol=1e-3).passed


def test_atol_follows_the_output_scale():
    # inception_v3 with random weights: logits of ~1e9 whose float32 rounding leaves ~1e2 near zero
    want = np.array([2.0e9, -1.5e9, 3.0])
    got = want + [100.0, -50.0, 100.0]
    c = compare("logits", 3, got, want, atol=1e-4, rtol=1e-3)
    assert c.passed and c.max_rel_diff == pytest.approx(100.0 / 2.0e9)
    assert not compare("logits", 3, want + [0, 0, 3e5], want, atol=1e-4, rtol=1e-3).passed


def test_shape_mismatch_fails():
    c = compare("y", 2, np.zeros((2, 3)), np.zeros((2, 4)), atol=1, rtol=1)
    assert not c.passed and "shape" in c.reason


@pytest.fixture(scope="module")
def exported(shared_cli, resnet20_state, tmp_path_factory):
    """The resnet20 checkpoint (``r20`` holds the same bytes) exported once; the tests below only read it."""
    out = tmp_path_factory.mktemp("exported") / "g.onnx"
    assert shared_cli("compress", resnet20_state, "--arch", "resnet20-fmnist", "--sparsity", "0.0", "-o", out).code == 0
    return out


def test_verify_command_passes_on_its_own_export(cli, r20, exported):
    run = cli("verify", r20, exported, "--arch", "resnet20-fmnist", "--json")
    assert run.code == 0, run.stderr
    assert run.json()["passed"] is True and "passed" in run.stderr


def test_verify_command_exits_5_against_a_different_model(cli, r20, exported, tmp_path):
    sd = torch.load(r20, weights_only=True)
    sd["fc.bias"] += 1.0
    other = tmp_path / "other.pt"
    torch.save(sd, other)
    run = cli("verify", other, exported, "--arch", "resnet20-fmnist")
    assert run.code == 5 and "FAILED" in run.stderr and "max abs diff" in run.stderr


def _external_model(tmp_path, location: str):
    t = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("float_data")
    for k, v in (("location", location), ("offset", "0"), ("length", "4")):
        e = t.external_data.add()
        e.key, e.value = k, v
    node = helper.make_node("Add", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [t],
    )
    path = tmp_path / "ext.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink", "missing"])
def test_row24_external_data_outside_or_missing_is_refused(cli, r20, tmp_path, kind):
    secret = tmp_path.parent / f"secret-{kind}.bin"
    secret.write_bytes(b"\x00" * 4)
    location = {"parent": f"../{secret.name}", "absolute": str(secret), "symlink": "link.bin", "missing": "gone.bin"}[
        kind
    ]
    if kind == "symlink":
        os.symlink(secret, tmp_path / "link.bin")
    path = _external_model(tmp_path, location)
    run = cli("verify", r20, path, "--arch", "resnet20-fmnist")
    assert run.code == 3
    expected = {
        "parent": "outside its folder",
        "absolute": "outside its folder",
        "symlink": "symbolic link",
        "missing": "is missing",
    }[kind]
    assert expected in run.stderr


def test_row31_wrong_input_rank_is_a_clear_error(cli, r20, exported):
    run = cli("verify", r20, exported, "--arch", "resnet20-fmnist", "--input-shape", "1,28,28")
    assert run.code == 3
    assert "invalid rank" in run.stderr and "expects 4" in run.stderr


def test_verify_missing_onnx_file(cli, r20, tmp_path):
    run = cli("verify", r20, tmp_path / "none.onnx", "--arch", "resnet20-fmnist")
    assert run.code == 3 and "no such ONNX file" in run.stderr


def test_exported_file_is_valid_onnx_without_source_paths(exported):
    model = onnx.load(str(exported))
    onnx.checker.check_model(model)
    keys = {p.key for node in model.graph.node for p in node.metadata_props}
    assert "pkg.torch.onnx.stack_trace" not in keys and "namespace" in keys
