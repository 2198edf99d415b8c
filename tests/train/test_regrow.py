"""``--regrow``: dense straight-through fine-tuning of a one-shot unstructured mask (Lin et al., ICLR 2020)."""

from __future__ import annotations

from functools import partial

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from quick_options import QUICK_EXPORT
from torch import nn
from torch.nn import functional as F

from slimmer.structures.unstructured import largest_mask
from slimmer.train.srste import SRSTEHook

FT = ["--finetune-steps", "4", "--batch-size", "32"]


def test_largest_mask_keeps_exactly_k_ties_by_position() -> None:
    w = torch.tensor([[0.5, -2.0, 0.1], [2.0, 0.0, -0.5]])
    assert largest_mask(w, 2).tolist() == [[False, True, False], [True, False, False]]
    assert largest_mask(w, 3).tolist() == [[True, True, False], [True, False, False]]  # the earlier 0.5 stays
    assert int(largest_mask(w, 0).sum()) == 0 and bool(largest_mask(w, 6).all())


def test_a_weight_pruned_by_mistake_comes_back_and_counts_stay() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.9, 0.05, 0.01]]))
    x = torch.randn(256, 4)
    y = x @ torch.tensor([0.0, 0.0, 3.0, 0.0])  # only input 2, which the one-shot mask (k = 2) prunes, matters
    hook = SRSTEHook(["0.weight"], {"0.weight": partial(largest_mask, keep=2)}, decay=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hook.on_start(model, 200)
    first = hook.masks()["0.weight"].clone()
    for step in range(200):
        loss = F.mse_loss(model(x).squeeze(1), y)
        opt.zero_grad()
        loss.backward()
        hook.after_backward(model, step)
        opt.step()
    hook.on_end(model)
    w = model[0].weight.detach()[0]
    assert first.tolist() == [[True, True, False, False]]
    assert int((w != 0).sum()) == 2  # the layer's count is kept exactly
    assert w[2] != 0 and abs(float(w[2]) - 3.0) < 0.1  # the weight that matters grew back
    assert w[3] == 0


def test_a_dict_of_mask_functions_must_cover_every_name() -> None:
    with pytest.raises(ValueError, match="1.weight"):
        SRSTEHook(["0.weight", "1.weight"], {"0.weight": partial(largest_mask, keep=1)})


def _onnx_nonzeros(path, names) -> dict[str, int]:
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    return {n: int((inits[n] != 0).sum()) for n in names}


def test_compress_regrow_keeps_every_layer_count_and_reports_the_moved_share(
    cli, r20, fmnist_like_npz, tmp_path
) -> None:
    args = ["compress", r20, "--arch", "resnet20-fmnist", "--sparsity", "0.9", "--data", fmnist_like_npz, *FT]
    fixed = cli(*args, "--lr", "0.5", "-o", tmp_path / "fixed.onnx", "--json")
    moved = cli(*args, "--lr", "0.5", "--regrow", "-o", tmp_path / "moved.onnx", "--json")
    assert fixed.code == 0 and moved.code == 0, moved.stderr
    a, b = fixed.json(), moved.json()
    assert "regrow" not in a["finetune"]
    share = b["finetune"]["regrow"]["mask_changed"]
    assert 0 < share < 0.2  # four steps at a high learning rate move some of the mask, not most of it
    assert b["sparsity"]["achieved"] == a["sparsity"]["achieved"]
    names = list(a["sparsity"]["per_layer"])
    # each layer holds exactly its one-shot count of non-zeros in the exported file, with or without regrowing
    assert _onnx_nonzeros(b["onnx"]["path"], names) == _onnx_nonzeros(a["onnx"]["path"], names)
    assert np.isfinite(b["finetune"]["final_loss"])


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--method", "channel", "--macs-target", "0.5", *FT], "--method channel"),
        (["--sparsity", "0.5"], "--finetune-steps"),
        (["--sparsity", "0.5", "--schedule", "gradual", *FT], "--schedule gradual"),
        (["--sparsity", "0.5", "--reconstruct", *FT], "--reconstruct"),
    ],
)
def test_regrow_where_it_cannot_apply_is_a_usage_error(cli, r20, fmnist_like_npz, tmp_path, extra, words) -> None:
    out = tmp_path / "m.onnx"
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--data", fmnist_like_npz, *extra, "--regrow", "-o", out)
    assert run.code == 2, run.stderr
    assert words in run.stderr and "--regrow" in run.stderr
    assert not out.exists()


def test_regrow_after_greg_starts_from_the_regularized_weights(cli, r20, fmnist_like_npz, tmp_path) -> None:
    args = ["compress", r20, "--arch", "resnet20-fmnist", "--sparsity", "0.8", "--data", fmnist_like_npz, *FT]
    run = cli(
        *args,
        "--regularizer",
        "greg",
        "--reg-steps",
        "2",
        "--regrow",
        "-o",
        tmp_path / "g.onnx",
        "--json",
        *QUICK_EXPORT,
    )
    assert run.code == 0, run.stderr
    r = run.json()
    assert 0 <= r["finetune"]["regrow"]["mask_changed"] < 0.2
    assert abs(r["sparsity"]["achieved"] - 0.8) <= 0.005
