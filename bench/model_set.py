"""A set of Fashion-MNIST models for choosing defaults (issue 21): architectures, recipes, training.

Four small classifiers (1×28×28 in, 10 classes), trained here with different recipes, so that a
default chosen on them is not a default for one model only:

- ``resnet20``: the bundled checkpoint (``models/train_fmnist.py``: 4 epochs, pad-2-crop + flip);
- ``resnet20-aug``: the same ResNet-20 shape (widths 16/32/64), 1 epoch with slimmer's
  ``pad_crop_flip(4)`` (pad by 4, random crop, horizontal flip);
- ``mbv2``: a MobileNetV2-style net (Sandler et al., CVPR 2018: inverted residuals, depthwise 3×3,
  linear bottlenecks, ReLU6), 1 epoch without augmentation;
- ``vgg``: a VGG-style plain net (Simonyan & Zisserman, ICLR 2015: 3×3 conv + BN + ReLU stacks,
  max-pooling, no skip connections; widths 16/32/64), 2 epochs with horizontal flips only.

Every recipe: batch 128, SGD Nesterov momentum 0.9, weight decay 5e-4, one-cycle learning rate,
seed 0; accuracy on the whole 10,000-image test split. Checkpoints go to ``bench/model_set/``
(outside the wheel: only ``models/`` is packaged), records to ``bench/model_set.jsonl``.

    OMP_NUM_THREADS=1 python bench/model_set.py --train resnet20-aug,mbv2,vgg

Other scripts load a member with :func:`load_member` (the module, its accuracy record).
Needs ``apt-get install dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from slimmer.bundled import DEMO_WEIGHTS, bundled_file  # noqa: E402
from slimmer.train.data import pad_crop_flip  # noqa: E402
from slimmer.train.idx import find_fashion_mnist, load_idx_folder  # noqa: E402
from slimmer.zoo import ARCHITECTURES, FMNIST_MEAN, FMNIST_STD  # noqa: E402

HERE = Path(__file__).resolve().parent
CKPT_DIR = HERE / "model_set"
OUT = HERE / "model_set.jsonl"
BATCH, WD, SEED = 128, 5e-4, 0


class InvertedResidual(nn.Module):
    """1×1 expansion (×t) → depthwise 3×3 (stride s) → linear 1×1 projection; a skip when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = c_in * t
        layers: list[nn.Module] = []
        if t != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.block = nn.Sequential(*layers)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.skip else self.block(x)


class MobileNetV2FMNIST(nn.Module):
    """MobileNetV2-style for 1×28×28: stem 3×3 stride 2 to 16 channels (14×14), stages (t, c, n, s) =
    (1,16,1,1) (4,24,2,1) (4,32,2,2) (4,64,1,1), head 1×1 to 128, global average pool, linear 10."""

    STAGES = ((1, 16, 1, 1), (4, 24, 2, 1), (4, 32, 2, 2), (4, 64, 1, 1))

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()]
        c = 16
        for t, c_out, n, s in self.STAGES:
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        layers += [nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class VGGFMNIST(nn.Module):
    """VGG-style plain net for 1×28×28: [16, 16, pool, 32, 32, pool, 64, 64], each 3×3 conv + BN + ReLU,
    global average pool, linear 10. ~7 M MACs, no skip connections."""

    CFG = (16, 16, "M", 32, 32, "M", 64, 64)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU()]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def resnet20() -> nn.Module:
    return ARCHITECTURES.get("resnet20-fmnist").build()


def flip_only(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch horizontally."""
    out = x.clone()
    mirror = torch.rand(x.shape[0], generator=gen) < 0.5
    out[mirror] = out[mirror].flip(-1)
    return out


@dataclass(frozen=True)
class Member:
    """One model of the set: how to build it and how it was (or is) trained."""

    name: str
    build: Callable[[], nn.Module]
    epochs: int
    peak_lr: float
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None
    augment_name: str

    @property
    def recipe(self) -> str:
        return (
            f"{self.epochs} epoch(s), batch {BATCH}, SGD nesterov m=0.9 wd={WD}, one-cycle peak lr {self.peak_lr}, "
            f"augmentation: {self.augment_name}, seed {SEED}"
        )


MEMBERS = {
    m.name: m
    for m in (
        Member("resnet20", resnet20, 4, 0.2, None, "pad-2-crop + flip (models/train_fmnist.py; bundled)"),
        Member("resnet20-aug", resnet20, 1, 0.2, pad_crop_flip(4), "pad-4-crop + flip"),
        Member("mbv2", MobileNetV2FMNIST, 1, 0.2, None, "none"),
        Member("vgg", VGGFMNIST, 2, 0.1, flip_only, "flip only"),
    )
}


def normalize(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).float().div_(255.0).unsqueeze(1)
    return (t - FMNIST_MEAN[0]) / FMNIST_STD[0]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum()) for i in range(0, len(x), 1000))
    return correct / len(x)


def checkpoint_path(name: str) -> Path:
    return bundled_file(DEMO_WEIGHTS) if name == "resnet20" else CKPT_DIR / f"{name}.safetensors"


def load_member(name: str) -> nn.Module:
    """The trained member ``name`` in eval mode. Raises FileNotFoundError until it was trained."""
    model = MEMBERS[name].build()
    model.load_state_dict(load_file(str(checkpoint_path(name))))
    return model.eval()


def train(member: Member, data) -> dict:
    """Train ``member`` from scratch with its recipe; save the weights; return the accuracy record."""
    (x_train, y_train), (x_test, y_test) = data
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = member.build()
    steps_per_epoch = len(x_train) // BATCH
    opt = torch.optim.SGD(model.parameters(), lr=member.peak_lr, momentum=0.9, nesterov=True, weight_decay=WD)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, member.peak_lr, total_steps=member.epochs * steps_per_epoch)
    start = time.time()
    for epoch in range(member.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for step in range(steps_per_epoch):
            idx = order[step * BATCH : (step + 1) * BATCH]
            x = x_train[idx]
            if member.augment is not None:
                x = member.augment(x, gen)
            loss = F.cross_entropy(model(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate(model, x_test, y_test)
        print(
            f"{member.name} epoch {epoch + 1}/{member.epochs}: test {acc:.4f} ({time.time() - start:.0f}s)", flush=True
        )
    CKPT_DIR.mkdir(exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(
        state, str(checkpoint_path(member.name)), metadata={"test_accuracy": f"{acc:.4f}", "recipe": member.recipe}
    )
    return {"seconds": round(time.time() - start), "test_accuracy": acc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default="resnet20-aug,mbv2,vgg", help="members to train (resnet20 is bundled)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write-docs", action="store_true", help="write the members' table into docs/BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    (xtr, ytr), (xte, yte) = load_idx_folder(find_fashion_mnist())
    data = (
        (normalize(xtr), torch.from_numpy(ytr.astype(np.int64))),
        (normalize(xte), torch.from_numpy(yte.astype(np.int64))),
    )
    x = torch.zeros(1, 1, 28, 28)
    from slimmer.stats import count_macs, count_params

    for name in filter(None, args.train.split(",")):
        member = MEMBERS[name]
        done = train(member, data) if name != "resnet20" else {}
        model = load_member(name)
        record = {
            "member": name,
            "recipe": member.recipe,
            "params": count_params(model),
            "macs": count_macs(model, x),
            "test_accuracy": evaluate(model, *data[1]),
            "test_images": len(data[1][1]),
            "threads": args.threads,
            **{k: v for k, v in done.items() if k == "seconds"},
            "versions": {k: v for k, v in _common.versions().items() if k in ("torch",)},
        }
        _common.append_jsonl(OUT, record)
        print(json.dumps(record), flush=True)
    if args.write_docs:
        write_docs()


def write_docs() -> None:
    """The members' table (the last record of each) as the "Model set" section of docs/BENCHMARKS.md."""
    last = {r["member"]: r for r in _common.read_jsonl(OUT)}
    lines = [
        "| member | recipe | params | MACs | test accuracy (10,000 images) | training time (threads) |",
        "|---|---|---|---|---|---|",
    ]
    for name, member in MEMBERS.items():
        r = last.get(name)
        if r is None:
            lines.append(f"| {name} | {member.recipe} | | | not trained yet | |")
            continue
        took = f"{r['seconds']} s ({r['threads']})" if r.get("seconds") else "bundled"
        lines.append(
            f"| {name} | {r['recipe']} | {r['params']:,} | {r['macs']:,} | {r['test_accuracy']:.2%} | {took} |"
        )
    body = (
        "The models `bench/model_set.py` trains for choosing defaults (issue 21); checkpoints in `bench/model_set/` "
        "(not in the wheel), records in `bench/model_set.jsonl`. Command: "
        "`OMP_NUM_THREADS=1 python bench/model_set.py --train resnet20-aug,mbv2,vgg --write-docs` "
        f"({_common.today()}; training times on the shared 2-core machine, loaded).\n\n" + "\n".join(lines)
    )
    _common.write_section("Model set", body)


if __name__ == "__main__":
    main()
