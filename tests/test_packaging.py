"""The wheel must carry every subpackage and the bundled files (a non-editable install runs the demo)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "slimmer").rglob("__init__.py")
    }
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert config["package-dir"]["slimmer._models"] == "models"


def test_bundled_files_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["slimmer._models"]
    for name in ("resnet20_fmnist.safetensors", "fmnist_sample.npz"):
        assert (ROOT / "models" / name).is_file()
        assert any(Path(name).match(p) for p in patterns)
