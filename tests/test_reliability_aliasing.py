"""Issue 19, kind 1 (RELIABILITY.md row 33): no path a run writes may be a path it reads or another
path it writes — compared through symbolic links, ``..`` and hard links; ``--force`` never replaces
an input."""

import os
from pathlib import Path

import pytest
from json_stdout import one_json

from slimmer.errors import ConfigError, OutputError
from slimmer.paths import check_paths


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("force", [False, True])
def test_output_equal_to_the_checkpoint_is_refused_even_with_force(cli, tiny_ckpt, force):
    before = tiny_ckpt.read_bytes()
    args = ["compress", tiny_ckpt, "--arch", "toy_models:Tiny", "-o", tiny_ckpt, "--json"]
    run = cli(*args, *(["--force"] if force else []))
    assert run.code == 2, run.stderr
    assert "would overwrite the input" in run.stderr and "--force never replaces an input" in run.stderr
    assert one_json(run.stdout)["exit_code"] == 2
    assert tiny_ckpt.read_bytes() == before and _files(tiny_ckpt.parent) == ["tiny.pt"]


def test_report_equal_to_output_is_refused(cli, tiny_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "-o", out, "--report", out, "--json")
    assert run.code == 2
    assert "-o/--output and --report both name" in run.stderr
    assert one_json(run.stdout)["status"] == "failed"
    assert _files(tmp_path) == ["tiny.pt"]


def test_report_equal_to_the_checkpoint_is_refused(cli, tiny_ckpt):
    before = tiny_ckpt.read_bytes()
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--report", tiny_ckpt, "--force")
    assert run.code == 2 and "--report" in run.stderr and "would overwrite the input" in run.stderr
    assert tiny_ckpt.read_bytes() == before and _files(tiny_ckpt.parent) == ["tiny.pt"]


def test_output_through_a_symlink_and_dotdot_is_refused(cli, tiny_ckpt, tmp_path):
    before = tiny_ckpt.read_bytes()
    (tmp_path / "sub").mkdir()
    link = tmp_path / "sub" / "link.onnx"
    link.symlink_to(tiny_ckpt)
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "-o", link, "--force")
    assert run.code == 2 and f"resolves to {tiny_ckpt}" in run.stderr
    dotted = tmp_path / "sub" / ".." / "tiny.pt"
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--report", dotted, "--force")
    assert run.code == 2 and "would overwrite the input" in run.stderr
    assert tiny_ckpt.read_bytes() == before and link.is_symlink()
    assert _files(tmp_path) == ["sub", "tiny.pt"] and _files(tmp_path / "sub") == ["link.onnx"]


def test_hard_link_of_the_checkpoint_is_refused(cli, tiny_ckpt, tmp_path):
    twin = tmp_path / "twin.onnx"
    os.link(tiny_ckpt, twin)
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "-o", twin, "--force")
    assert run.code == 2 and "would overwrite the input" in run.stderr
    assert twin.read_bytes() == tiny_ckpt.read_bytes()


def test_data_file_as_output_is_refused(cli, tiny_ckpt, tmp_path):
    import numpy as np

    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((20, 8, 8), np.uint8), y=np.zeros(20, np.int64))
    before = data.read_bytes()
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--data", data, "--report", data, "--force")
    assert run.code == 2 and str(data) in run.stderr
    assert data.read_bytes() == before


def test_plan_name_colliding_with_the_report_is_refused(cli, tiny_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "-o", out, "--report", tmp_path / "m.onnx.plan.json")
    assert run.code == 2 and "both name" in run.stderr
    assert _files(tmp_path) == ["tiny.pt"]


def test_check_paths_interface(tmp_path):
    src = tmp_path / "in.pt"
    src.write_bytes(b"x")
    check_paths([src], {"-o": tmp_path / "a.onnx", "--report": tmp_path / "a.json"}, force=False)
    with pytest.raises(ConfigError):
        check_paths([src], {"-o": tmp_path / "a.onnx", "--report": tmp_path / "." / "a.onnx"}, force=True)
    with pytest.raises(ConfigError):
        check_paths([src], {"-o": src}, force=True)
    (tmp_path / "old.onnx").write_bytes(b"old")
    with pytest.raises(OutputError):
        check_paths([src], {"-o": tmp_path / "old.onnx"}, force=False)
    check_paths([src], {"-o": tmp_path / "old.onnx"}, force=True)
