"""Issue 19, kind 4 (RELIABILITY.md row 36): with ``--json``, whatever the model, its builder or torch
write to stdout (Python ``print`` or file descriptor 1) goes to stderr; stdout holds one JSON object."""

import os
import subprocess
import sys
from pathlib import Path

from json_stdout import one_json

TESTS = Path(__file__).parent


def test_prints_and_fd1_writes_of_the_model_go_to_stderr(tiny_ckpt):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "slimmer",
            "compress",
            str(tiny_ckpt),
            "--arch",
            "toy_models:Chatty",
            "--exporter",
            "legacy",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tiny_ckpt.parent,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    report = one_json(proc.stdout)
    assert report["status"] == "ok" and report["exit_code"] == 0
    assert "building Chatty" in proc.stderr and "chatty forward" in proc.stderr
    assert "fd-level chatter" in proc.stderr and "fd-level chatter" not in proc.stdout
    assert sorted(p.name for p in tiny_ckpt.parent.iterdir()) == [
        "tiny.pt",
        "tiny.slim.onnx",
        "tiny.slim.onnx.report.json",
    ]


def test_prints_before_a_failure_stay_off_stdout(cli, tiny_ckpt):
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Chatty", "--input-shape", "1,3,8,8", "--json")
    assert run.code == 2, run.stderr  # the model fails on 3 channels: a wrong --input-shape
    report = one_json(run.stdout)
    assert report["exit_code"] == 2 and "fails on an input of shape" in report["error"]
    assert "building Chatty" in run.stderr
    assert sorted(p.name for p in tiny_ckpt.parent.iterdir()) == ["tiny.pt"]


def test_without_json_prints_are_left_alone(cli, tiny_ckpt):
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Chatty", "--input-shape", "1,3,8,8")
    assert run.code == 2 and "building Chatty" in run.stdout
