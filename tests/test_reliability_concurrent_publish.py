"""Issue 19, kind 2 (RELIABILITY.md row 34): without ``--force``, publishing is no-clobber at the
moment of publishing. A run that finds its output name taken when it finishes exits 3, leaves the
other run's file as it was and removes its own temporary file; nothing of it remains."""

import threading

import pytest
from json_stdout import one_json

import slimmer.api
import slimmer.stages
from slimmer.errors import OutputError
from slimmer.export.files import commit, write_atomic


def test_commit_without_replace_never_overwrites(tmp_path):
    final = tmp_path / "m.onnx"
    final.write_bytes(b"FIRST RUN")
    temp = tmp_path / ".m.onnx.abc.partial"
    temp.write_bytes(b"SECOND RUN")
    with pytest.raises(OutputError) as info:
        commit(temp, final, replace=False)
    assert info.value.exit_code == 3 and "another run wrote it" in str(info.value)
    assert final.read_bytes() == b"FIRST RUN" and not temp.exists()


def test_only_one_of_many_racing_writers_publishes(tmp_path):
    final = tmp_path / "r.json"
    outcomes: list[str] = []

    def writer(i: int) -> None:
        try:
            write_atomic(final, f"writer {i}".encode(), replace=False)
            outcomes.append(f"won {i}")
        except OutputError:
            outcomes.append("lost")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("lost") == 7
    assert final.read_text() == f"writer {winners[0].split()[1]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_the_run_that_publishes_second_exits_3_and_leaves_nothing(cli, tiny_ckpt, monkeypatch, partial_files):
    out = tiny_ckpt.with_name("tiny.slim.onnx")
    real = slimmer.stages.verify_onnx

    def other_run_finishes_first(*args, **kwargs):
        out.write_bytes(b"THE OTHER RUN'S FILE")  # appears after this run's start-up checks passed
        return real(*args, **kwargs)

    monkeypatch.setattr(slimmer.stages, "verify_onnx", other_run_finishes_first)
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--exporter", "legacy", "--json")
    assert run.code == 3, run.stderr
    assert "already exists: another run wrote it" in run.stderr
    assert one_json(run.stdout)["exit_code"] == 3
    assert out.read_bytes() == b"THE OTHER RUN'S FILE"
    assert partial_files(tiny_ckpt.parent) == []
    assert sorted(p.name for p in tiny_ckpt.parent.iterdir()) == ["tiny.pt", "tiny.slim.onnx"]


def test_with_force_the_last_run_replaces(cli, tiny_ckpt, monkeypatch):
    out = tiny_ckpt.with_name("tiny.slim.onnx")
    real = slimmer.stages.verify_onnx

    def other_run_finishes_first(*args, **kwargs):
        out.write_bytes(b"THE OTHER RUN'S FILE")
        return real(*args, **kwargs)

    monkeypatch.setattr(slimmer.stages, "verify_onnx", other_run_finishes_first)
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--exporter", "legacy", "--force", "--json")
    assert run.code == 0, run.stderr
    report = one_json(run.stdout)
    import hashlib

    assert report["onnx"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
