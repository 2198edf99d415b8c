"""``slimmer compress`` under torchrun: 2 CPU processes with gloo (RELIABILITY.md row 30)."""

import json
import subprocess
import sys

import onnx
import torch
from onnx import numpy_helper


def test_row30_two_process_gloo_finetune_only_rank0_writes(r20, fmnist_like_npz, tmp_path):
    out = tmp_path / "ddp.onnx"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "slimmer",
            "compress",
            str(r20),
            "--arch",
            "resnet20-fmnist",
            "--sparsity",
            "0.7",
            "--data",
            str(fmnist_like_npz),
            "--finetune-steps",
            "3",
            "--batch-size",
            "16",
            "-o",
            str(out),
            "--json",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1 and reports[0]["status"] == "ok"  # only rank 0 reports
    assert reports[0]["finetune"]["world_size"] == 2
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["data.npz", "ddp.onnx", "ddp.onnx.report.json", "r20.pt"]
    assert out.is_file() and not list(tmp_path.glob(".*.partial"))
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    names = list(reports[0]["sparsity"]["per_layer"])
    zeros = sum(int((inits[n] == 0).sum()) for n in names) / sum(inits[n].size for n in names)
    assert abs(zeros - 0.7) <= 0.005  # masks held on the rank that exported
    assert torch.isfinite(torch.tensor(reports[0]["finetune"]["final_loss"]))
