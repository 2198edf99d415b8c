"""RELIABILITY.md rows not covered next to their code: 3, 5, 20, 23, 27."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimmer.zoo import ARCHITECTURES


@pytest.fixture
def pickled_module(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(ARCHITECTURES.get("resnet20-fmnist").build(), path)
    return path


@pytest.mark.parametrize("var", ["SLIMMER_TRUST_REMOTE_CODE", "TRUST_REMOTE_CODE", "HF_TRUST_REMOTE_CODE"])
def test_row3_trust_only_from_the_command_line(cli, pickled_module, monkeypatch, var):
    monkeypatch.setenv(var, "1")
    run = cli("compress", pickled_module, "--input-shape", "1,1,28,28")
    assert run.code == 3 and "Refused" in run.stderr


def test_row3_trusted_module_with_flag_compresses(cli, pickled_module):
    run = cli("compress", pickled_module, "--input-shape", "1,1,28,28", "--trust-remote-code", "--json")
    assert run.code == 0, run.stderr
    assert any("--trust-remote-code" in w for w in run.json()["warnings"])


def test_row5_torchscript_without_arch_is_refused_in_structural_mode(cli, tmp_path):
    model = ARCHITECTURES.get("resnet20-fmnist").build().eval()
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(model), tmp_path / "ts.pt")
    run = cli("compress", tmp_path / "ts.pt", "--method", "channel", "--trust-remote-code")
    assert run.code == 3 and "cannot be structurally pruned" in run.stderr and "--arch" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ts.pt"]


def _save_toy(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    import toy_models

    path = tmp_path / "dd.pt"
    torch.save(toy_models.DataDependent().state_dict(), path)
    return path


def test_row20_data_dependent_branch_fails_export_with_exit_4(cli, tmp_path):
    path = _save_toy(tmp_path)
    run = cli("compress", path, "--arch", "toy_models:DataDependent")
    assert run.code == 4, run.stderr
    assert "ONNX export failed" in run.stderr and "data-dependent" in run.stderr.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dd.pt"]


def test_row20_data_dependent_branch_cannot_be_captured_for_channels(cli, tmp_path):
    path = _save_toy(tmp_path)
    run = cli("compress", path, "--arch", "toy_models:DataDependent", "--method", "channel")
    assert run.code == 3, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dd.pt"]


def test_row23_missing_onnxscript_fails_before_any_work(cli, r20, monkeypatch):
    import importlib.util

    import slimmer.api

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    monkeypatch.setattr(slimmer.api, "load", lambda *a, **k: pytest.fail("loading started before the preflight"))
    run = cli("compress", r20, "--arch", "resnet20-fmnist")
    assert run.code == 3 and "onnxscript is not installed" in run.stderr


def test_row27_json_in_a_non_tty_subprocess(tiny_ckpt):
    tests = Path(__file__).parent  # the smallest classifier (toy_models.Tiny): the row is about the process
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests)]))
    proc = subprocess.run(
        [sys.executable, "-m", "slimmer", "compress", str(tiny_ckpt), "--arch", "toy_models:Tiny", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tiny_ckpt.parent,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout
    assert report["status"] == "ok"
    assert "\x1b[" not in proc.stdout and "\x1b[" not in proc.stderr
    assert "exporting ONNX" in proc.stderr and "verifying with onnxruntime" in proc.stderr


def test_legacy_exporter_verifies(cli, r20, tmp_path):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--exporter", "legacy", "-o", tmp_path / "l.onnx", "--json")
    assert run.code == 0, run.stderr
    assert run.json()["onnx"]["opset"] == 17 and run.json()["verification"]["passed"]


def test_row20_legacy_exporter_warns_that_only_the_traced_branch_is_exported(cli, tmp_path):
    path = _save_toy(tmp_path)
    run = cli("compress", path, "--arch", "toy_models:DataDependent", "--exporter", "legacy", "--json")
    warnings = run.json()["warnings"]
    assert any("only the branch taken by the example input" in w for w in warnings), warnings


class FFT2(torch.nn.Module):
    def forward(self, x):
        return torch.fft.fft2(x).abs()


def test_row21_op_unsupported_by_the_legacy_exporter_names_it(tmp_path):
    from slimmer.errors import ExportError
    from slimmer.export.onnx import export_onnx

    with pytest.raises(ExportError) as info:
        export_onnx(FFT2(), torch.randn(2, 3, 8, 8), tmp_path / "f.onnx", exporter="legacy")
    assert "fft" in str(info.value).lower() and info.value.exit_code == 4
    assert "--exporter dynamo" in info.value.hint
    assert list(tmp_path.iterdir()) == []
