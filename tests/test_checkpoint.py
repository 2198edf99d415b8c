"""Loading: format detection from bytes, safe loading, refusals (RELIABILITY.md rows 1-13, 18)."""

import os
import random
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from slimmer.arch import resolve_arch
from slimmer.checkpoint import detect_format, load_checkpoint, pickle_globals
from slimmer.errors import ConfigError, InputError, UnsafeCheckpointError
from slimmer.zoo import ARCHITECTURES


class Payload:
    """Unpickling this would run ``touch <sentinel>``."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def r20_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return ARCHITECTURES.get("resnet20-fmnist").build().eval()


def test_detects_each_format(tmp_path):
    m = torch.nn.Linear(3, 2)
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    torch.save(m.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(m.state_dict(), tmp_path / "w.safetensors")
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(m), tmp_path / "ts.pt")
    torch.export.save(torch.export.export(m, (torch.randn(2, 3),)), tmp_path / "m.pt2")
    assert detect_format(tmp_path / "sd.pt") == "state-zip"
    assert detect_format(tmp_path / "legacy.pt") == "pickle"
    assert detect_format(tmp_path / "w.safetensors") == "safetensors"
    assert detect_format(tmp_path / "ts.pt") == "torchscript"
    assert detect_format(tmp_path / "m.pt2") == "pt2"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"\x13" + random.Random(7).randbytes(4095), "not a checkpoint"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "git lfs pull"),
    ],
    ids=["empty", "random-bytes", "lfs-pointer"],
)
def test_row7_unreadable_files_get_their_own_message(tmp_path, content, message):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_checkpoint(p, arch="resnet20-fmnist")


def test_row7_truncated_zip_is_corrupt_or_truncated(tmp_path):
    torch.save(r20_model().state_dict(), tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.pt", arch="resnet20-fmnist")


def test_row9_truncated_safetensors_and_huge_header(tmp_path):
    save_file(r20_model().state_dict(), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:100])
    with pytest.raises(InputError, match="incomplete metadata"):
        load_checkpoint(tmp_path / "cut.safetensors", arch="resnet20-fmnist")
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 10**12) + b'{"a": 1}')
    with pytest.raises(InputError, match="header too large"):
        load_checkpoint(tmp_path / "huge.safetensors", arch="resnet20-fmnist")
    # truncated tensor data, header intact
    (tmp_path / "short.safetensors").write_bytes(data[:-1000])
    with pytest.raises(InputError):
        load_checkpoint(tmp_path / "short.safetensors", arch="resnet20-fmnist")


def test_row1_pickled_module_refused_naming_globals(tmp_path):
    torch.save(r20_model(), tmp_path / "full.pt")
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(tmp_path / "full.pt")
    assert "slimmer.zoo.ResNet20" in info.value.unsafe_globals
    assert "--arch" in info.value.hint and "--trust-remote-code" in info.value.hint
    loaded = load_checkpoint(tmp_path / "full.pt", trust_remote_code=True)
    assert isinstance(loaded.model, torch.nn.Module)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_row2_os_system_payload_never_runs(tmp_path, legacy):
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": Payload(sentinel)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path, arch="resnet20-fmnist")
    assert "posix.system" in info.value.unsafe_globals
    assert "posix.system" in str(info.value)
    assert not sentinel.exists()


def test_row2_env_override_cannot_unlock_the_payload(tmp_path):
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload(sentinel)}, path)
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    proc = subprocess.run(
        [sys.executable, "-m", "slimmer", "compress", str(path), "--arch", "resnet20-fmnist"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr
    assert "posix.system" in proc.stderr
    assert not sentinel.exists()


def test_pickle_globals_sees_stack_global_without_running(tmp_path):
    import pickle

    sentinel = tmp_path / "s"
    data = pickle.dumps(Payload(sentinel), protocol=4)
    assert pickle_globals(data) == ["posix.system"]
    assert not sentinel.exists()


def test_row4_pt2_refused_before_torch_export_load(tmp_path, monkeypatch):
    m = torch.nn.Linear(3, 2)
    torch.export.save(torch.export.export(m, (torch.randn(2, 3),)), tmp_path / "m.pt2")

    def boom(*a, **k):
        raise AssertionError("torch.export.load must not be called without --trust-remote-code")

    monkeypatch.setattr(torch.export, "load", boom)
    with pytest.raises(UnsafeCheckpointError, match="torch.export"):
        load_checkpoint(tmp_path / "m.pt2", arch="resnet20-fmnist")


def test_row5_row6_torchscript_needs_trust_and_arch(tmp_path):
    model = r20_model()
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(model), tmp_path / "ts.pt")
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        load_checkpoint(tmp_path / "ts.pt", arch="resnet20-fmnist")
    with pytest.raises(InputError, match="pass --arch"):
        load_checkpoint(tmp_path / "ts.pt", trust_remote_code=True)
    loaded = load_checkpoint(tmp_path / "ts.pt", arch="resnet20-fmnist", trust_remote_code=True)
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(loaded.model(x), model(x), atol=1e-6)


def test_row6_pt2_with_trust_and_arch_extracts_weights(tmp_path):
    model = r20_model()
    torch.export.save(torch.export.export(model, (torch.randn(2, 1, 28, 28),)), tmp_path / "m.pt2")
    loaded = load_checkpoint(tmp_path / "m.pt2", arch="resnet20-fmnist", trust_remote_code=True)
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(loaded.model(x), model(x), atol=1e-6)


def test_row8_expect_sha256_mismatch(tmp_path):
    torch.save(r20_model().state_dict(), tmp_path / "w.pt")
    with pytest.raises(InputError, match="not the expected"):
        load_checkpoint(tmp_path / "w.pt", arch="resnet20-fmnist", expect_sha256="0" * 64)
    loaded = load_checkpoint(tmp_path / "w.pt", arch="resnet20-fmnist")
    assert len(loaded.sha256) == 64
    assert load_checkpoint(tmp_path / "w.pt", arch="resnet20-fmnist", expect_sha256=loaded.sha256.upper())


def test_row10_wrong_arch_lists_missing_and_unexpected_keys(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(InputError) as info:
        load_checkpoint(tmp_path / "r18.pt", arch="torchvision:resnet50")
    msg = str(info.value)
    assert "missing keys" in msg and "layer1.0.conv3.weight" in msg
    assert "shape mismatches" in msg


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd},
        lambda sd: {"model_ema": sd, "optimizer": {}},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"_orig_mod.{k}": v for k, v in sd.items()}},
    ],
    ids=["plain", "state_dict", "model", "ema", "module-prefix", "orig-mod-prefix"],
)
def test_row11_wrapped_and_prefixed_state_dicts_load(tmp_path, wrap):
    model = r20_model()
    torch.save(wrap(model.state_dict()), tmp_path / "w.pt")
    loaded = load_checkpoint(tmp_path / "w.pt", arch="resnet20-fmnist")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)


def test_row12_unknown_arch_suggests_close_matches():
    pytest.importorskip("torchvision")
    with pytest.raises(ConfigError, match="Did you mean 'resnet18'"):
        resolve_arch("resnet19")
    with pytest.raises(ConfigError, match="cannot import"):
        resolve_arch("no_such_package_xyz.models:Net")
    with pytest.raises(ConfigError, match="has no 'ResNet21'.*ResNet20"):
        resolve_arch("slimmer.zoo:ResNet21")
    assert resolve_arch("slimmer.zoo:ResNet20").build().fc.out_features == 10


def test_row13_loads_on_cpu_with_map_location(tmp_path, monkeypatch):
    torch.save(r20_model().state_dict(), tmp_path / "w.pt")
    seen = {}
    real = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(tmp_path / "w.pt", arch="resnet20-fmnist")
    assert seen["map_location"] == "cpu" and seen["weights_only"] is True


def test_row18_nan_weights_rejected_naming_the_tensor(tmp_path):
    sd = r20_model().state_dict()
    sd["layer2.1.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    with pytest.raises(InputError, match="layer2.1.conv1.weight"):
        load_checkpoint(tmp_path / "nan.pt", arch="resnet20-fmnist")


def test_state_dict_without_arch_asks_for_arch(tmp_path):
    torch.save(r20_model().state_dict(), tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="needs the architecture"):
        load_checkpoint(tmp_path / "w.pt")


def test_zip_without_data_pkl_is_rejected(tmp_path):
    with zipfile.ZipFile(tmp_path / "x.pt", "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "x.pt", arch="resnet20-fmnist")
