"""An N:M-pruned model exported to ONNX keeps the pattern in every pruned initializer."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from slimmer.structures.nm import check_nm, check_onnx_nm, nm_masks, onnx_weight_layouts


def small_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 8),
    ).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = small_model()
    result = nm_masks(model, 2, 4)
    result.masks.apply(model)
    path = tmp_path_factory.mktemp("onnx") / "nm.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 4, 8, 8),), str(path), dynamo=True, external_data=False)
    return path, result


def test_every_pruned_initializer_is_nm(exported) -> None:
    path, result = exported
    checks = check_onnx_nm(path, 2, 4)
    assert len(checks) == len(result.masks.masks) == 4
    assert all(checks.values()), checks
    # the same check by hand, reading every weight initializer with numpy_helper
    model = onnx.load(str(path))
    layouts = onnx_weight_layouts(model)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in layouts}
    assert len(weights) == 4
    for name, array in weights.items():
        assert check_nm(array, 2, 4, layouts[name]), name
        assert np.count_nonzero(array) == array.size // 2


def test_dense_export_fails_the_check(tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "dense.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(small_model(), (torch.randn(1, 4, 8, 8),), str(path), dynamo=True, external_data=False)
    checks = check_onnx_nm(path, 2, 4)
    assert len(checks) == 4 and not any(checks.values())
    assert check_onnx_nm(path, 2, 4, names=["missing"]) == {"missing": False}


def test_transposed_matmul_weights_are_checked_on_their_input_axis(tmp_path) -> None:
    # on 3-d inputs the exporter turns Linear into MatMul with a pre-transposed [in, out] initializer
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    nm_masks(model, 2, 4).masks.apply(model)
    path = tmp_path / "matmul.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, 8),), str(path), dynamo=True, external_data=False)
    layouts = onnx_weight_layouts(onnx.load(str(path)))
    assert len(layouts) == 2
    checks = check_onnx_nm(path, 2, 4)
    assert len(checks) == 2 and all(checks.values())
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    for name, layout in layouts.items():
        wrong = "OI" if layout == "IO" else "IO"
        assert not check_nm(weights[name], 2, 4, wrong) or weights[name].shape[0] == weights[name].shape[1]


class BareMatmul(nn.Module):
    """A weight N:M does not prune (a bare parameter in a matmul) beside a Linear it does."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.randn(16, 32))
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(x @ self.proj))


@pytest.mark.parametrize(
    "build, example",
    [
        (BareMatmul, (2, 16)),
        (lambda: nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0), (2, 6, 32)),
    ],
    ids=["bare-parameter", "multi-head-attention"],
)
def test_weights_nm_did_not_prune_are_not_held_to_the_pattern(tmp_path, build, example) -> None:
    """The read-back checked every weight initializer of the file, so a weight N:M never pruned
    (``in_proj_weight``, a bare parameter) failed the run with exit 5."""
    from slimmer import api
    from slimmer.config import CompressConfig

    torch.manual_seed(0)
    result = api.compress(
        build().eval(), torch.randn(*example), CompressConfig(methods=("nm",), output=tmp_path / "n.onnx")
    )
    assert result.report.status == "ok", result.report.error
    nm = result.report.pruning["nm"]
    assert nm["onnx_initializers_checked"] == nm["onnx_initializers_with_pattern"] == len(nm["layers"]) >= 1


def test_a_pruned_weight_that_lost_its_pattern_in_the_file_is_still_caught(tmp_path) -> None:
    from slimmer.acceptance import nm_failures
    from slimmer.prune_result import PruneResult

    torch.manual_seed(0)
    model = BareMatmul().eval()
    result = nm_masks(model, 2, 4)
    assert result.layers == ["fc.weight"]
    result.masks.apply(model)
    path = tmp_path / "bare.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 16),), str(path), dynamo=True, external_data=False)
    failures, figures = nm_failures(path, PruneResult(nm=result))
    assert failures == [] and figures["onnx_initializers_checked"] == 1

    graph = onnx.load(str(path))
    layouts = onnx_weight_layouts(graph)
    for init in graph.graph.initializer:  # every weight in the file made dense again
        if init.name in layouts:
            init.CopyFrom(numpy_helper.from_array(np.ones_like(numpy_helper.to_array(init)), init.name))
    onnx.save(graph, str(path))
    failures, figures = nm_failures(path, PruneResult(nm=result))
    assert len(failures) == 1 and "N:M pattern broken in the exported initializers" in failures[0]


def test_weights_that_cannot_be_located_are_counted_and_renamed_dense_layers_do_not_fail(tmp_path, monkeypatch):
    """When a pruned weight cannot be located in the file, every weight initializer was held to the
    pattern except the layers N:M skipped, told apart by name; the TorchScript exporter renames a
    BatchNorm-folded conv (``onnx::Conv_12``), so the dense stem failed a good export (exit 5)."""
    from slimmer.acceptance import nm_failures
    from slimmer.prune_result import PruneResult

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    ).eval()  # fmt: skip
    result = nm_masks(model, 2, 4)
    assert result.layers == ["3.weight", "7.weight"] and list(result.skipped) == ["0"]
    result.masks.apply(model)
    path = tmp_path / "folded.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 1, 8, 8),), str(path), dynamo=False)
    monkeypatch.setattr("slimmer.structures.nm.locate_pruned_weights", lambda *a: None)
    failures, figures = nm_failures(path, PruneResult(nm=result))
    assert failures == [], failures
    assert figures["weights_located"] is False and figures["onnx_initializers_with_pattern"] == 2

    graph = onnx.load(str(path))  # the pruned weights made dense: caught by the count
    layouts = onnx_weight_layouts(graph)
    for init in graph.graph.initializer:
        if init.name in layouts:
            init.CopyFrom(numpy_helper.from_array(np.ones_like(numpy_helper.to_array(init)), init.name))
    onnx.save(graph, str(path))
    failures, _ = nm_failures(path, PruneResult(nm=result))
    assert failures and "fewer than the 2 weights pruned" in failures[0]
