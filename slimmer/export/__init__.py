"""ONNX export (atomic), onnxruntime verification and paired latency."""
