"""Atomic outputs under hard faults, in real subprocesses (RELIABILITY.md rows 25, 26, 29)."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest


def wait_for_partial(proc: subprocess.Popen, folder: Path, timeout: float = 240) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(folder.glob(".*.partial"))
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"process ended before writing: {proc.returncode}\n{proc.stderr.read()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no temporary file appeared")


def test_row25_kill_9_during_export_keeps_old_output(r20, slimmer_process):
    out = r20.with_name("r20.slim.onnx")
    out.write_bytes(b"OLD ARTIFACT")
    proc = slimmer_process(["compress", r20, "--arch", "resnet20-fmnist", "--force"], r20.parent)
    wait_for_partial(proc, r20.parent)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert out.read_bytes() == b"OLD ARTIFACT"
    names = sorted(p.name for p in r20.parent.iterdir() if not p.name.startswith("."))
    assert names == ["r20.pt", "r20.slim.onnx"]  # the report was not written either


def test_row29_ctrl_c_exits_130_and_leaves_nothing(r20, slimmer_process):
    proc = slimmer_process(["compress", r20, "--arch", "resnet20-fmnist"], r20.parent)
    wait_for_partial(proc, r20.parent)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert sorted(p.name for p in r20.parent.iterdir()) == ["r20.pt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_row26_read_only_output_directory(cli, r20, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        run = cli("compress", r20, "--arch", "resnet20-fmnist", "-o", ro / "x.onnx")
        assert run.code == 3 and "not writable" in run.stderr
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_row26_missing_output_directory(cli, r20, tmp_path):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "-o", tmp_path / "nope" / "x.onnx")
    assert run.code == 3 and "does not exist" in run.stderr


def test_row26_write_failure_at_commit_cleans_up(cli, r20, monkeypatch, partial_files):
    import slimmer.export.files as files_mod

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files_mod.os, "replace", full_disk)
    monkeypatch.setattr(files_mod.os, "link", full_disk)  # the no-clobber publish (no --force) links
    run = cli("compress", r20, "--arch", "resnet20-fmnist")
    assert run.code == 3 and "No space left on device" in run.stderr and "r20.slim.onnx" in run.stderr
    assert partial_files(r20.parent) == []
    assert not r20.with_name("r20.slim.onnx").exists()


def test_row26_unwritable_directory_reported_even_as_root(cli, r20, tmp_path, monkeypatch):
    import slimmer.export.files as files_mod

    target = tmp_path / "locked"
    target.mkdir()
    real = os.access
    monkeypatch.setattr(files_mod.os, "access", lambda p, mode: False if Path(p) == target else real(p, mode))
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "-o", target / "x.onnx")
    assert run.code == 3 and f"{target} is not writable" in run.stderr
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("json_flag", [True, False])
def test_ctrl_c_while_the_command_line_is_still_importing(tmp_path, json_flag):
    """A Ctrl-C in the seconds torch takes to import ended in a traceback, and with --json in no JSON
    object. The interrupt is raised at the import of torch (where a real Ctrl-C lands), deterministically."""
    import json
    import sys

    child = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        f"sys.argv = ['slimmer', 'compress', 'model.pt'{', ' + repr('--json') if json_flag else ''}]\n"
        "from slimmer.entry import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "interrupted while starting" in proc.stderr
    if json_flag:
        (line,) = proc.stdout.splitlines()
        payload = json.loads(line)
        assert payload["exit_code"] == 130 and payload["status"] == "failed" and "interrupted" in payload["error"]
    else:
        assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []
