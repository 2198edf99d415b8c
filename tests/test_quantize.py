"""int8 static quantization (``slimmer quantize`` and ``slimmer.quantize``): gates, latency, warnings.

The graphs are tiny and exported here with ``torch.onnx.export`` (the TorchScript exporter, input
``x``), i.e. ONNX files slimmer did not produce.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import slimmer
from slimmer.errors import ConfigError
from slimmer.export.bench import Latency, PairedLatency
from slimmer.export.quantize import RANDOM_CALIBRATION_WARNING
from slimmer.export.quantize_config import QuantizationFailed, QuantizeConfig

QUANT_KEYS = {
    "method",
    "calibration",
    "per_channel",
    "size_bytes_float",
    "size_bytes_int8",
    "agreement",
    "cosine",
    "accuracy_float",
    "accuracy_int8",
    "latency_ms_float",
    "latency_ms_int8",
}


def _export(net: nn.Module, example: tuple, path: Path, names: list[str]) -> Path:
    dyn = {n: {0: "batch"} for n in [*names, "y"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            example,
            str(path),
            dynamo=False,
            input_names=names,
            output_names=["y"],
            dynamic_axes=dyn,
            opset_version=17,
        )
    return path


class SmallMargin(nn.Module):
    """Two logits ``[c, c + d]`` with a large common part ``c`` and a small signed difference ``d``:
    one int8 step of the output is larger than ``d``, so the int8 graph loses the float's top-1 class."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)

    def forward(self, x):
        common = 10 * torch.relu(self.conv(x)).mean((1, 2, 3))
        diff = 1e-3 * x.mean((1, 2, 3))
        return torch.stack([common, common + diff], 1)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("graphs")
    conv = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    with torch.no_grad():
        for p in conv.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(96, 1, 12, 12)
    with torch.no_grad():
        y_conv = conv.eval()(x).argmax(1).numpy()
        margin = SmallMargin().eval()
        y_margin = margin(x).argmax(1).numpy()
    return {
        "conv": _export(conv, (x[:2],), folder / "conv.onnx", ["x"]),
        "margin": _export(margin, (x[:2],), folder / "margin.onnx", ["x"]),
        "x": x.numpy(),
        "y_conv": y_conv,
        "y_margin": y_margin,
    }


@pytest.fixture
def data_npz(tmp_path, graphs):
    def write(labels_key: str) -> Path:
        path = tmp_path / f"{labels_key}.npz"
        np.savez(path, x=graphs["x"], y=graphs[labels_key])
        return path

    return write


def _copy(src: Path, folder: Path) -> Path:
    dst = folder / src.name
    dst.write_bytes(src.read_bytes())
    return dst


def _paired(speedup: float):
    def timer(float_path: Path, int8_path: Path) -> PairedLatency:
        return PairedLatency(Latency(2.0, 2.2, 5), Latency(2.0 / speedup, 2.2 / speedup, 5), speedup, 1, 1)

    return timer


def test_quantize_cli_on_foreign_onnx_writes_int8_and_report(cli, graphs, data_npz, tmp_path, partial_files):
    graph = _copy(graphs["conv"], tmp_path)
    run = cli(
        "quantize",
        graph,
        "--data",
        data_npz("y_conv"),
        "--val-fraction",
        "0.5",
        "--quantize-anyway",
        "--pairs",
        "3",
        "--json",
    )
    assert run.code == 0, run.stderr
    rep = run.json()
    q = rep["quantization"]
    assert QUANT_KEYS <= set(q) and q["method"] == "int8" and q["per_channel"] is True
    assert q["calibration"] == {"method": "minmax", "samples": 48, "source": "data"}
    assert rep["config"]["data"] == str(tmp_path / "y_conv.npz")
    assert q["eval_samples"] == 48 and q["accuracy_float"] == 1.0 and q["accuracy_int8"] >= 0.9
    assert q["agreement"] >= 0.9 and q["cosine"] > 0.99 and q["latency_ms_int8"] > 0
    out = tmp_path / "conv.int8.onnx"
    assert q["kept"] == "int8" and rep["onnx"]["path"] == str(out) and rep["status"] == "ok"
    assert q["size_bytes_int8"] == out.stat().st_size < q["size_bytes_float"]
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "BatchNormalization" not in ops
    assert (tmp_path / "conv.int8.onnx.report.json").is_file() and not partial_files(tmp_path)
    assert RANDOM_CALIBRATION_WARNING not in rep["warnings"]


def test_accuracy_gate_failing_exits_5_with_nothing_written(cli, graphs, data_npz, tmp_path, partial_files):
    graph = _copy(graphs["margin"], tmp_path)
    out = tmp_path / "q.onnx"
    run = cli(
        "quantize",
        graph,
        "--data",
        data_npz("y_margin"),
        "--val-fraction",
        "0.5",
        "--min-agreement",
        "0",
        "--max-quantization-drop",
        "1",
        "-o",
        out,
        "--json",
    )
    assert run.code == 5, run.stderr
    rep = run.json()
    assert rep["status"] == "failed" and rep["exit_code"] == 5 and "points below the float" in rep["error"]
    q = rep["quantization"]
    assert q["accuracy_float"] == 1.0 and (q["accuracy_float"] - q["accuracy_int8"]) * 100 > 1
    assert q["passed"] is False and q["artifact"] is None and q["latency_ms_int8"] is None
    assert not out.exists() and not partial_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["margin.onnx", "q.onnx.report.json", "y_margin.npz"]


def test_agreement_gate_raises_from_the_api(graphs, tmp_path):
    x = graphs["x"]
    with pytest.raises(QuantizationFailed) as info:
        slimmer.quantize(
            graphs["margin"],
            [{"x": x[:48]}],
            QuantizeConfig(min_agreement=0.99),
            tmp_path / "m.onnx",
            held_out=[{"x": x[48:]}],
        )
    assert info.value.exit_code == 5 and "top-1 agreement" in info.value.message
    assert info.value.result.agreement < 0.99 and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("anyway", [False, True])
def test_slower_than_float_keeps_the_float_file(graphs, tmp_path, anyway):
    x = graphs["x"]
    out = tmp_path / "slow.int8.onnx"
    config = QuantizeConfig(quantize_anyway=anyway)
    res = slimmer.quantize(
        graphs["conv"],
        [{"x": x[:48]}],
        config,
        out,
        held_out=[{"x": x[48:]}],
        labels=graphs["y_conv"][48:],
        timer=_paired(0.8),
    )
    assert res.passed and res.faster is False and res.speedup == 0.8
    assert res.latency_ms_float == 2.0 and res.latency_ms_int8 == 2.5
    assert any("not faster than the float file" in w for w in res.warnings)
    if anyway:
        assert res.kept == "int8" and res.artifact == str(out) and out.is_file()
    else:
        assert res.kept == "float" and res.artifact == str(graphs["conv"]) and res.int8_path is None
        assert not out.exists() and list(tmp_path.iterdir()) == []


def test_faster_int8_is_kept(graphs, tmp_path):
    x = graphs["x"]
    res = slimmer.quantize(
        graphs["conv"],
        [{"x": x[:48]}],
        QuantizeConfig(),
        tmp_path / "fast.onnx",
        held_out=[{"x": x[48:]}],
        timer=_paired(1.5),
    )
    assert res.kept == "int8" and res.faster is True and (tmp_path / "fast.onnx").is_file()
    assert not any("not faster" in w for w in res.warnings)


def test_calibration_without_data_warns(cli, graphs, tmp_path):
    graph = _copy(graphs["conv"], tmp_path)
    run = cli("quantize", graph, "--calibration-samples", "8", "--eval-samples", "8", "--pairs", "2", "--json")
    assert run.code == 0, run.stderr
    rep = run.json()
    assert RANDOM_CALIBRATION_WARNING in rep["warnings"]
    assert rep["quantization"]["calibration"] == {"method": "minmax", "samples": 8, "source": "random"}
    assert rep["quantization"]["accuracy_float"] is None
    assert "unreliable" in run.stderr


def test_integer_inputs_pass_through(tmp_path):
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.lin = nn.Linear(8, 3)

        def forward(self, x, ids):
            return self.lin(x + self.emb(ids).mean(1))

    torch.manual_seed(0)
    graph = _export(
        TwoInputs(), (torch.randn(2, 8), torch.zeros(2, 4, dtype=torch.long)), tmp_path / "two.onnx", ["x", "ids"]
    )
    rng = np.random.default_rng(0)
    feeds = [
        {"x": rng.standard_normal((16, 8)).astype(np.float32), "ids": rng.integers(0, 10, (16, 4))} for _ in range(3)
    ]
    res = slimmer.quantize(
        graph,
        feeds[:2],
        QuantizeConfig(min_agreement=0.5, quantize_anyway=True),
        tmp_path / "two.int8.onnx",
        held_out=feeds[2:],
        timer=_paired(1.0),
    )
    assert res.calibration["samples"] == 32 and res.eval_samples == 16 and res.cosine > 0.99
    with pytest.raises(Exception, match="calibration feed has inputs"):
        slimmer.quantize(graph, [{"x": feeds[0]["x"]}], QuantizeConfig(), tmp_path / "bad.onnx")


def test_config_validates_itself(cli, graphs, tmp_path):
    for bad in (
        {"calibration_method": "kl"},
        {"method": "int4"},
        {"calibration_samples": 0},
        {"min_agreement": 1.5},
        {"min_cosine": 2.0},
        {"max_quantization_drop": -1},
        {"activation_type": "int4"},
    ):
        with pytest.raises(ConfigError):
            QuantizeConfig(**bad)
    graph = _copy(graphs["conv"], tmp_path)
    run = cli("quantize", graph, "--calibration-method", "kl", "--json")
    assert run.code == 2 and "--calibration-method" in run.json()["error"]
    assert cli("quantize", tmp_path / "missing.onnx").code == 3
    (tmp_path / "conv.int8.onnx").write_bytes(b"old")
    run = cli("quantize", graph, "--json")
    assert run.code == 3 and (tmp_path / "conv.int8.onnx").read_bytes() == b"old"


def test_depthwise_convs_keep_per_channel_scales(tmp_path):
    """Two MobileNetV2 inverted-residual blocks whose BatchNorm scales and variances spread over decades, as
    training leaves them: after folding, a depthwise kernel's channels span ~3 decades, and one weight scale
    per tensor rounds the small ones away. Per channel (the default) stays close to float."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        InvertedResidual(16, 16, 1, 6),
        InvertedResidual(16, 24, 2, 6),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 10),
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.exp(torch.empty(m.num_features).uniform_(-4, 1, generator=gen)))
                m.running_var.copy_(torch.exp(torch.empty(m.num_features).uniform_(-6, 0, generator=gen)))
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    graph = _export(net, (torch.randn(2, 3, 16, 16),), tmp_path / "dw.onnx", ["x"])
    rng = np.random.default_rng(0)
    cal = [{"x": rng.standard_normal((32, 3, 16, 16)).astype(np.float32)}]
    held = [{"x": rng.standard_normal((64, 3, 16, 16)).astype(np.float32)}]
    res = slimmer.quantize(graph, cal, QuantizeConfig(), tmp_path / "dw.pc.onnx", held_out=held, timer=_paired(2.0))
    assert res.depthwise_convs == 2 and res.cosine > 0.999 and not any("depthwise" in w for w in res.warnings)
    with pytest.raises(QuantizationFailed) as info:
        slimmer.quantize(graph, cal, QuantizeConfig(per_channel=False), tmp_path / "dw.pt.onnx", held_out=held)
    tensor = info.value.result
    assert tensor.cosine < 0.99 and "--min-cosine 0.99" in info.value.message
    assert any("2 depthwise convolutions" in w for w in tensor.warnings)
    assert not (tmp_path / "dw.pt.onnx").exists()


def test_quantize_after_compress_takes_arrays(graphs, tmp_path):
    """The step ``compress --quantize int8`` calls after its float export was verified."""
    from slimmer.export.quantize import quantize_after_compress

    x, y = graphs["x"], graphs["y_conv"]
    config = QuantizeConfig(calibration_samples=40, eval_samples=30, batch_size=16)
    res = quantize_after_compress(
        graphs["conv"],
        x[:64],
        y[64:],
        config,
        eval_inputs=x[64:],
        output_path=tmp_path / "c.int8.onnx",
        timer=_paired(1.2),
    )
    assert res.calibration == {"method": "minmax", "samples": 40, "source": "data"}
    assert res.eval_samples == 30 and res.accuracy_float == float((y[64:94] == y[64:94]).mean())
    assert res.kept == "int8" and (tmp_path / "c.int8.onnx").is_file()
    assert not any("symbolic shape inference failed" in w for w in res.warnings)
    res = quantize_after_compress(
        graphs["conv"], None, None, config, output_path=tmp_path / "r.onnx", timer=_paired(1.2)
    )
    assert res.calibration["source"] == "random" and RANDOM_CALIBRATION_WARNING in res.warnings


def test_sympy_for_symbolic_shape_inference_is_declared():
    import importlib

    import tomllib

    root = Path(__file__).resolve().parent.parent
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("sympy") for d in deps)
    assert "sympy" in (root / "Dockerfile").read_text()
    importlib.import_module("onnxruntime.tools.symbolic_shape_infer")


def test_compact_names_keeps_the_computation(graphs, tmp_path):
    import onnxruntime as ort

    from slimmer.export import int8

    proto = onnx.load(str(graphs["conv"]))
    proto.graph.metadata_props.add(key="pkg.torch.export.ExportedProgram.graph_signature", value="p_bn1_weight " * 50)
    proto.graph.metadata_props.add(key="owner", value="kept")
    proto.graph.node[0].metadata_props.add(key="namespace", value="conv1: torch.nn.Conv2d")
    src, dst = tmp_path / "named.onnx", tmp_path / "short.onnx"
    onnx.save(proto, str(src))
    int8.compact_names(src, dst)
    short = onnx.load(str(dst))
    assert [(p.key, p.value) for p in short.graph.metadata_props] == [("owner", "kept")]
    assert all(not n.metadata_props and len(n.name) <= 3 for n in short.graph.node)
    assert [i.name for i in short.graph.input] == ["x"] and [o.name for o in short.graph.output] == ["y"]
    assert dst.stat().st_size < src.stat().st_size
    x = graphs["x"][:8]
    want = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    assert np.array_equal(ort.InferenceSession(str(dst)).run(None, {"x": x})[0], want)


def test_force_never_replaces_the_data_or_example_inputs_quantize_reads(cli, graphs, data_npz, tmp_path):
    """``quantize --data D --report D --force`` wrote the report over the calibration data."""
    graph = _copy(graphs["conv"], tmp_path)
    data = data_npz("y_conv")
    kept = data.read_bytes()
    run = cli("quantize", graph, "--data", data, "--report", data, "--force", "--json")
    assert run.code == 2, run.stderr
    assert "would overwrite the input" in run.json()["error"]
    run = cli("quantize", graph, "--example-inputs", data, "-o", data, "--force", "--json")
    assert run.code == 2, run.stderr
    assert data.read_bytes() == kept
    assert not (tmp_path / "conv.int8.onnx").exists()
