"""int8 after pruning (BENCHMARKS.md "int8"): accuracy, file size and paired latency, float vs int8.

(a) The bundled ``resnet20-fmnist`` checkpoint, channel-pruned to half the MACs and fine-tuned briefly
    on Fashion-MNIST (``slimmer compress ... --method channel --macs-target 0.5 --data fashion-mnist``),
    then ``slimmer quantize`` calibrated on the training split and evaluated on the whole test split
    (10,000 images): accuracy float vs int8, size ratio, paired latency.
(b) torchvision resnet18, mobilenet_v2, efficientnet_b0 with random weights (BatchNorm statistics set
    from random inputs, as in the latency benchmark), pruned to half the MACs without data, then
    ``slimmer quantize`` calibrated on random inputs: sizes, agreement and paired latency, and which
    file the run kept. Their 1000 logits are nearly equal (random weights), so top-1 agreement says
    little (mobilenet_v2: 66% at cosine 0.9994); these runs are gated on ``--min-cosine 0.99`` with
    ``--min-agreement 0``, and the table shows the agreement measured.

Every step is the command line, as a user runs it, in a subprocess with ``OMP_NUM_THREADS=1``; the
paired latency is ``slimmer.export.bench.paired_latency`` (1 intra-op thread, batch 1, interleaved
float/int8 pairs, median of the per-pair ratios). Pruned float files are reused from ``--work`` when
present (``--fresh`` rebuilds them).

    python bench/quantize.py --work /tmp/slimmer-int8 --finetune-steps 300 --pairs 100 --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common as C  # noqa: E402

TORCHVISION = ("resnet18", "mobilenet_v2", "efficientnet_b0")
FMNIST_MEAN, FMNIST_STD = "0.2860", "0.3530"
BEGIN, END = "<!-- int8:begin -->", "<!-- int8:end -->"


def slimmer(*args: str, log: Path) -> dict:
    """Run ``python -m slimmer ARGS --json``; the report on stdout, progress appended to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(C.REPO)}
    cmd = [sys.executable, "-m", "slimmer", *args, "--json"]
    with open(log, "a") as err:
        err.write(f"$ {shlex.join(cmd)}\n")
        err.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, check=False)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["_exit"] = proc.returncode
    return report


def compress_fmnist(work: Path, steps: int, fresh: bool, log: Path) -> Path:
    from slimmer.bundled import DEMO_WEIGHTS, bundled_file

    out = work / "resnet20_fmnist.half.onnx"
    if fresh or not out.is_file():
        rep = slimmer(
            "compress",
            str(bundled_file(DEMO_WEIGHTS)),
            "--arch",
            "resnet20-fmnist",
            "--method",
            "channel",
            "--macs-target",
            "0.5",
            "--data",
            "fashion-mnist",
            "--finetune-steps",
            str(steps),
            "-o",
            str(out),
            "--force",
            log=log,
        )
        if rep["_exit"] != 0:
            raise SystemExit(f"compress failed: {rep.get('error')}")
    return out


def compress_torchvision(name: str, work: Path, fresh: bool, log: Path) -> Path:
    import torch

    out = work / f"{name}.half.onnx"
    if fresh or not out.is_file():
        model = C.build_model(name)
        C.calibrate_batchnorm(model, name)
        ckpt = work / f"{name}.pt"
        torch.save(model.state_dict(), ckpt)
        rep = slimmer(
            "compress",
            str(ckpt),
            "--arch",
            f"torchvision:{name}",
            "--input-shape",
            "1,3,224,224",
            "--method",
            "channel",
            "--macs-target",
            "0.5",
            "-o",
            str(out),
            "--force",
            log=log,
        )
        if rep["_exit"] != 0:
            raise SystemExit(f"compress {name} failed: {rep.get('error')}")
    return out


def quantize(float_onnx: Path, pairs: int, log: Path, *extra: str) -> dict:
    out = float_onnx.with_name(float_onnx.stem + ".int8.onnx")
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    rep = slimmer(
        "quantize", str(float_onnx), "-o", str(out), "--threads", "1", "--pairs", str(pairs), "--force", *extra, log=log
    )
    rep["_seconds"] = time.perf_counter() - start
    rep["_int8_exists"] = out.is_file()
    return rep


def row(label: str, rep: dict) -> dict:
    q = rep.get("quantization") or {}
    return {
        "model": label,
        "exit": rep["_exit"],
        "kept": q.get("kept"),
        "int8_file_written": rep["_int8_exists"],
        "size_float": q.get("size_bytes_float"),
        "size_int8": q.get("size_bytes_int8"),
        "size_ratio": (q["size_bytes_float"] / q["size_bytes_int8"]) if q.get("size_bytes_int8") else None,
        "accuracy_float": q.get("accuracy_float"),
        "accuracy_int8": q.get("accuracy_int8"),
        "agreement": q.get("agreement"),
        "cosine": q.get("cosine"),
        "eval_samples": q.get("eval_samples"),
        "calibration": q.get("calibration"),
        "latency_ms_float": q.get("latency_ms_float"),
        "latency_ms_int8": q.get("latency_ms_int8"),
        "speedup": q.get("speedup"),
        "warnings": rep.get("warnings", []),
        "error": rep.get("error"),
        "seconds": round(rep["_seconds"], 1),
    }


PROBES = (
    ("uint8 activations, 7-bit weights (default)", {}),
    ("uint8 activations, 8-bit weights", {"reduce_range": False}),
    ("int8 activations (symmetric), 8-bit weights", {"activation_type": "int8", "reduce_range": False}),
    ("uint8 activations, 7-bit weights, per-tensor", {"per_channel": False}),
)


def probe_settings(float_onnx: Path, pairs: int) -> list[dict]:
    """The settings behind the defaults, on one pruned file: activation type, weight range, per channel.
    Calibration: 256 training images; evaluation: the first 2,000 test images; gates off."""
    from slimmer.export.quantize import quantize_after_compress
    from slimmer.export.quantize_config import QuantizeConfig
    from slimmer.train.data import load_data
    from slimmer.zoo import ARCHITECTURES

    arch = ARCHITECTURES.get("resnet20-fmnist")
    data = load_data("fashion-mnist", arch.input_shape, arch.mean, arch.std)
    x_cal = data.train.x[:256].numpy()
    x_eval, y_eval = data.eval.x[:2000].numpy(), data.eval.y[:2000].numpy()
    rows = []
    for label, change in PROBES:
        config = QuantizeConfig(
            **{
                "calibration_samples": 256,
                "eval_samples": 2000,
                "max_quantization_drop": 100,
                "min_agreement": 0,
                "min_cosine": -1,
                "quantize_anyway": True,
                "latency_pairs": pairs,
                **change,
            }
        )
        res = quantize_after_compress(
            float_onnx,
            x_cal,
            y_eval,
            config,
            eval_inputs=x_eval,
            output_path=float_onnx.with_name("probe.int8.onnx"),
            force=True,
        )
        rows.append(
            {
                "setting": label,
                "accuracy_float": res.accuracy_float,
                "accuracy_int8": res.accuracy_int8,
                "agreement": res.agreement,
                "cosine": res.cosine,
                "speedup": res.speedup,
                "size_int8": res.size_bytes_int8,
            }
        )
    float_onnx.with_name("probe.int8.onnx").unlink(missing_ok=True)
    return rows


def probe_depthwise(work: Path) -> list[dict]:
    """Two MobileNetV2 inverted-residual blocks (random weights, BatchNorm scales e^U(-4,1) and variances
    e^U(-6,0), as trained networks spread them), exported and quantized per channel and per tensor;
    cosine and top-1 agreement against float on 256 random inputs (calibration: 64 others)."""
    import numpy as np
    import torch
    from torch import nn
    from torchvision.models.mobilenetv2 import InvertedResidual

    from slimmer.export.files import commit
    from slimmer.export.onnx import export_onnx
    from slimmer.export.quantize import quantize
    from slimmer.export.quantize_config import QuantizeConfig

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        InvertedResidual(16, 16, 1, 6),
        InvertedResidual(16, 24, 2, 6),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 10),
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.exp(torch.empty(m.num_features).uniform_(-4, 1, generator=gen)))
                m.running_var.copy_(torch.exp(torch.empty(m.num_features).uniform_(-6, 0, generator=gen)))
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    path = work / "mbv2_blocks.onnx"
    exported = export_onnx(net.eval(), torch.zeros(1, 3, 32, 32), path)
    commit(exported.temp_path, path)
    rng = np.random.default_rng(0)
    cal = [{"input": rng.standard_normal((16, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    held = [{"input": rng.standard_normal((64, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    rows = []
    for per_channel in (True, False):
        config = QuantizeConfig(
            per_channel=per_channel, min_agreement=0, min_cosine=-1, quantize_anyway=True, latency_pairs=5
        )
        res = quantize(path, cal, config, work / "mbv2_blocks.int8.onnx", held_out=held, force=True)
        rows.append(
            {
                "per_channel": per_channel,
                "depthwise": res.depthwise_convs,
                "cosine": res.cosine,
                "agreement": res.agreement,
            }
        )
    return rows


def probe_table(rows: list[dict]) -> str:
    lines = [
        "| setting | accuracy float → int8 | top-1 agreement | cosine | int8 B | int8 speedup (paired) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "depthwise" in r:
            d = r["depthwise"]
            kind = "per-channel" if d["per_channel"] else "per-tensor"
            lines.append(
                f"| MobileNetV2 blocks ({d['depthwise']} depthwise convs, random inputs), {kind} weights | - "
                f"| {d['agreement']:.2%} | {d['cosine']:.5f} | - | - |"
            )
            continue
        acc = f"{r['accuracy_float']:.2%} → {r['accuracy_int8']:.2%}"
        lines.append(
            f"| {r['setting']} | {acc} | {r['agreement']:.2%} | {r['cosine']:.5f} | {r['size_int8']:,} "
            f"| {r['speedup']:.2f}× |"
        )
    return "\n".join(lines)


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(rows: list[dict]) -> str:
    lines = [
        "| model (half MACs) | calibration | exit | kept | float B | int8 B | size ratio | accuracy float → int8 "
        "| top-1 agreement | cosine | float ms | int8 ms | int8 speedup (paired) |",
        "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cal = r["calibration"] or {}
        acc = "-" if r["accuracy_float"] is None else f"{r['accuracy_float']:.2%} → {r['accuracy_int8']:.2%}"
        lines.append(
            f"| {r['model']} | {cal.get('source', '-')} ({cal.get('samples', '-')}) | {r['exit']} | {r['kept']} "
            f"| {_f(r['size_float'], ',')} | {_f(r['size_int8'], ',')} | {_f(r['size_ratio'], '.2f')}× | {acc} "
            f"| {_f(r['agreement'], '.2%')} | {_f(r['cosine'], '.4f')} | {_f(r['latency_ms_float'], '.3f')} "
            f"| {_f(r['latency_ms_int8'], '.3f')} | {_f(r['speedup'], '.2f')}× |"
        )
    return "\n".join(lines)


def write_docs(rows: list[dict], probes: list[dict], command: str) -> None:
    import onnxruntime
    import torch

    body = (
        f"{BEGIN}\n`{command}` (torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"OMP_NUM_THREADS=1, 1 intra-op thread, batch 1; {time.strftime('%Y-%m-%d', time.gmtime())})\n\n"
        f"{table(rows)}\n"
        + (
            f"\nSettings on the pruned resnet20-fmnist file (2,000 test images; gates off):\n\n{probe_table(probes)}\n"
            if probes
            else ""
        )
        + END
    )
    text = C.DOCS.read_text()
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + body + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n## int8 after pruning\n\n" + body + "\n"
    C.DOCS.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/slimmer-int8"))
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--models", default=",".join(("resnet20-fmnist", *TORCHVISION)))
    ap.add_argument("--fresh", action="store_true", help="rebuild the pruned float files")
    ap.add_argument("--out", type=Path, default=C.REPO / "bench" / "quantize.jsonl")
    ap.add_argument("--probe", action="store_true", help="also compare activation type, weight range, per channel")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "bench.log"
    rows = []
    for name in args.models.split(","):
        if name == "resnet20-fmnist":
            src = compress_fmnist(args.work, args.finetune_steps, args.fresh, log)
            rep = quantize(
                src,
                args.pairs,
                log,
                "--data",
                "fashion-mnist",
                "--mean",
                FMNIST_MEAN,
                "--std",
                FMNIST_STD,
                "--calibration-samples",
                "256",
                "--eval-samples",
                "10000",
                "--max-quantization-drop",
                "0.5",
            )
            label = f"resnet20-fmnist (bundled, fine-tuned {args.finetune_steps} steps)"
        else:
            src = compress_torchvision(name, args.work, args.fresh, log)
            # random weights: 1000 near-equal logits make top-1 agreement a coin toss; the gate is the cosine
            rep = quantize(
                src,
                args.pairs,
                log,
                "--calibration-samples",
                "32",
                "--eval-samples",
                "32",
                "--min-agreement",
                "0",
                "--min-cosine",
                "0.99",
            )
            label = f"{name} (random weights)"
        rows.append(row(label, rep))
        print(json.dumps(rows[-1]), flush=True)
    with open(args.out, "a") as fh:
        for r in rows:
            fh.write(json.dumps({**r, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    print(table(rows))
    probes = []
    if args.probe:
        probes = probe_settings(compress_fmnist(args.work, args.finetune_steps, False, log), args.pairs)
        with open(args.out, "a") as fh:
            for r in probes:
                fh.write(json.dumps({"probe": r, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
        print(probe_table(probes))
        for r in probe_depthwise(args.work):
            probes.append({"depthwise": r})
            with open(args.out, "a") as fh:
                fh.write(json.dumps({"probe_depthwise": r}) + "\n")
    if args.write_docs:
        write_docs(rows, probes, "python " + shlex.join(["bench/quantize.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
