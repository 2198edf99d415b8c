"""Issue 19, kind 10 (RELIABILITY.md row 42): file names that are not valid UTF-8 work end to end —
compress, verify and bench read and write them as bytes."""

import os
import sys

import pytest
import torch
import toy_models
from json_stdout import one_json

pytestmark = pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse non-UTF-8 names")


def test_non_utf8_checkpoint_and_output_names(cli, tmp_path):
    ckpt = tmp_path / os.fsdecode(b"w\xff\xfe.pt")
    out = tmp_path / os.fsdecode(b"out\xe9.onnx")
    torch.save(toy_models.Tiny().state_dict(), ckpt)
    run = cli("compress", ckpt, "--arch", "toy_models:Tiny", "-o", out, "--exporter", "legacy", "--json")
    assert run.code == 0, run.stderr
    report = one_json(run.stdout)
    assert report["verification"]["passed"] is True and report["onnx"]["path"] == str(out)
    names = sorted(os.listdir(os.fsencode(tmp_path)))
    assert names == [b"out\xe9.onnx", b"out\xe9.onnx.report.json", b"w\xff\xfe.pt"]
    run = cli("verify", ckpt, out, "--arch", "toy_models:Tiny", "--json")
    assert run.code == 5 and one_json(run.stdout)["passed"] is False  # the graph is pruned: see the hint
    run = cli("bench", out, "--warmup", "0", "--pairs", "2", "--json")
    assert run.code == 0, run.stderr


def test_non_utf8_safetensors(cli, tmp_path):
    from safetensors.torch import save

    ckpt = tmp_path / os.fsdecode(b"w\xff.safetensors")
    ckpt.write_bytes(save(toy_models.Tiny().state_dict()))
    run = cli("inspect", ckpt, "--arch", "toy_models:Tiny", "--json")
    assert run.code == 0, run.stderr
    assert one_json(run.stdout)["input"]["format"] == "safetensors"
