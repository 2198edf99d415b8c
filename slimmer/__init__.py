"""slimmer: prune a PyTorch checkpoint, export a smaller ONNX graph, and verify it."""

__version__ = "0.1.0"
