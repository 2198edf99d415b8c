"""Issue 19, kind 14 (RELIABILITY.md row 43): messages carry no terminal escape codes, and
``slimmer verify`` of a checkpoint against compress's pruned graph says why they cannot match."""

import pytest
from json_stdout import one_json

import slimmer.api
from slimmer.errors import ExportError


@pytest.mark.parametrize(
    "raised",
    [
        ExportError("\x1b[96mtorch.export\x1b[0m failed at \x1b[1;31mline 3\x1b[0m"),
        RuntimeError("\x1b[96mtorch.export\x1b[0m failed at [1;31mline 3[0m"),
    ],
)
def test_escape_codes_are_stripped_from_messages(cli, tiny_ckpt, monkeypatch, raised):
    def fail(*a, **k):
        raise raised

    monkeypatch.setattr(slimmer.api, "run", fail)
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--json")
    assert run.code == (4 if isinstance(raised, ExportError) else 1)
    error = one_json(run.stdout)["error"]
    assert "torch.export failed at line 3" in error
    for text in (run.stdout, run.stderr):
        assert "\x1b" not in text and "[96m" not in text and "[0m" not in text


def test_warnings_in_the_report_are_stripped_too(cli, tiny_ckpt, monkeypatch):
    real = slimmer.api.run

    def noisy(config, progress=None):
        report = real(config, progress)
        report.warnings.append("\x1b[93mcoloured\x1b[0m warning")
        return report

    monkeypatch.setattr(slimmer.api, "run", noisy)
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--exporter", "legacy", "--json")
    assert run.code == 0, run.stderr
    assert "coloured warning" in one_json(run.stdout)["warnings"]
    assert "\x1b" not in run.stdout and "\x1b" not in run.stderr


def test_verify_against_a_pruned_graph_says_it_is_pruned(cli, tiny_ckpt):
    out = tiny_ckpt.with_name("tiny.slim.onnx")
    run = cli("compress", tiny_ckpt, "--arch", "toy_models:Tiny", "--exporter", "legacy", "--sparsity", "0.7")
    assert run.code == 0, run.stderr
    run = cli("verify", tiny_ckpt, out, "--arch", "toy_models:Tiny", "--json")
    assert run.code == 5
    result = one_json(run.stdout)
    assert result["passed"] is False
    note = result["warnings"][0]
    assert f"{out} is a pruned graph" in note and "cannot equal the unpruned checkpoint" in note
    assert "pruned model" in note and "tiny.slim.onnx.report.json" in note
    assert "hint:" in run.stderr and "is a pruned graph" in run.stderr


def test_verify_of_a_faithful_export_has_no_such_note(cli, tiny_ckpt, monkeypatch):
    import torch
    import toy_models

    from slimmer.export.files import commit
    from slimmer.export.onnx import export_onnx
    from slimmer.inspection import pruned_graph_note

    model = toy_models.Tiny()
    model.load_state_dict(torch.load(tiny_ckpt))
    out = tiny_ckpt.with_name("dense.onnx")
    commit(export_onnx(model.eval(), torch.randn(2, 1, 8, 8), out, exporter="legacy").temp_path, out)
    assert pruned_graph_note(out, model) is None
    run = cli("verify", tiny_ckpt, out, "--arch", "toy_models:Tiny", "--json")
    assert run.code == 0 and one_json(run.stdout)["passed"] is True


def test_verify_against_a_channel_pruned_graph_says_channels_were_removed(cli, r20):
    out = r20.with_name("r20.slim.onnx")
    run = cli("compress", r20, "--arch", "resnet20-fmnist", "--method", "channel", "--exporter", "legacy")
    assert run.code == 0, run.stderr
    run = cli("verify", r20, out, "--arch", "resnet20-fmnist", "--json")
    assert run.code == 5
    note = one_json(run.stdout)["warnings"][0]
    assert "channels were removed" in note and "r20.slim.onnx.plan.json and r20.slim.onnx.report.json" in note
