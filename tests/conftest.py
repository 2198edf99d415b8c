"""Shared fixtures: small checkpoints written to tmp_path, and a CLI runner that keeps stderr apart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from slimmer.cli import app
from slimmer.zoo import ARCHITECTURES


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist (``-n``), each worker gets its share of the cores for torch's intra-op threads
    (and, through OMP_NUM_THREADS, for the processes a test starts) instead of every worker using
    them all; an OMP_NUM_THREADS the caller set is left alone."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_the_cores_between_workers()

QUICK_RECON = ("--recon-samples", "64")
"""``compress`` with ``--data`` and no fine-tuning reconstructs pruned layers by least squares; in-process
tests use 64 calibration images instead of 512 to stay quick (same code path, a config field). Tests
marked ``full_reconstruction`` keep the default."""


@pytest.fixture(scope="session")
def resnet20_state(tmp_path_factory) -> Path:
    """A randomly initialized resnet20-fmnist state_dict (BN statistics perturbed so they matter)."""
    torch.manual_seed(0)
    model = ARCHITECTURES.get("resnet20-fmnist").build()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "r20.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def r20(tmp_path, resnet20_state) -> Path:
    """A private copy of the resnet20 checkpoint in this test's tmp_path (outputs land beside it)."""
    dst = tmp_path / "r20.pt"
    dst.write_bytes(resnet20_state.read_bytes())
    return dst


class Run:
    def __init__(self, result):
        self.result = result
        self.code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr

    def json(self) -> dict:
        return json.loads(self.stdout)


def _invoker(quick: bool):
    runner = CliRunner()

    def invoke(*args: str) -> Run:
        argv = [str(a) for a in args]
        if quick and argv[:1] == ["compress"] and "--recon-samples" not in argv and "--replay" not in argv:
            argv += QUICK_RECON
        return Run(runner.invoke(app, argv))

    return invoke


@pytest.fixture
def cli(request):
    return _invoker(quick="full_reconstruction" not in request.keywords)


@pytest.fixture(scope="session")
def shared_cli():
    """``cli`` for module- or session-scoped fixtures: a file built once (an export, say) and shared by
    tests that only read it."""
    return _invoker(quick=True)


@pytest.fixture
def compress_json(cli, tmp_path):
    """``compress_json(model, *flags)``: run ``slimmer compress MODEL --json -o <tmp>/out.onnx FLAGS``
    and return ``(Run, report dict or None)``; the output lands in this test's tmp_path unless
    ``-o`` is among the flags."""

    def invoke(model, *flags: str):
        argv = ["compress", str(model), "--json", *map(str, flags)]
        if "-o" not in argv and "--output" not in argv:
            argv += ["-o", str(tmp_path / "out.onnx")]
        run = cli(*argv)
        try:
            return run, run.json()
        except ValueError:
            return run, None

    return invoke


@pytest.fixture
def partial_files():
    """Lists the temporary files an interrupted or failed write could leave in a folder."""

    def find(folder: Path) -> list[Path]:
        return sorted(folder.glob(".*.partial"))

    return find


@pytest.fixture
def fmnist_like_npz(tmp_path) -> Path:
    """300 random 28×28 uint8 images with labels 0-9: enough for data criteria and fine-tuning tests."""
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, x=rng.integers(0, 256, (300, 28, 28), dtype=np.uint8), y=rng.integers(0, 10, 300))
    return path


def _sigint_as_in_a_terminal() -> None:
    """Run in the child before exec: a job started in the background by a non-interactive shell
    (``cmd &``, nohup, some CI runners) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler; a user pressing Ctrl-C in a terminal has the default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def slimmer_process():
    """Starts ``python -m slimmer ARGS`` in ``cwd`` as a real process (pipes, text), as from a terminal."""

    def start(args: list, cwd: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "slimmer", *map(str, args)],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_sigint_as_in_a_terminal,
        )

    return start


@pytest.fixture
def tiny_ckpt(tmp_path) -> Path:
    """A state_dict of ``toy_models.Tiny`` (1×8×8 inputs, 10 classes) in this test's tmp_path."""
    import toy_models

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(toy_models.Tiny().state_dict(), path)
    return path


from json_stdout import one_json  # noqa: E402,F401 - also importable directly (tests/json_stdout.py)
