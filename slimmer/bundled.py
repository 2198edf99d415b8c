"""The bundled default: the trained ``resnet20-fmnist`` checkpoint and a Fashion-MNIST test sample.

They ship inside the installed package (``models/`` in the source tree is installed as
``slimmer._models``), so ``slimmer demo`` works offline from any kind of install.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from slimmer.errors import InputError

DEMO_ARCH = "resnet20-fmnist"
DEMO_WEIGHTS = "resnet20_fmnist.safetensors"
DEMO_SAMPLE = "fmnist_sample.npz"


SOURCE_MODELS = Path(__file__).resolve().parent.parent / "models"


def bundled_file(name: str) -> Path:
    """The bundled file ``name``: from the installed package, or from ``models/`` in a source checkout."""
    try:
        path = Path(str(resources.files("slimmer._models").joinpath(name)))
    except ModuleNotFoundError:  # running from a source tree that was not installed
        path = SOURCE_MODELS / name
    if not path.is_file():
        raise InputError(
            f"the bundled file {name} is missing from this installation ({path})",
            hint="reinstall slimmer; in a source checkout, run python models/train_fmnist.py",
        )
    return path
