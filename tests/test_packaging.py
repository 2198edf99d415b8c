"""The wheel must carry every subpackage and the bundled files (a non-editable install runs the demo)."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "slimmer").rglob("__init__.py")}
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert config["package-dir"]["slimmer._models"] == "models"


def test_bundled_files_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["slimmer._models"]
    for name in ("resnet20_fmnist.safetensors", "fmnist_sample.npz"):
        assert (ROOT / "models" / name).is_file()
        assert any(Path(name).match(p) for p in patterns)


def test_every_third_party_import_is_a_declared_dependency():
    """A fresh `pip install .` must be able to run everything (Pillow was once imported but undeclared)."""
    import ast
    import sys

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in config["dependencies"]}
    import_names = {"pil": "pillow"}
    optional = {"torchvision", "timm", "torch_pruning", "transformers"}  # guarded imports with a clear error
    found = set()
    for path in (ROOT / "slimmer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    third_party = {n for n in found if n not in sys.stdlib_module_names and n != "slimmer"} - optional
    missing = {n for n in third_party if import_names.get(n.lower(), n.lower()) not in declared}
    assert missing == set()


def test_the_readme_headline_architecture_source_is_installed_by_the_readme_install():
    """``slimmer compress model.pt --arch torchvision:resnet18`` must work right after ``pip install .``."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {d.split(">")[0].split("=")[0].strip().lower() for d in config["dependencies"]}
    assert "torchvision" in declared
    assert "--arch torchvision:resnet18" in (ROOT / "README.md").read_text()
