"""slimmer: prune a PyTorch model, export a smaller ONNX graph, and verify it.

The Python API (imported on first use, so ``import slimmer`` stays light)::

    import slimmer
    result = slimmer.compress(model, example_inputs, slimmer.CompressConfig(methods=("channel",)))
    result.model, result.report, result.onnx_path
    slimmer.quantize(onnx_path, calibration, slimmer.QuantizeConfig())  # int8 of an exported file
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "compress": ("slimmer.api", "compress"),
    "run": ("slimmer.api", "run"),
    "CompressResult": ("slimmer.api", "CompressResult"),
    "CompressConfig": ("slimmer.config", "CompressConfig"),
    "ExampleInputs": ("slimmer.inputs", "ExampleInputs"),
    "InputSpec": ("slimmer.inputs", "InputSpec"),
    "quantize": ("slimmer.export.quantize", "quantize"),
    "QuantizeConfig": ("slimmer.export.quantize_config", "QuantizeConfig"),
    "QuantizeResult": ("slimmer.export.quantize_config", "QuantizeResult"),
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'slimmer' has no attribute {name!r}")
