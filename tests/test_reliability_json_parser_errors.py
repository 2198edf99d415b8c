"""Issue 19, kind 5 (RELIABILITY.md row 36): with ``--json``, option-parser errors too print exactly
one JSON object on stdout (exit 2), like every other exit."""

import sys

import pytest
from json_stdout import one_json

from slimmer.cli import main


def _main(monkeypatch, capsys, *args: str):
    monkeypatch.setattr(sys, "argv", ["slimmer", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["compress", "m.pt", "--sparsity", "abc", "--json"], "--sparsity"),
        (["compress", "m.pt", "--sparsityy", "0.5", "--json"], "--sparsityy"),
        (["compress", "--json"], "model"),
        (["bench", "--json", "--pairs", "x"], "--pairs"),
        (["inspect", "m.pt", "--json", "--bogus"], "--bogus"),
        (["verify", "--json", "m.pt"], "exported"),
        (["nosuchcommand", "--json"], "nosuchcommand"),
        (["compress", "m.pt", "--json", "-h"], "-h"),  # -h is no help option: it printed no JSON at all
        (["compress", "m.pt", "--output-name", "--help", "--bogus", "--json"], "--bogus"),  # --help as a value
    ],
)
def test_parser_errors_print_one_json_object(monkeypatch, capsys, tmp_path, args, named):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(monkeypatch, capsys, *args)
    assert code == 2
    report = one_json(out)
    assert report["status"] == "failed" and report["exit_code"] == 2 and named in report["error"]
    assert named in err
    assert list(tmp_path.iterdir()) == []


def test_other_exits_still_print_exactly_one_object(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, _ = _main(monkeypatch, capsys, "compress", tmp_path / "missing.pt", "--json")
    assert code == 3 and one_json(out)["exit_code"] == 3


def test_without_json_parser_errors_print_nothing_on_stdout(monkeypatch, capsys):
    code, out, err = _main(monkeypatch, capsys, "compress", "m.pt", "--sparsity", "abc")
    assert code == 2 and out == "" and "--sparsity" in err
