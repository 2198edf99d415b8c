"""Train the bundled ``resnet20-fmnist`` checkpoint and cut the bundled test sample.

Recipe (BENCHMARKS.md §3): ResNet-20-style network (widths 16/32/64), Fashion-MNIST train split,
4 epochs, batch 128, SGD Nesterov momentum 0.9, weight decay 5e-4, one-cycle learning rate with
peak 0.2, augmentation pad-2-crop-28 + horizontal flip, seed 0. Evaluated on the 10k test split.

Writes, beside this file:
- ``resnet20_fmnist.safetensors``: the weights, with the recipe and test accuracy in the metadata;
- ``fmnist_sample.npz``: 2,000 test images (uint8, 200 per class, seeded) with labels;
- ``resnet20_fmnist.json``: the accuracy record.

Run: ``python models/train_fmnist.py`` (needs ``apt-get install dataset-fashion-mnist``; about
15 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from slimmer.train.idx import find_fashion_mnist, load_idx_folder
from slimmer.zoo import ARCHITECTURES, FMNIST_MEAN, FMNIST_STD

HERE = Path(__file__).resolve().parent
EPOCHS, BATCH, PEAK_LR, WD, SEED, SAMPLE_PER_CLASS = 4, 128, 0.2, 5e-4, 0, 200


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Pad by 2, crop 28×28 at a random offset, flip half of the images horizontally."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2))
    dx = torch.randint(0, 5, (n,), generator=gen)
    dy = torch.randint(0, 5, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(28).view(1, 28)).view(n, 1, 28, 1).expand(n, 1, 28, 32)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(28).view(1, 28)).view(n, 1, 1, 28).expand(n, 1, 28, 28)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def normalize(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).float().div_(255.0).unsqueeze(1)
    return (t - FMNIST_MEAN[0]) / FMNIST_STD[0]


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum()) for i in range(0, len(x), 1000))
    return correct / len(x)


def main() -> None:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    (xtr, ytr), (xte, yte) = load_idx_folder(find_fashion_mnist())
    x_train, y_train = normalize(xtr), torch.from_numpy(ytr.astype(np.int64))
    x_test, y_test = normalize(xte), torch.from_numpy(yte.astype(np.int64))
    model = ARCHITECTURES.get("resnet20-fmnist").build()
    steps_per_epoch = len(x_train) // BATCH
    opt = torch.optim.SGD(model.parameters(), lr=PEAK_LR, momentum=0.9, nesterov=True, weight_decay=WD)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, PEAK_LR, total_steps=EPOCHS * steps_per_epoch)
    start = time.time()
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for step in range(steps_per_epoch):
            idx = order[step * BATCH : (step + 1) * BATCH]
            loss = F.cross_entropy(model(augment(x_train[idx], gen)), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate(model, x_test, y_test)
        print(
            f"epoch {epoch + 1}/{EPOCHS}: loss {loss.item():.4f} test accuracy {acc:.4f} ({time.time() - start:.0f}s)"
        )
    recipe = (
        f"{EPOCHS} epochs, batch {BATCH}, SGD nesterov m=0.9 wd={WD}, one-cycle peak lr {PEAK_LR}, "
        f"pad-crop + flip, seed {SEED}"
    )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(
        state,
        str(HERE / "resnet20_fmnist.safetensors"),
        metadata={"arch": "resnet20-fmnist", "test_accuracy": f"{acc:.4f}", "recipe": recipe},
    )
    rng = np.random.default_rng(SEED)
    pick = np.concatenate([rng.choice(np.flatnonzero(yte == c), SAMPLE_PER_CLASS, replace=False) for c in range(10)])
    pick.sort()
    np.savez_compressed(HERE / "fmnist_sample.npz", x=xte[pick], y=yte[pick].astype(np.int64))
    sample_acc = evaluate(model, x_test[pick], y_test[pick])
    record = {
        "arch": "resnet20-fmnist",
        "test_accuracy": acc,
        "sample_accuracy": sample_acc,
        "sample_size": int(len(pick)),
        "recipe": recipe,
        "torch": torch.__version__,
        "seconds": round(time.time() - start),
    }
    (HERE / "resnet20_fmnist.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
