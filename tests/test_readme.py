"""The README's Python API example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:1]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    result = namespace["result"]
    assert result.report.status == "ok"
    assert (tmp_path / "two_tower.onnx").is_file() and (tmp_path / "two_tower.onnx.report.json").is_file()
    assert result.report.params["after"] < result.report.params["before"]
    assert capsys.readouterr().out.startswith("ok two_tower.onnx")
