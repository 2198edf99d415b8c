"""GPU paths: run only where CUDA exists; they skip cleanly on CPU-only machines."""

import pytest
import torch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_finetune_on_cuda_with_amp_keeps_masks(cli, r20, fmnist_like_npz):
    run = cli(
        "compress",
        r20,
        "--arch",
        "resnet20-fmnist",
        "--sparsity",
        "0.9",
        "--data",
        fmnist_like_npz,
        "--finetune-steps",
        "4",
        "--batch-size",
        "32",
        "--device",
        "cuda",
        "--json",
    )
    assert run.code == 0, run.stderr
    r = run.json()
    assert r["finetune"]["device"].startswith("cuda") and r["finetune"]["amp"] is True
    assert abs(r["sparsity"]["achieved"] - 0.9) <= 0.005


def test_asking_for_cuda_without_it_is_a_usage_error(cli, r20, fmnist_like_npz):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = cli(
        "compress",
        r20,
        "--arch",
        "resnet20-fmnist",
        "--data",
        fmnist_like_npz,
        "--finetune-steps",
        "2",
        "--device",
        "cuda",
    )
    assert run.code == 2 and "CUDA is not available" in run.stderr
    assert sorted(p.name for p in r20.parent.iterdir()) == ["data.npz", "r20.pt"]
