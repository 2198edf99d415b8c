"""``--latency-aware`` and ``--speedup`` through the CLI (issue 3)."""

from pathlib import Path

import pytest
from quick_options import QUICK_EXPORT


def test_latency_aware_keeps_the_macs_target_and_is_recorded(cli, r20):
    run = cli(
        "compress",
        r20,
        "--arch",
        "resnet20-fmnist",
        "--method",
        "channel",
        "--macs-target",
        "0.5",
        "--latency-aware",
        *QUICK_EXPORT,
        "--json",
    )
    assert run.code == 0, run.stderr
    r = run.json()
    assert r["pruning"]["latency_aware"] is True and r["config"]["latency_aware"] is True
    assert r["macs"]["after"] / r["macs"]["before"] <= 0.51
    assert r["verification"]["passed"]


def test_an_unreachable_speedup_exits_5_names_the_best_measured_and_writes_no_model(cli, tiny_ckpt):
    # the smallest classifier: every speedup trial exports and times it, and nothing reaches 50x
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--method", "channel", "--speedup", "50", "--json")
    assert run.code == 5, run.stderr
    r = run.json()
    wanted = r["pruning"]["speedup"]
    assert wanted["requested"] == 50 and wanted["reached"] is False and wanted["trials"]
    assert "speedup not reached: requested 50x" in r["error"]
    assert not tiny_ckpt.with_name("tiny.slim.onnx").exists()
    assert not list(Path(tiny_ckpt.parent).glob("*.partial"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "channel", "--speedup", "0.5"], "--speedup must be a number > 1"),
        (["--method", "channel", "--speedup", "2", "--macs-target", "0.5"], "chooses the MACs target itself"),
        (["--speedup", "2"], "--speedup applies to --method channel"),
        (["--latency-aware"], "--latency-aware applies to --method channel"),
        (["--method", "channel", "--latency-aware", "--scope", "layer"], "use --scope global"),
    ],
)
def test_speed_option_usage_errors_exit_2(cli, r20, args, message):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", *args)
    assert run.code == 2, run.stderr
    assert message in run.stderr
    assert sorted(p.name for p in r20.parent.iterdir()) == ["r20.pt"]
