"""Issue 19, kind 6 as a property (RELIABILITY.md row 37): random combinations of options and small
bad inputs never end in exit 1 (a bug), and with ``--json`` stdout is always exactly one JSON object.

Runs in-process through ``slimmer.cli.main`` (so option-parser errors are covered too). Every run
stops before pruning — a valid combination reaches the patched ``prune`` and ends with exit 3 — so
500 cases take well under a minute.
"""

import contextlib
import io
import json
import sys

import numpy as np
import onnx
import pytest
import torch
import toy_models
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import slimmer.api
from slimmer.cli import main
from slimmer.errors import InputError

CASES = int(__import__("os").environ.get("SLIMMER_PROPERTY_CASES", "500"))
CALLS: dict = {"n": 0, "codes": {}}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    sd = toy_models.Tiny().state_dict()
    torch.save(sd, d / "good.pt")
    torch.save({**sd, "fc.weight": torch.full((10, 4), float("nan"))}, d / "nan.pt")
    torch.save({**sd, "fc.weight": torch.empty(10, 4, device="meta")}, d / "meta.pt")
    torch.save({**sd, "fc.weight": sd["fc.weight"].to_sparse()}, d / "sparse.pt")
    torch.save(toy_models.CausalMask().state_dict(), d / "other.pt")
    torch.save(toy_models.CausalMask(), d / "pickled.pt")
    (d / "empty.pt").write_bytes(b"")
    (d / "random.pt").write_bytes(np.random.default_rng(0).bytes(300))
    (d / "lfs.pt").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 3\n")
    (d / "trunc.pt").write_bytes((d / "good.pt").read_bytes()[:400])
    (d / "folder").mkdir()
    (d / "file").write_text("x")
    rng = np.random.default_rng(0)
    np.savez(d / "ok.npz", x=rng.integers(0, 256, (24, 8, 8), dtype=np.uint8), y=rng.integers(0, 10, 24))
    np.savez(d / "labels.npz", x=rng.integers(0, 256, (24, 8, 8), dtype=np.uint8), y=rng.integers(5, 40, 24))
    nan = rng.random((24, 8, 8)).astype(np.float32)
    nan[3, 1, 1] = np.nan
    np.savez(d / "nan.npz", x=nan, y=np.zeros(24, np.int64))
    np.savez(d / "shape.npz", x=rng.random((24, 5)).astype(np.float32))
    (d / "bad.npz").write_bytes(b"PK\x03\x04 not really")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(d / "seq.onnx"))
    (d / "random.onnx").write_bytes(np.random.default_rng(1).bytes(200))
    return d


MODELS = [
    "good.pt",
    "good.pt",
    "good.pt",
    "nan.pt",
    "meta.pt",
    "sparse.pt",
    "other.pt",
    "pickled.pt",
    "empty.pt",
    "random.pt",
    "lfs.pt",
    "trunc.pt",
    "folder",
    "missing.pt",
    "file",
]
ARCHS = [
    "toy_models:Tiny",
    "toy_models:raises",
    "toy_models:returns_none",
    "toy_models:returns_tuple",
    "toy_models:needs_args",
    "toy_models:nothing",
    "toy_models",
    "nowhere_mod:build",
    ":",
    "a:b:c",
    "resnet19",
    "resnet20-fmnist",
    "toy_models:Tiny.forward",
    "os:getcwd",
    "json:loads",
    "torchvision:resnet999",
]
SHAPES = ["abc", "0,1", "1,3,1000000,1000000", "1", "-1,2", "1,1,8,8", "", "1,2,3,4,5,6", "1,1,8,8,", "1x1x8x8"]
FLOATS = ["abc", "1.5", "nan", "-0.1", "0.5", "inf", "1", "0", "1e400", ""]
DATA = ["ok.npz", "labels.npz", "nan.npz", "shape.npz", "bad.npz", "missing.npz", "folder", "fashion-mnist", "file"]
OUTPUTS = [
    "good.pt",
    "folder",
    "file/x.onnx",
    "nodir/x.onnx",
    "m" * 250 + ".onnx",
    "out.onnx",
    "ok.npz",
    "folder/../good.pt",
    "",
]

option = st.one_of(
    st.tuples(st.just("--arch"), st.sampled_from(ARCHS)),
    st.tuples(st.just("--input-shape"), st.sampled_from(SHAPES)),
    st.tuples(
        st.sampled_from(["--sparsity", "--macs-target", "--atol", "--lr", "--kd-weight", "--val-fraction"]),
        st.sampled_from(FLOATS),
    ),
    st.tuples(st.sampled_from(["--mean", "--std"]), st.sampled_from(["0.1,0.2", "x", "nan", "0.5", "0", "1,2,3", ""])),
    st.tuples(
        st.sampled_from(
            [
                "--method",
                "--criterion",
                "--scope",
                "--schedule",
                "--regularizer",
                "--exporter",
                "--device",
                "--nm",
                "--optimizer",
            ]
        ),
        st.sampled_from(["bogus", "channel", "nm", "fold,channel", "", "2:4", "4:2", "cuda:7", "greg", "layer"]),
    ),
    st.tuples(
        st.sampled_from(
            ["--finetune-steps", "--batch-size", "--opset", "--seed", "--round-to", "--reg-steps", "--eval-samples"]
        ),
        st.sampled_from(["-1", "0", "5", "abc", "99", "100000000000000000000"]),
    ),
    st.tuples(st.just("--data"), st.sampled_from(DATA)),
    st.tuples(st.sampled_from(["-o", "--report"]), st.sampled_from(OUTPUTS)),
    st.tuples(st.just("--expect-sha256"), st.sampled_from(["abc", "0" * 64, "g" * 64])),
    st.sampled_from(
        [
            ("--force",),
            ("--json",),
            ("--keep-failed",),
            ("--trust-remote-code",),
            ("--bogus-flag",),
            ("--regrow",),
            ("--static-batch",),
            ("--speedup", "2"),
            ("--latency-aware",),
        ]
    ),
)
bench_option = st.one_of(
    st.tuples(
        st.sampled_from(["--batch", "--threads", "--pairs", "--warmup"]),
        st.sampled_from(["-1", "0", "1", "2", "x", "1000000000"]),
    ),
    st.tuples(st.just("--dim"), st.sampled_from(["seq=3", "seq", "=3", "seq=0", "other=2", "seq=100000000000"])),
    st.sampled_from([("--json",), ("--nope",)]),
)


def _paths(d, args):
    return [
        str(d / a) if a and not a.startswith("-") and (d / a.split("/")[0]).exists() or a in OUTPUTS[2:4] else a
        for a in args
    ]


@pytest.fixture(autouse=True)
def _stop_before_pruning(monkeypatch):
    def stop(*a, **k):
        raise InputError("stopped before pruning (test)")

    monkeypatch.setattr(slimmer.api, "prune", stop)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["slimmer", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


def _check(argv: list[str]) -> None:
    CALLS["n"] += 1
    code, out, err = _run(argv)
    CALLS["codes"][code] = CALLS["codes"].get(code, 0) + 1
    if "stopped before pruning" in err:
        CALLS["codes"]["reached pruning"] = CALLS["codes"].get("reached pruning", 0) + 1
    assert code in (0, 2, 3, 4, 5), f"exit {code} for {argv}:\n{err[-2000:]}"
    assert "internal error" not in err, f"{argv}:\n{err[-2000:]}"
    if "--json" in argv:
        text = out.strip()
        obj, end = json.JSONDecoder().raw_decode(text)
        assert end == len(text) and isinstance(obj, dict), f"{argv}: stdout {out[:500]!r}"
        assert obj.get("exit_code", code) == code


def test_no_combination_of_bad_options_and_inputs_is_exit_1(inputs, monkeypatch):
    monkeypatch.chdir(inputs)
    monkeypatch.setenv("SLIMMER_TEST_NO_FASHION_MNIST", "1")
    CALLS["n"], CALLS["codes"] = 0, {}

    @settings(
        max_examples=CASES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
    )
    @given(
        command=st.sampled_from(["compress", "compress", "compress", "inspect", "verify", "bench"]),
        model=st.sampled_from(MODELS),
        onnx_file=st.sampled_from(["seq.onnx", "random.onnx", "good.pt", "missing.onnx", "folder"]),
        options=st.lists(option, max_size=4),
        bench_options=st.lists(bench_option, max_size=4),
    )
    def prop(command, model, onnx_file, options, bench_options):
        if command == "bench":
            argv = ["bench", onnx_file, *[a for o in bench_options for a in o]]
        else:
            flat = [a for o in options for a in o]
            if command != "compress":  # inspect/verify take --arch, --input-shape, --json and not the rest
                keep = {"--arch", "--input-shape", "--json", "--trust-remote-code", "--atol", "--seed"}
                flat = [a for o in options if o[0] in keep for a in o]
            # a working --arch first (a generated --arch, later on the line, replaces it): good.pt then loads,
            # and the run goes on to the data, label, normalization and output checks
            first = ["--arch", "toy_models:Tiny"] if command == "compress" else []  # inspect would capture graphs
            argv = [command, model, *([onnx_file] if command == "verify" else []), *first, *flat]
        _check(_paths(inputs, argv))

    prop()
    assert CALLS["n"] >= CASES
    print("exit codes of the generated cases:", CALLS["codes"])
    assert {2, 3} <= set(CALLS["codes"]) and CALLS["codes"].get("reached pruning", 0) > 0
