"""Issue 19, kind 15: the ``--seed`` promise states exactly what it covers (same machine, versions and
thread count) in ``--help`` and the README, and holds under those conditions."""

import hashlib
import re
from pathlib import Path

import pytest
from json_stdout import one_json

README = Path(__file__).parent.parent / "README.md"


@pytest.mark.parametrize("command", ["compress", "demo"])
def test_help_states_what_the_seed_covers(cli, command):
    run = cli(command, "--help")
    text = re.sub(r"[\s│]+", " ", run.stdout)
    assert run.code == 0
    assert "byte-identical files need the same seed, inputs, machine, versions and thread count" in text


def test_readme_states_what_the_seed_covers():
    text = " ".join(README.read_text().split())
    assert "the same number of threads (`OMP_NUM_THREADS`" in text
    assert "A different thread count (or CPU) changes the order of float additions" in text


def test_same_seed_same_threads_same_bytes(cli, tiny_ckpt, tmp_path):
    digests = []
    for name in ("a.onnx", "b.onnx"):
        run = cli(
            "compress",
            tiny_ckpt,
            "--arch",
            "toy_models:Tiny",
            "--exporter",
            "legacy",
            "--seed",
            "3",
            "--criterion",
            "random",
            "-o",
            tmp_path / name,
            "--json",
        )
        assert run.code == 0, run.stderr
        digests.append(one_json(run.stdout)["onnx"]["sha256"])
        assert digests[-1] == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    assert digests[0] == digests[1]
