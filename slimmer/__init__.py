"""slimmer: prune a PyTorch checkpoint, export a smaller ONNX graph, and verify it."""

__version__ = "0.1.0"

__all__ = ["QuantizeConfig", "QuantizeResult", "quantize"]


def __getattr__(name: str):
    """The Python API, imported on first use (``import slimmer`` stays light): ``slimmer.quantize(onnx_path,
    calibration, config)`` is :func:`slimmer.export.quantize.quantize`."""
    if name in __all__:
        from slimmer.export import quantize as _quantize

        return getattr(_quantize, name)
    raise AttributeError(f"module 'slimmer' has no attribute {name!r}")
