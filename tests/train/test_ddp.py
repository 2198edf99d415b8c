"""A real 2-process gloo DDP run on CPU through torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["held", "regrow"])
def test_two_process_ddp_finetune_keeps_ranks_identical_and_masks(tmp_path, mode):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(tmp_path),
        mode,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert s0.keys() == s1.keys()
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    masks = torch.load(tmp_path / "masks.pt", weights_only=True)
    for name, mask in masks["final"].items():
        assert torch.count_nonzero(s0[name][~mask]) == 0, name
        assert torch.count_nonzero(s0[name]) == int(masks["first"][name].sum()), name  # the layer's count stays
    moved = any(not torch.equal(masks["final"][n], masks["first"][n]) for n in masks["first"])
    assert moved is (mode == "regrow")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world"] == 2 and report["world_size"] == 2 and report["steps_done"] == 15
    assert report["final_loss"] < report["initial_loss"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.pt", "rank0.pt", "rank1.pt", "report.json"]


def test_single_process_helpers_without_torchrun(monkeypatch):
    from slimmer.train import distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = distributed.init_from_env()
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(model, info) is model and distributed.unwrap(model) is model
    assert distributed.is_main()
    distributed.barrier()
    assert distributed.main_process_only(lambda v: v + 1)(1) == 2
