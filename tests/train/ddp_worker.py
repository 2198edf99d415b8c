"""Run by ``torchrun --nproc_per_node 2`` from test_ddp.py (not a test module itself).

Each rank fine-tunes the same tiny pruned model under DDP (gloo, CPU), saves its state_dict to
``OUT/rank{r}.pt``; rank 0 alone writes ``OUT/report.json`` through ``main_process_only``. With a
second argument ``regrow`` the mask moves during fine-tuning (``--regrow``: the SR-STE hook with a
per-layer top-k) instead of being held, and the masks saved are the final ones.
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from pathlib import Path

import torch
from torch import nn

from slimmer.structures.unstructured import largest_mask, prunable_weights, unstructured_masks
from slimmer.train import distributed
from slimmer.train.data import Dataset
from slimmer.train.finetune import FinetuneConfig, finetune
from slimmer.train.hooks import MaskHook, TrainHook
from slimmer.train.srste import SRSTEHook


def main(out: Path, regrow: bool) -> None:
    info = distributed.init_from_env()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    teacher = nn.Sequential(nn.Linear(8, 4))
    masks = unstructured_masks({n: p.detach().abs() for n, p in prunable_weights(model).items()}, 0.5)
    dense = {n: p.detach().clone() for n, p in model.named_parameters() if n in masks.masks}
    masks.apply(model)
    hook: TrainHook = MaskHook(masks)
    if regrow:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in dense:
                    p.copy_(dense[n])
        counts = {n: int(m.sum()) for n, m in masks.masks.items()}
        hook = SRSTEHook(counts, {n: partial(largest_mask, keep=k) for n, k in counts.items()})
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 8, generator=gen)
    data = Dataset(x=x, y=(x @ torch.randn(8, 4, generator=gen)).argmax(1), source="synthetic")
    student = distributed.wrap_ddp(model, info)
    cfg = FinetuneConfig(steps=15, batch_size=16, lr=0.1, device="cpu", seed=0)  # same seed on every rank
    result = finetune(student, teacher, data, cfg, [hook])
    torch.save(model.state_dict(), out / f"rank{info.rank}.pt")
    final = hook.masks() if isinstance(hook, SRSTEHook) else masks.masks
    torch.save({"final": final, "first": masks.masks}, out / "masks.pt") if info.is_main else None

    @distributed.main_process_only
    def write_report() -> None:
        (out / "report.json").write_text(json.dumps({**result.to_dict(), "world": info.world_size}))

    write_report()
    distributed.barrier()
    # No destroy_process_group here: with gloo, destroying the group while the peer process is
    # already exiting can abort the process ("terminate called without an active exception"; seen
    # once in CI). `slimmer compress` under torchrun likewise ends with a barrier and a plain exit.


if __name__ == "__main__":
    main(Path(sys.argv[1]), regrow=sys.argv[2:] == ["regrow"])
    # Leave without running C++ static destructors: a gloo thread still winding down at interpreter
    # exit aborted rank 1 once more ("terminate called without an active exception", exit -6) after
    # every file had been written. Everything the test reads is saved and flushed above.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
