"""The CLI's registry-backed options offer exactly the registries' names, and --replay replays a run."""

from __future__ import annotations

import json

import pytest
import typer
from quick_options import QUICK_EXPORT

from slimmer import choices
from slimmer.cli import app
from slimmer.prune import METHODS


def _compress_params():
    command = typer.main.get_command(app).commands["compress"]
    return {opt: p for p in command.params for opt in getattr(p, "opts", [])}


@pytest.mark.parametrize("option", sorted(choices.REGISTRY_OPTIONS))
def test_help_of_every_registry_backed_option_lists_exactly_the_registry(option):
    help_text = _compress_params()[option].help
    listed = help_text.split("one of: ", 1)[1]
    names = choices.REGISTRY_OPTIONS[option]()
    assert listed.startswith(", ".join(names)), help_text
    assert names, option


def test_method_choices_are_the_method_handlers_and_criteria_the_criterion_registry():
    from slimmer.criteria import CRITERIA

    assert choices.methods() == METHODS.names() == ["channel", "fold", "nm", "search", "unstructured"]
    assert set(CRITERIA.names()) <= set(choices.criteria())


def test_compress_help_lists_all_four_methods_and_every_criterion(cli):
    run = cli("compress", "--help")
    assert run.code == 0
    text = " ".join(run.stdout.split())
    for name in ["unstructured", "channel", "nm", "fold", *choices.criteria()]:
        assert name in text, name
    for panel in ("Input", "Pruning", "Recovery", "Export and verification", "Output"):
        assert panel in run.stdout


def test_replay_reproduces_the_onnx_file_byte_for_byte(cli, r20, tmp_path):
    first = tmp_path / "a.onnx"
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--method", "channel", "--sparsity", "0.5", "-o", first)
    assert run.code == 0, run.stderr
    second = tmp_path / "b.onnx"
    run = cli("compress", "--replay", first.with_name("a.onnx.report.json"), "-o", second, "--json")
    assert run.code == 0, run.stderr
    report = run.json()
    assert report["config"]["methods"] == ["channel"] and report["config"]["output"] == str(second)
    assert second.read_bytes() == first.read_bytes()
    assert (tmp_path / "b.onnx.report.json").is_file()


def test_replay_never_takes_trust_remote_code_from_the_file(cli, r20, tmp_path):
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "-o", tmp_path / "a.onnx")
    assert run.code == 0
    report_path = tmp_path / "a.onnx.report.json"
    recorded = json.loads(report_path.read_text())
    recorded["config"]["trust_remote_code"] = True
    recorded["config"]["model"] = str(tmp_path / "module.pt")
    import torch

    from slimmer.zoo import ARCHITECTURES

    torch.save(ARCHITECTURES.get("resnet20-fmnist").build(), tmp_path / "module.pt")  # a pickled module
    report_path.write_text(json.dumps(recorded))
    run = cli("compress", "--replay", report_path, "-o", tmp_path / "b.onnx", "--json")
    assert run.code == 3
    assert not (tmp_path / "b.onnx").exists()


def test_replay_of_a_file_that_is_not_a_report_exits_3(cli, tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text("[1, 2]")
    run = cli("compress", "--replay", bad, "--json")
    assert run.code == 3
    assert "--replay" in run.json()["error"]


def test_compress_without_model_or_replay_exits_2(cli):
    run = cli("compress", "--json")
    assert run.code == 2
    assert "MODEL" in run.json()["error"]


def test_demo_options_shared_with_compress_default_alike_unless_they_are_the_demo_recipe():
    """``slimmer demo`` had kept ``--criterion magnitude`` after compress's default became per-method."""
    commands = typer.main.get_command(app).commands

    def defaults(name):
        return {o: p.default for p in commands[name].params for o in getattr(p, "opts", []) if o.startswith("--")}

    compress, demo = defaults("compress"), defaults("demo")
    recipe = {"--method", "--finetune-steps", "--measure-latency", "--quantize", "--output", "--force"}
    shared = (set(compress) & set(demo)) - recipe
    assert "--criterion" in shared
    assert {o: demo[o] for o in shared} == {o: compress[o] for o in shared}


def test_replay_never_takes_force_from_the_file_and_never_overwrites_the_report_it_reads(cli, r20, tmp_path):
    """The recorded run's --force used to be replayed: ``--replay R`` alone replaced R and the ONNX it
    described; and ``-o R --force`` wrote the ONNX over the report being replayed."""
    first = tmp_path / "a.onnx"
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "-o", first, "--force", *QUICK_EXPORT)
    assert run.code == 0, run.stderr
    report = tmp_path / "a.onnx.report.json"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    again = cli("compress", "--replay", report, "--json")  # the recorded report path is the one read
    assert again.code == 2, again.stderr
    assert "would overwrite the input" in again.json()["error"]
    taken = tmp_path / "b.onnx"
    taken.write_bytes(b"not slimmer's")
    before[taken.name] = taken.read_bytes()
    kept = cli("compress", "--replay", report, "-o", taken, "--json")
    assert kept.code == 3, kept.stderr
    assert "already exists" in kept.json()["error"]
    over = cli("compress", "--replay", report, "-o", report, "--report", tmp_path / "other.json", "--force", "--json")
    assert over.code == 2, over.stderr
    assert "would overwrite the input" in over.json()["error"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_output_that_is_not_a_regular_file_is_refused_even_with_force(cli, r20, tmp_path):
    """``-o /dev/null --force`` (as root) renamed the ONNX file over the device node itself."""
    import os
    import stat

    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "-o", fifo, "--force", "--json")
    assert run.code == 3, run.stderr
    assert "not a regular file" in run.json()["error"]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.onnx", r20.name]


def test_no_help_text_turns_into_an_emoji():
    """rich renders ``:name:`` as an emoji: "N:M: hold" showed as "NⓂ hold" in --help."""
    import re

    import typer.main
    from rich._emoji_codes import EMOJI

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        for text in texts:
            codes = [c for c in re.findall(r":([a-zA-Z0-9_+-]+):", text) if c.lower() in EMOJI]
            assert not codes, f"{name}: {text!r} renders {codes} as emoji"
