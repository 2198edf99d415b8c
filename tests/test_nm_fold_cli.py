"""``--method nm`` and ``--method fold`` through the CLI (issue 6; RELIABILITY.md row 17)."""

import onnx
import pytest
from onnx import numpy_helper
from quick_options import QUICK_EXPORT

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


def _init(graph, name):
    return next(i for i in graph.graph.initializer if i.name == name)


def _fold_run(cli, r20, npz, *extra, steps: int = 4):
    return cli(
        "compress",
        r20,
        "--arch",
        "resnet20-fmnist",
        "--data",
        npz,
        "--finetune-steps",
        str(steps),
        "--batch-size",
        "16",
        "--json",
        *QUICK_EXPORT,
        *extra,
    )


def test_fold_with_finetuning_linearizes_folds_and_verifies(cli, r20, fmnist_like_npz):
    from slimmer.folding import phase

    # --fold-latency-gate off: every relu1 wrapped, whatever the machine
    run = _fold_run(cli, r20, fmnist_like_npz, "--method", "fold", "--fold-latency-gate", "off")
    assert run.code == 0, run.stderr
    report = run.json()
    fold = report["pruning"]["fold"]
    # the 9 relu1 between two convs, plus the 3 more that open the stem region (stem + stage 1)
    assert len(fold["activations_wrapped"]) == 12 and fold["latency_gate"] == "off"
    [planned] = fold["regions_planned"]
    assert planned["activations"] == ["relu", *[f"layer1.{b}.relu{i}" for b in range(3) for i in (1, 2)][:-1]]
    assert set(fold["alpha_final"]) == set(fold["activations_wrapped"])
    assert any(a != phase.ALPHA_START for a in fold["alpha_final"].values())  # α moved
    assert fold["finetune_steps"] == {"alpha": 2, "after_folding": 2}
    assert len(fold["batchnorm_folded"]) == 21
    for key in ("became_identity", "merges", "merges_refused", "depth", "params", "macs", "conv_nodes"):
        assert key in fold
    assert report["finetune"]["steps_done"] == 4
    assert report["verification"]["passed"]


def test_alpha_forced_to_one_merges_and_removes_conv_nodes(cli, r20, fmnist_like_npz):
    gate = ("--fold-latency-gate", "off", "--fold-alpha-start", "1.0")
    run = _fold_run(cli, r20, fmnist_like_npz, "--method", "fold", "--lr", "1e-6", *gate, steps=2)
    assert run.code == 0, run.stderr
    report = run.json()
    fold = report["pruning"]["fold"]
    assert len(fold["became_identity"]) == 12 and len(fold["merges"]) == 9
    # the stem and stage 1 (the stem conv and three merged 5×5 pairs, residuals included): one conv
    [region] = fold["regions_collapsed"]
    assert region["into"] == "15x15 conv, 1 -> 16 channels" and region["from"] == "x"
    assert region["layers"] == ["conv1", "layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1"]
    assert fold["conv_nodes"] == {"before": 21, "after": 9}
    assert fold["depth"]["after"] < fold["depth"]["before"]
    assert region["macs_after"] < region["macs_before"] / 3  # the 5×5 pairs alone grow MACs; the region cuts them
    graph = onnx.load(report["onnx"]["path"])
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    assert len(convs) == 9 and list(numpy_helper.to_array(_init(graph, convs[0].input[1])).shape) == [16, 1, 15, 15]
    assert report["verification"]["passed"]


def test_channel_then_fold_in_one_run(cli, r20, fmnist_like_npz):
    gate = ("--fold-latency-gate", "off", "--fold-alpha-start", "1.0")
    run = _fold_run(
        cli, r20, fmnist_like_npz, "--method", "channel,fold", "--sparsity", "0.25", "--round-to", "4", "--lr", "1e-6",
        *gate, steps=2,
    )  # fmt: skip
    assert run.code == 0, run.stderr
    report = run.json()
    assert report["surgery"]["channels_removed"] > 0
    fold = report["pruning"]["fold"]
    assert len(fold["merges"]) == 9 and len(fold["regions_collapsed"]) == 1 and fold["conv_nodes"]["after"] == 9
    assert report["verification"]["passed"]
    assert len([n for n in onnx.load(report["onnx"]["path"]).graph.node if n.op_type == "Conv"]) == 9


def test_after_prune_accuracy_includes_the_nm_masks(cli, tmp_path):
    """The N:M masks are applied after the pruning stage proper: ``after_prune`` must see them."""
    from slimmer.bundled import DEMO_SAMPLE, DEMO_WEIGHTS, bundled_file

    trained = tmp_path / "trained.safetensors"  # the bundled checkpoint: accuracy means something
    trained.write_bytes(bundled_file(DEMO_WEIGHTS).read_bytes())
    sample = bundled_file(DEMO_SAMPLE)  # 2,000 labelled Fashion-MNIST test images
    args = ("compress", trained, "--arch", "resnet20-fmnist", "--data", sample, "--json", "--force", *QUICK_EXPORT)
    dense = cli(*args, "--sparsity", "0.0").json()["accuracy"]
    assert dense["after_prune"] == dense["before"] > 0.8
    run = cli(*args, "--method", "nm", "--nm", "1:8")
    assert run.code == 0, run.stderr
    acc = run.json()["accuracy"]
    assert acc["before"] == dense["before"] and acc["after_prune"] < acc["before"] - 0.05


def test_nm_fixed_mask_holds_the_one_shot_pattern_and_the_report_says_how_much_moved(cli, r20, fmnist_like_npz):
    """``--nm-fixed-mask`` fine-tunes with the one-shot N:M pattern held (a MaskHook, no SR-STE): nothing
    of the pattern moves; by default SR-STE may move it and the report measures by how much."""
    args = ("compress", r20, "--arch", "resnet20-fmnist", "--method", "nm", "--data", fmnist_like_npz)
    args += ("--finetune-steps", "3", "--batch-size", "16", "--lr", "0.5", "--json", "--force", *QUICK_EXPORT)
    held = cli(*args, "--nm-fixed-mask", "-o", r20.with_name("held.onnx"))
    assert held.code == 0, held.stderr  # exit 0: the pattern read back from the exported file holds (acceptance)
    nm = held.json()["finetune"]["nm"]
    assert nm == {"mask_held": True, "mask_changed": 0.0}
    assert held.json()["config"]["nm_fixed_mask"] is True
    moved = cli(*args, "-o", r20.with_name("srste.onnx"))
    assert moved.code == 0, moved.stderr
    figures = moved.json()["finetune"]["nm"]
    assert figures["mask_held"] is False and 0.0 <= figures["mask_changed"] < 1.0


def test_nm_fixed_mask_without_nm_is_a_usage_error(cli, r20):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--nm-fixed-mask", "--json")
    assert run.code == 2
    assert "--nm-fixed-mask holds an N:M pattern" in run.json()["error"]
    assert not r20.with_name("r20.slim.onnx").exists()
