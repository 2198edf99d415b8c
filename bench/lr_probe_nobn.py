"""The default fine-tuning rate on nets without BatchNorm, outside the model set (issue 21).

The model set (bench/model_set.py) has BatchNorm in every member. This probe trains two nets without
it for one epoch on Fashion-MNIST (SGD momentum 0.9, lr 0.05, batch 128, seed 0): ``mlp``
(784-256-128-10, ReLU) and ``cnn`` (two 3×3 convs of 16 and 32 channels with max-pooling, then
1568-64-10). It then runs ``slimmer.compress`` with 468 fine-tuning steps at 90% unstructured and at
half the MACs, with the default rate and with ``--lr 0.01``. It prints one JSON line per run and
appends it to ``bench/lr_probe_nobn.jsonl``.

    OMP_NUM_THREADS=1 python bench/lr_probe_nobn.py mlp
    OMP_NUM_THREADS=1 python bench/lr_probe_nobn.py cnn

Needs ``apt-get install dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import slimmer
from slimmer.config import CompressConfig
from slimmer.train.data import load_data
from slimmer.zoo import FMNIST_MEAN, FMNIST_STD

OUT = Path(__file__).resolve().parent / "lr_probe_nobn.jsonl"
NETS = {
    "mlp": lambda: nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
    ),
    "cnn": lambda: nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 49, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    ),  # fmt: skip
}
RUNS = [
    {"sparsity": 0.9},
    {"sparsity": 0.9, "lr": 0.01},
    {"methods": ("channel",), "macs_target": 0.5},
    {"methods": ("channel",), "macs_target": 0.5, "lr": 0.01},
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("net", choices=sorted(NETS))
    which = ap.parse_args().net
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = load_data("fashion-mnist", (1, 1, 28, 28), FMNIST_MEAN, FMNIST_STD)
    model = NETS[which]()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = data.train.x, data.train.y
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    for i in range(0, len(x), 128):
        idx = order[i : i + 128]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for opts in RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = CompressConfig(
                data="fashion-mnist", mean=FMNIST_MEAN, std=FMNIST_STD, finetune_steps=468, seed=0, device="cpu",
                progress_every_s=1e9, output=Path(tmp) / "m.onnx", **opts,
            )  # fmt: skip
            report = slimmer.compress(model, torch.zeros(1, 1, 28, 28), cfg).report
        acc = report.accuracy
        record = {
            "net": which,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()},
            "lr_run": report.finetune["lr"],
            "before": acc["before"],
            "after_finetune": acc["after_finetune"],
            "drop_points": round(100 * (acc["before"] - acc["after_finetune"]), 2),
        }
        with OUT.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
