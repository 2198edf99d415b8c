"""Issue 19, kind 6 (RELIABILITY.md row 37): user mistakes end in exit 2 or 3 naming the problem,
never in exit 1 ("internal error ... a bug in slimmer")."""

import numpy as np
import onnx
import pytest
import torch
import toy_models
from json_stdout import one_json
from onnx import TensorProto, helper


@pytest.mark.parametrize(
    ("builder", "says"),
    [
        ("raises", "calling raises() raised RuntimeError: the builder broke"),
        ("returns_none", "returns_none() returned None, not a torch.nn.Module"),
        ("returns_tuple", "returns_tuple() returned tuple, not a torch.nn.Module"),
        ("returns_str", "returns_str() returned str, not a torch.nn.Module"),
        ("needs_args", "needs_args cannot be called without arguments"),
    ],
)
def test_arch_builder_mistakes_are_exit_2(cli, tiny_ckpt, builder, says):
    run = cli("compress", tiny_ckpt, "--arch", f"toy_models:{builder}", "--json")
    assert run.code == 2, run.stderr
    assert says in run.stderr and one_json(run.stdout)["exit_code"] == 2
    assert sorted(p.name for p in tiny_ckpt.parent.iterdir()) == ["tiny.pt"]


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("def build(:\n    pass\n", "has a syntax error"),
        ("raise ImportError('needs a GPU library')\n", "importing {mod} raised ImportError: needs a GPU library"),
        ("import sys\nsys.exit(3)\n", "importing {mod} raised SystemExit"),
        ("import not_installed_pkg_19\n", "imports 'not_installed_pkg_19', which is not installed"),
    ],
)
def test_arch_module_mistakes_are_exit_2(cli, tiny_ckpt, tmp_path, monkeypatch, source, says):
    mod = f"user_mod_{abs(hash(source)) % 10**8}"
    (tmp_path / f"{mod}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = cli("compress", tiny_ckpt, "--arch", f"{mod}:build", "--input-shape", "1,1,8,8")
    assert run.code == 2, run.stderr
    assert says.format(mod=mod) in run.stderr


def test_input_shape_too_large_to_allocate_is_exit_2(cli, tiny_ckpt):
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--input-shape", "1,3,1000000,1000000", "--json")
    assert run.code == 2 and "the example inputs alone would need" in run.stderr and "GB" in run.stderr
    assert one_json(run.stdout)["exit_code"] == 2


def test_allocation_failure_anywhere_is_exit_3(cli, tiny_ckpt, monkeypatch):
    import slimmer.inputs

    def no_memory(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(slimmer.inputs.ExampleInputs, "args", no_memory)
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--json")
    assert run.code == 3 and "out of memory" in run.stderr and "internal error" not in run.stderr
    assert one_json(run.stdout)["exit_code"] == 3


@pytest.mark.parametrize(("option", "value"), [("--mean", "0.1,0.2"), ("--std", "0.5,0.5,0.5")])
def test_normalization_of_the_wrong_length_is_exit_2(cli, r20, fmnist_like_npz, option, value):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--data", fmnist_like_npz, option, value, "--json")
    assert run.code == 2, run.stderr
    assert f"{option} has {len(value.split(','))} values, but the model's input has 1 channels" in run.stderr
    assert one_json(run.stdout)["exit_code"] == 2


def test_normalization_per_channel_of_a_three_channel_model(tmp_path):
    from slimmer.errors import ConfigError
    from slimmer.sources import check_normalization

    check_normalization((0.4, 0.5, 0.6), (0.2,), (1, 3, 32, 32))
    with pytest.raises(ConfigError, match="--mean has 2 values, but the model's input has 3 channels"):
        check_normalization((0.4, 0.5), None, (1, 3, 32, 32))


def _state(tmp_path, change):
    sd = toy_models.Tiny().state_dict()
    change(sd)
    path = tmp_path / "odd.pt"
    torch.save(sd, path)
    return path


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda sd: sd.__setitem__("fc.weight", torch.empty(10, 4, device="meta")), "is on the 'meta' device"),
        (lambda sd: sd.__setitem__("fc.weight", sd["fc.weight"].to_sparse()), "has the sparse_coo layout"),
    ],
)
def test_meta_and_sparse_tensors_are_exit_3(cli, tmp_path, change, says):
    path = _state(tmp_path, change)
    run = cli("compress", path, "--arch", "toy_models:Tiny", "--json")
    assert run.code == 3, run.stderr
    assert f"tensor 'fc.weight' {says}" in run.stderr and one_json(run.stdout)["exit_code"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.pt"]


def _onnx(path, inputs, nodes, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_bench_feeds_int64_inputs(cli, tmp_path):
    table = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32), "t")
    path = _onnx(
        tmp_path / "emb.onnx",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 6])],
        [helper.make_node("Gather", ["t", "ids"], ["y"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6, 3])],
        [table],
    )
    run = cli("bench", path, "--warmup", "0", "--pairs", "2", "--json")
    assert run.code == 0, run.stderr
    assert one_json(run.stdout)["a"]["runs"] == 2


def test_bench_symbolic_non_batch_dimension_needs_its_size(cli, tmp_path):
    path = _onnx(
        tmp_path / "seq.onnx",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])],
    )
    run = cli("bench", path, "--pairs", "2", "--json")
    assert run.code == 2 and "symbolic dimension 'seq' at axis 1" in run.stderr and "--dim seq=" in run.stderr
    assert one_json(run.stdout)["exit_code"] == 2
    run = cli("bench", path, "--warmup", "0", "--pairs", "2", "--dim", "seq=5", "--json")
    assert run.code == 0, run.stderr
    run = cli("bench", path, "--pairs", "2", "--dim", "seq", "--json")
    assert run.code == 2 and "NAME=SIZE" in run.stderr


def test_bench_graph_failing_on_generated_inputs_is_exit_3(cli, tmp_path):
    shape = onnx.numpy_helper.from_array(np.array([7, -1], np.int64), "s")
    path = _onnx(
        tmp_path / "reshape.onnx",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_node("Reshape", ["x", "s"], ["y"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, None])],
        [shape],
    )
    run = cli("bench", path, "--pairs", "2")
    assert run.code == 3 and "onnxruntime failed running" in run.stderr and "x: float32[1, 4]" in run.stderr


def test_output_name_too_long_is_refused_before_loading(cli, tiny_ckpt, tmp_path):
    out = tmp_path / ("m" * 240 + ".onnx")  # fits the 255-byte limit; its temporary name does not
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "-o", out, "--json")
    assert run.code == 2 and "exceeds the file system's limit of 255" in run.stderr
    assert "loading" not in run.stderr  # refused before any work
    assert one_json(run.stdout)["exit_code"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--task", "sequence-classification"], "is not one"),  # --task chooses a Hugging Face folder's head
        (["--device", "cuda"], "CUDA is not available"),  # nothing trained: it was ignored
        (["--device", "cuda:3"], "CUDA"),
    ],
)
def test_options_that_would_be_ignored_are_usage_errors(cli, tiny_ckpt, options, says):
    if options[0] == "--device" and torch.cuda.device_count() > 3:
        pytest.skip("this machine has the CUDA devices asked for")
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", *options, "--json")
    assert run.code == 2, run.stderr
    assert says in run.json()["error"]
    assert sorted(p.name for p in tiny_ckpt.parent.iterdir()) == ["tiny.pt"]


def test_sparsity_beside_a_macs_target_is_a_usage_error_unless_unstructured_takes_it(cli, tiny_ckpt):
    both = ("--macs-target", "0.5", "--sparsity", "0.3", "--json")
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--method", "channel", *both)
    assert run.code == 2 and "both set how many channels" in run.json()["error"]
    from slimmer.config import CompressConfig

    CompressConfig(methods=("unstructured", "channel"), macs_target=0.5, sparsity=0.3)  # each has its own target
