"""Issue 19, kind 7: ``--arch mymodule:build`` finds ``mymodule.py`` in the current folder, as
``python -m`` would; a module found nowhere names PYTHONPATH in the hint."""

import sys

import torch
import toy_models
from json_stdout import one_json

SOURCE = "import toy_models\n\n\ndef build():\n    return toy_models.Tiny()\n\n\nbuild.input_shape = (1, 1, 8, 8)\n"


def test_module_in_the_current_folder_is_found(cli, tmp_path, monkeypatch):
    work = tmp_path / "project"
    work.mkdir()
    (work / "cwd_model_19.py").write_text(SOURCE)
    torch.save(toy_models.Tiny().state_dict(), work / "w.pt")
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(work))])
    monkeypatch.delitem(sys.modules, "cwd_model_19", raising=False)
    run = cli("inspect", "w.pt", "--arch", "cwd_model_19:build", "--json")
    assert run.code == 0, run.stderr
    assert one_json(run.stdout)["input"]["arch"] == "cwd_model_19:build"
    sys.modules.pop("cwd_model_19", None)


def test_module_found_nowhere_names_pythonpath(cli, tmp_path, monkeypatch, tiny_ckpt):
    monkeypatch.chdir(tmp_path)
    run = cli("compress", tiny_ckpt, "--arch", "nowhere_model_19:build", "--json")
    assert run.code == 2
    assert "cannot import 'nowhere_model_19'" in run.stderr and "PYTHONPATH" in run.stderr
    assert "PYTHONPATH" in one_json(run.stdout)["hint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]
