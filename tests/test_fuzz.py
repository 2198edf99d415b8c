"""Fuzzing the sniffer, the loader and the option parsing (RELIABILITY.md row 32).

Only documented errors (SlimmerError subclasses) may come out, and nothing may execute: every
mutated checkpoint here wraps an ``os.system`` payload whose sentinel file must never appear.
"""

import os
import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from slimmer.checkpoint import load_checkpoint, pickle_globals
from slimmer.config import CompressConfig, parse_floats, parse_shape
from slimmer.errors import SlimmerError
from slimmer.zoo import ARCHITECTURES

SENTINEL = Path("/tmp/slimmer-fuzz-sentinel")
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {SENTINEL}",))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    """Real checkpoints of every format, as bytes to mutate."""
    d = tmp_path_factory.mktemp("seeds")
    torch.manual_seed(0)
    small = ARCHITECTURES.get("resnet20-fmnist").build().eval()
    sd = {k: v for k, v in small.state_dict().items() if k.startswith(("conv1", "bn1", "fc"))}
    torch.save({**sd, "evil": Payload()}, d / "zip.pt")
    torch.save(sd, d / "clean.pt")
    torch.save({**sd, "evil": Payload()}, d / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(sd, d / "w.safetensors")
    lin = torch.nn.Linear(4, 2)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(lin), d / "ts.pt")
    torch.export.save(torch.export.export(lin, (torch.randn(2, 4),)), d / "m.pt2")
    return {p.name: p.read_bytes() for p in d.iterdir()}


def _load(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.bin"
    path.write_bytes(data)
    try:
        load_checkpoint(path, arch="resnet20-fmnist")
    except SlimmerError:
        pass
    assert not SENTINEL.exists(), "a checkpoint ran code"


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_only_documented_errors(tmp_path_factory, data):
    _load(tmp_path_factory.mktemp("f"), data)


@FUZZ
@given(
    which=st.sampled_from(["zip.pt", "clean.pt", "legacy.pt", "w.safetensors", "ts.pt", "m.pt2"]), cut=st.floats(0, 1)
)
def test_truncated_checkpoints_only_documented_errors(tmp_path_factory, seeds, which, cut):
    data = seeds[which]
    _load(tmp_path_factory.mktemp("f"), data[: int(len(data) * cut)])


@FUZZ
@given(
    which=st.sampled_from(["zip.pt", "clean.pt", "legacy.pt", "w.safetensors", "ts.pt", "m.pt2"]),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=4),
)
def test_bit_flipped_checkpoints_only_documented_errors(tmp_path_factory, seeds, which, flips):
    data = bytearray(seeds[which])
    for where, bit in flips:
        i = min(len(data) - 1, int(where * len(data)))
        data[i] ^= 1 << bit
    _load(tmp_path_factory.mktemp("f"), bytes(data))


@FUZZ
@given(data=st.binary(max_size=512))
def test_pickle_scanner_never_raises_or_runs(data):
    assert isinstance(pickle_globals(data), list)
    assert isinstance(pickle_globals(pickle.dumps(Payload()) + data), list)
    assert not SENTINEL.exists()


@FUZZ
@given(
    sparsity=st.floats(allow_nan=True, allow_infinity=True),
    macs=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    atol=st.floats(allow_nan=True, allow_infinity=True),
    steps=st.integers(-5, 5),
    shape=st.text(max_size=20),
    mean=st.one_of(st.none(), st.text(max_size=20)),
    method=st.text(max_size=20),
)
def test_random_option_values_only_config_errors(sparsity, macs, atol, steps, shape, mean, method):
    try:
        cfg = CompressConfig(
            model=Path("m.pt"),
            sparsity=sparsity,
            macs_target=macs,
            atol=atol,
            finetune_steps=steps,
            input_shape=parse_shape(shape),
            mean=parse_floats(mean, "--mean"),
            methods=(method,),
            data="d.npz",
        )
    except SlimmerError as exc:
        assert exc.exit_code == 2
    else:
        assert 0 <= cfg.sparsity < 1 and cfg.atol >= 0
