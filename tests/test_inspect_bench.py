"""``slimmer inspect`` and ``slimmer bench``."""

import pytest
import torch

pytestmark = pytest.mark.xdist_group("test_inspect_bench")  # one worker builds the module's `two_graphs` once


def test_inspect_lists_layers_params_and_macs(cli, r20):
    run = cli("inspect", r20, "--arch", "resnet20-fmnist", "--json")
    assert run.code == 0, run.stderr
    info = run.json()
    assert info["params"] == 272_186 and info["macs"] == 31_021_952
    assert info["input_shape"] == [1, 1, 28, 28]
    assert [layer["name"] for layer in info["layers"]][:2] == ["conv1.weight", "layer1.0.conv1.weight"]
    assert "conv1.weight" in run.stderr and "MACs 31,021,952" in run.stderr


def test_inspect_refuses_unsafe_like_compress(cli, tmp_path):
    import torch

    from slimmer.zoo import ARCHITECTURES

    torch.save(ARCHITECTURES.get("resnet20-fmnist").build(), tmp_path / "m.pt")
    run = cli("inspect", tmp_path / "m.pt")
    assert run.code == 3 and "slimmer.zoo.ResNet20" in run.stderr


@pytest.fixture(scope="module")
def two_graphs(shared_cli, tmp_path_factory):
    """Two exports of a tiny checkpoint (the smallest model ``bench`` can time), built once; ``bench``
    only reads them."""
    import toy_models

    folder = tmp_path_factory.mktemp("graphs")
    torch.manual_seed(0)
    torch.save(toy_models.Tiny().state_dict(), folder / "tiny.pt")
    a, b = folder / "a.onnx", folder / "b.onnx"
    base = ("compress", folder / "tiny.pt", "--arch", "toy_models:Tiny")
    assert shared_cli(*base, "--sparsity", "0", "-o", a).code == 0
    assert shared_cli(*base, "--sparsity", "0.5", "-o", b).code == 0
    return a, b


def test_bench_pairs_two_graphs(cli, two_graphs):
    a, b = two_graphs
    run = cli("bench", a, b, "--warmup", "2", "--pairs", "10", "--json")
    assert run.code == 0, run.stderr
    res = run.json()
    assert res["a"]["runs"] == res["b"]["runs"] == 10
    assert res["a"]["p50_ms"] > 0 and res["b"]["p50_ms"] > 0
    # the ratio of two timings of equivalent graphs: positive and finite (its value is the machine's, not ours)
    assert 0 < res["speedup"] < float("inf")
    assert "speedup of B over A" in run.stderr


def test_bench_single_and_bad_arguments(cli, two_graphs, tmp_path):
    a, _ = two_graphs
    run = cli("bench", a, "--pairs", "3", "--warmup", "0", "--json")
    assert run.code == 0 and run.json()["speedup"] is None and run.json()["b"] is None
    assert cli("bench", a, "--pairs", "0").code == 2
    assert cli("bench", tmp_path / "missing.onnx").code == 3


def test_inspect_lists_groups_and_blockers(cli, r20):
    run = cli("inspect", r20, "--arch", "resnet20-fmnist", "--json")
    groups = run.json()["groups"]
    blocked = [g for g in groups if not g["prunable"]]
    assert len(groups) - len(blocked) >= 10
    assert [g["blocked_by"].split(" [")[0] for g in blocked] == ["model output"]
    assert "prunable channel groups" in run.stderr


def test_refusal_names_the_unsafe_globals_in_a_stable_order_user_code_first(tmp_path):
    import random

    from slimmer.checkpoint import _refuse

    found = [f"torch.nn.modules.m{i}.M" for i in range(10)] + ["mypkg.net.Net", "builtins.set"]
    messages = set()
    for seed in range(5):
        random.Random(seed).shuffle(found)
        messages.add(_refuse(tmp_path / "m.pt", "state-zip", list(found), "a pickled object").message)
    assert len(messages) == 1
    assert "would import: mypkg.net.Net, builtins.set, torch.nn.modules.m0.M," in messages.pop()
