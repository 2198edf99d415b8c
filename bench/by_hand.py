"""The export a user would do by hand, for ``bench/pipeline_cost.py``: load the checkpoint, capture
the model once with ``torch.export`` (dynamic batch), ``torch.onnx.export`` that program, and compare
one batch in onnxruntime against PyTorch.

    python bench/by_hand.py CKPT --arch torchvision:resnet50 --input-shape 1,3,224,224 -o OUT.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--arch", required=True, help="torchvision:NAME or resnet20-fmnist")
    ap.add_argument("--input-shape", default="1,1,28,28")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    import onnxruntime as ort

    from slimmer.arch import resolve_arch

    model = resolve_arch(args.arch).build().eval()
    if args.checkpoint.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(args.checkpoint))
    else:
        state = torch.load(args.checkpoint, weights_only=True)
    model.load_state_dict(state)
    shape = tuple(int(d) for d in args.input_shape.split(","))
    x = torch.randn(2, *shape[1:])
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.onnx.export(program, (x,), str(args.output), dynamo=True, input_names=["input"])
    session = ort.InferenceSession(str(args.output), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    if not np.allclose(got, expected, rtol=1e-3, atol=1e-4):
        raise SystemExit(f"onnxruntime differs from PyTorch: max |diff| {np.abs(got - expected).max():.3g}")


if __name__ == "__main__":
    main()
