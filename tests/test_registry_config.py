import math

import pytest

from slimmer.config import CompressConfig, parse_floats, parse_shape
from slimmer.errors import ConfigError
from slimmer.registry import Registry


def test_registry_duplicate_raises_and_unknown_suggests():
    reg: Registry[int] = Registry("thing")
    reg.register("magnitude", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("magnitude", 2)
    with pytest.raises(ConfigError, match="Did you mean 'magnitude'"):
        reg.get("magnitud")


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, math.nan, math.inf, -math.inf])
def test_row14_bad_sparsity_is_config_error(value, tmp_path):
    with pytest.raises(ConfigError, match="--sparsity must be a number in \\[0, 1\\)"):
        CompressConfig(model=tmp_path / "m.pt", sparsity=value)


@pytest.mark.parametrize("value", [0.0, 0.5, 0.999])
def test_sparsity_in_range_accepted(value, tmp_path):
    assert CompressConfig(model=tmp_path / "m.pt", sparsity=value).sparsity == value


def test_parse_shape_and_floats():
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_floats("0.5, 0.25", "--mean") == (0.5, 0.25)
    with pytest.raises(ConfigError, match="--input-shape"):
        parse_shape("1,a")
    with pytest.raises(ConfigError, match="--input-shape"):
        parse_shape("0,3")
    with pytest.raises(ConfigError, match="--mean"):
        parse_floats("nan", "--mean")


def test_default_output_and_report_paths(tmp_path):
    cfg = CompressConfig(model=tmp_path / "net.pt")
    assert cfg.output_path == tmp_path / "net.slim.onnx"
    assert cfg.report_path == tmp_path / "net.slim.onnx.report.json"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"methods": ("prune-everything",)}, "--method"),
        ({"scope": "world"}, "--scope"),
        ({"macs_target": 0.0}, "--macs-target"),
        ({"expect_sha256": "abc"}, "--expect-sha256"),
        ({"finetune_steps": 10}, "--finetune-steps needs --data"),
        ({"device": "tpu"}, "--device"),
        ({"std": (0.0,)}, "--std"),
    ],
)
def test_config_rejects_with_named_option(kwargs, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        CompressConfig(model=tmp_path / "m.pt", **kwargs)


def test_a_seed_beyond_the_64_bit_range_is_a_usage_error(cli, tiny_ckpt):
    """--seed 18446744073709551615 overflowed when the verification batches were seeded (exit 1)."""
    from slimmer.prune_config import MAX_SEED

    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--seed", str(2**64 - 1), "--json")
    assert run.code == 2, run.stderr
    assert f"--seed must be an integer from 0 to {MAX_SEED}" in run.json()["error"]
    ok = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--seed", str(MAX_SEED), "--json")
    assert ok.code == 0, ok.stderr


def test_methods_given_as_one_string_are_split_like_the_option():
    from slimmer.config import CompressConfig

    assert CompressConfig(methods="channel").methods == ("channel",)
    assert CompressConfig(methods="channel, nm").methods == ("channel", "nm")
