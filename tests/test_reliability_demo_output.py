"""Issue 19, kind 3 (RELIABILITY.md row 35): ``slimmer demo -o`` replaces only what an earlier demo
wrote; an unrelated file, a dangling symbolic link, or a file where a folder should be is refused."""

import hashlib
import json
import os

from json_stdout import one_json

from slimmer.bundled import DEMO_WEIGHTS, bundled_file
from slimmer.paths import written_by_demo


def test_demo_refuses_an_unrelated_existing_file(cli, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("my notes")
    run = cli("demo", "-o", out, "--json")
    assert run.code == 3 and "already exists" in run.stderr and "--force" in run.stderr
    assert one_json(run.stdout)["exit_code"] == 3
    assert out.read_text() == "my notes" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_demo_refuses_a_dangling_symlink(cli, tmp_path):
    link = tmp_path / "out.onnx"
    link.symlink_to(tmp_path / "elsewhere" / "target.onnx")
    run = cli("demo", "-o", link)
    assert run.code == 3 and "a symbolic link to" in run.stderr
    assert link.is_symlink() and not link.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_demo_output_under_a_file_is_exit_3(cli, tmp_path):
    blocker = tmp_path / "FILE"
    blocker.write_text("x")
    run = cli("demo", "-o", blocker / "out.onnx", "--json")
    assert run.code == 3 and f"{blocker} is a file, not a folder" in run.stderr
    assert one_json(run.stdout)["exit_code"] == 3
    assert blocker.read_text() == "x"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_what_counts_as_the_demos_own_output(tmp_path):
    weights = bundled_file(DEMO_WEIGHTS)
    out = tmp_path / "d.onnx"
    assert written_by_demo(out, weights)  # nothing there yet
    out.write_bytes(b"onnx bytes")
    assert not written_by_demo(out, weights)  # a file without the demo's report
    report = tmp_path / "d.onnx.report.json"
    report.write_text(json.dumps({"input": {"sha256": _sha(weights)}, "onnx": {"sha256": _sha(out)}}))
    assert written_by_demo(out, weights)
    out.write_bytes(b"edited since")  # the file is no longer the one the demo reported
    assert not written_by_demo(out, weights)
    out.unlink()
    os.symlink(tmp_path / "nowhere", out)
    assert not written_by_demo(out, weights)


def test_an_int8_file_at_the_demos_int8_name_counts_only_when_its_report_records_it(tmp_path):
    """The demo also writes ``<stem>.int8.onnx``; an unrelated file there was replaced without a word."""
    weights = bundled_file(DEMO_WEIGHTS)
    out, int8 = tmp_path / "d.onnx", tmp_path / "d.int8.onnx"
    int8.write_bytes(b"someone's int8 model")
    assert not written_by_demo(out, weights)  # nothing else there: not the demo's, so not replaced
    report = tmp_path / "d.onnx.report.json"
    recorded = {"input": {"sha256": _sha(weights)}, "quantization": {"kept": "float", "sha256_int8": None}}
    report.write_text(json.dumps(recorded))
    assert not written_by_demo(out, weights)  # the report kept the float file: this int8 file is not its
    recorded["quantization"] = {"kept": "int8", "sha256_int8": _sha(int8)}
    report.write_text(json.dumps(recorded))
    assert written_by_demo(out, weights)


def test_the_demo_leaves_an_unrelated_int8_file_alone(cli, tmp_path):
    out = tmp_path / "d.onnx"
    (tmp_path / "d.int8.onnx").write_bytes(b"keep me")
    run = cli("demo", "-o", out, "--json")
    assert run.code == 3 and "d.int8.onnx" in run.json()["error"]
    assert (tmp_path / "d.int8.onnx").read_bytes() == b"keep me" and sorted(os.listdir(tmp_path)) == ["d.int8.onnx"]
