"""``--method nm`` and ``--method fold`` through the CLI (issue 6; RELIABILITY.md row 17)."""

import onnx
import pytest
from onnx import numpy_helper

from slimmer.structures.nm import check_nm, onnx_weight_layouts


def test_nm_2_4_exports_the_pattern_and_lists_skipped_layers(cli, r20):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--method", "nm", "--nm", "2:4", "--json")
    assert run.code == 0, run.stderr
    report = run.json()
    nm = report["pruning"]["nm"]
    assert nm["pattern"] == "2:4" and "conv1" in nm["skipped"]
    assert nm["onnx_initializers_checked"] == nm["onnx_initializers_with_pattern"] >= 20
    assert 0 < nm["compressed_size_bytes"] < report["onnx"]["size_bytes"]
    assert report["sparsity"]["requested"] == 0.5 and report["sparsity"]["achieved"] == pytest.approx(0.5)
    assert any("no speed on CPU onnxruntime" in w for w in report["warnings"])
    graph = onnx.load(report["onnx"]["path"])
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["slimmer.sparsity.pattern"] == "2:4"
    layouts = onnx_weight_layouts(graph)
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    patterned = [n for n, layout in layouts.items() if check_nm(inits[n], 2, 4, layout)]
    assert len(patterned) == nm["onnx_initializers_checked"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nm", "2:4", "--sparsity", "0.9"], "does not apply to --method nm"),
        (["--nm", "4:4"], "N"),
        (["--nm", "two:four"], "not of the form N:M"),
    ],
)
def test_row17_bad_nm_requests_exit_2(cli, r20, args, message):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--method", "nm", *args)
    assert run.code == 2 and message in run.stderr
    assert sorted(p.name for p in r20.parent.iterdir()) == ["r20.pt"]


def test_row17_pattern_no_layer_can_take_is_refused(cli, r20):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--method", "nm", "--nm", "1:128")
    assert run.code == 2 and "no layer can take the pattern" in run.stderr


def test_channel_then_nm_in_one_run(cli, r20):
    run = cli(
        "compress",
        r20,
        "--arch",
        "resnet20-fmnist",
        "--method",
        "channel,nm",
        "--sparsity",
        "0.25",
        "--round-to",
        "4",
        "--json",
    )
    assert run.code == 0, run.stderr
    r = run.json()
    assert r["macs"]["after"] < r["macs"]["before"]
    assert r["pruning"]["nm"]["onnx_initializers_checked"] == r["pruning"]["nm"]["onnx_initializers_with_pattern"]


def test_fold_folds_batchnorm_into_convs(cli, r20):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--method", "fold", "--json")
    assert run.code == 0, run.stderr
    fold = run.json()["pruning"]["fold"]
    assert len(fold["batchnorm_folded"]) == 21
    assert fold["activations_not_foldable"] == {}  # resnet20's activations are modules
    assert run.json()["verification"]["passed"]
