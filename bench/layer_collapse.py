"""Per-layer density of global unstructured pruning at 99% and 99.9% (min_keep=0) on the bundled
resnet20-fmnist: magnitude, SNIP, GraSP, LAMP and SynFlow. Prints the table and writes it to
the "Layer collapse" section of docs/BENCHMARKS.md.

    python bench/layer_collapse.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from slimmer.criteria import ScoreContext, get_criterion
from slimmer.structures.unstructured import prunable_weights, unstructured_masks
from slimmer.train.data import load_npz, to_model_input
from slimmer.zoo import ARCHITECTURES

ROOT = Path(__file__).resolve().parents[1]
CRITERIA = ("magnitude", "snip", "grasp", "lamp", "synflow")
SPARSITIES = (0.99, 0.999)
BATCH = 100
MAX_BATCHES = 10
COMMAND = "python bench/layer_collapse.py"


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    arch = ARCHITECTURES.get("resnet20-fmnist")
    model = arch.build()
    model.load_state_dict(load_file(str(ROOT / "models" / "resnet20_fmnist.safetensors")))
    model.eval()
    x_np, y_np = load_npz(ROOT / "models" / "fmnist_sample.npz")
    x = to_model_input(x_np, arch.input_shape, (0.2860,), (0.3530,), "fmnist_sample.npz")
    y = torch.from_numpy(y_np).long()
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, BATCH * MAX_BATCHES, BATCH)]
    weights = dict(prunable_weights(model))
    names = list(weights)
    density: dict[tuple[str, float], dict[str, float]] = {}
    seconds: dict[tuple[str, float], float] = {}
    for sparsity in SPARSITIES:
        for crit in CRITERIA:
            extra = {"sparsity": sparsity, "input_shape": arch.input_shape, "max_batches": MAX_BATCHES}
            start = time.perf_counter()
            scores = get_criterion(crit).score(weights, ScoreContext(model, batches=batches, extra=extra))
            masks = unstructured_masks(scores, sparsity, min_keep=0)
            seconds[(crit, sparsity)] = time.perf_counter() - start
            density[(crit, sparsity)] = {n: float(m.sum()) / m.numel() for n, m in masks.masks.items()}
    lines = [
        "# Layer collapse on resnet20-fmnist",
        "",
        f"Command: `{COMMAND}` (torch {torch.__version__}, 1 thread). Bundled trained weights; global",
        f"unstructured pruning with `min_keep=0`; SNIP/GraSP use {BATCH * MAX_BATCHES} Fashion-MNIST",
        "sample images (GraSP: 10 per class, T=200); SynFlow: 100 rounds, data-free. Cells are the",
        "kept fraction of each layer in %; **0** marks an emptied layer.",
        "",
    ]
    for sparsity in SPARSITIES:
        lines += [f"### {sparsity:.1%} sparsity", ""]
        lines.append("| layer | params | " + " | ".join(CRITERIA) + " |")
        lines.append("|---|---:|" + "---:|" * len(CRITERIA))
        for n in names:
            cells = []
            for crit in CRITERIA:
                d = density[(crit, sparsity)][n]
                cells.append("**0**" if d == 0 else f"{100 * d:.3g}")
            lines.append(f"| {n} | {weights[n].numel()} | " + " | ".join(cells) + " |")
        empty = [sum(1 for v in density[(c, sparsity)].values() if v == 0) for c in CRITERIA]
        lines.append("| **emptied layers** | | " + " | ".join(str(e) for e in empty) + " |")
        times = " | ".join(f"{seconds[(c, sparsity)]:.1f}" for c in CRITERIA)
        lines.append(f"| scoring time (s) | | {times} |")
        lines.append("")
    text = "\n".join(lines)
    sys.stdout.write(text + "\n")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common

    _common.write_section("Layer collapse", text.split("\n", 2)[2])  # without the file title


if __name__ == "__main__":
    main()
