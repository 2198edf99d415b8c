"""Layer folding on the bundled model (issue 6): Conv nodes, depth/params/MACs, paired latency, accuracy.

Runs ``slimmer.api.run`` on the bundled resnet20-fmnist checkpoint (92.23% test accuracy) with
``--method fold``, Fashion-MNIST and ``--steps`` fine-tuning steps at batch 128 (468 = one epoch;
SGD lr 0.01 cosine, distillation from the original: the defaults). The folding phase
(``slimmer.folding.phase``) linearizes, fine-tunes α for half the budget, folds, merges and
fine-tunes the other half. Two rows:

* ``measure`` — the default latency gate: a merge happens only where the merged conv is not slower
  than the pair in onnxruntime (and an activation is only linearized when its merge would pass);
* ``off`` — the gate off: every pair the rules allow is merged once its α reached 0.9 (what the
  paper does), to show what folding does to this model.

Then (``--latency``) each exported ONNX file is timed against the unpruned model's export per
BENCHMARKS.md §2: batch 1, 1 intra-op thread, ``--warmup`` warm-up runs, ``--pairs`` interleaved
pairs, median of per-pair ratios (``slimmer.export.bench.paired_latency``), plus a control row:
the unpruned export against a second export of itself (the noise floor). Accuracy is on the
10,000-image test split. Training uses one thread (``torch.set_num_threads(1)``).

    python bench/folding.py --rows measure,off --steps 468
    python bench/folding.py --latency --write-docs

Needs ``apt-get install dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _common  # noqa: E402

from slimmer.bundled import DEMO_ARCH, DEMO_WEIGHTS, bundled_file  # noqa: E402

OUT = Path(__file__).resolve().parent / "folding.jsonl"
WORK = Path("/tmp/slimmer-bench-folding")
SHAPE = (1, 1, 28, 28)
PRE_REGION = Path(__file__).resolve().parent / "folding.pre-region.jsonl"  # runs before region folding
ROWS = {
    "measure": "fold, latency gate on (default)",
    "off": "fold, latency gate off (every allowed merge)",
}


def conv_nodes(path: Path) -> int:
    import onnx

    return sum(1 for n in onnx.load(str(path)).graph.node if n.op_type == "Conv")


def fold_row(row: str, steps: int, seed: int, work: Path, alpha_lr_scale: float | None) -> dict:
    from slimmer.api import run as compress
    from slimmer.config import CompressConfig
    from slimmer.folding import phase

    phase.LATENCY_GATE = row
    if alpha_lr_scale is not None:
        phase.ALPHA_LR_SCALE = alpha_lr_scale
    out = work / f"fold-{row}-a{phase.ALPHA_LR_SCALE:g}-s{seed}.onnx"
    cfg = CompressConfig(
        model=bundled_file(DEMO_WEIGHTS),
        arch=DEMO_ARCH,
        methods=("fold",),
        data="fashion-mnist",
        finetune_steps=steps,
        batch_size=128,
        lr=0.01,
        augment=True,  # the recipe of the rows in docs/BENCHMARKS.md (compress's default until 2026-11-30)
        kd_weight=0.9,
        seed=seed,
        device="cpu",
        eval_samples=10_000,
        output=out,
        force=True,
        progress_every_s=60.0,
    )
    t0 = time.time()
    report = compress(cfg, progress=lambda stage, msg: print(f"[{row}] {stage}: {msg}", file=sys.stderr, flush=True))
    fold = report.pruning.get("fold", {})
    return {
        "row": row,
        "label": f"{ROWS[row]}, α lr {phase.ALPHA_LR_SCALE:g}×",
        "seed": seed,
        "steps": steps,
        "seconds": round(time.time() - t0),
        "status": report.status,
        "verification_passed": report.verification.get("passed"),
        "max_abs_diff": report.verification.get("max_abs_diff"),
        "accuracy": report.accuracy,
        "onnx": str(out),
        "onnx_conv_nodes": conv_nodes(out) if report.status == "ok" else None,
        "wrapped": len(fold.get("activations_wrapped", {})),
        "became_identity": fold.get("became_identity"),
        "alpha_final": fold.get("alpha_final"),
        "merges": len(fold.get("merges", [])),
        "merges_refused": fold.get("merges_refused"),
        "regions_planned": fold.get("regions_planned"),
        "regions_collapsed": fold.get("regions_collapsed"),
        "regions_refused": fold.get("regions_refused"),
        "not_wrapped": fold.get("activations_not_wrapped"),
        "latency_measured": fold.get("latency_measured"),
        "depth": fold.get("depth"),
        "params": fold.get("params"),
        "macs": fold.get("macs"),
        "conv_nodes": fold.get("conv_nodes"),
        "alpha_lr_scale": fold.get("alpha_lr_scale"),
        "finetune": {k: (report.finetune or {}).get(k) for k in ("steps_done", "initial_loss", "final_loss")},
    }


def alpha_scan(scales: list[float], steps: int, seed: int) -> list[dict]:
    """The α half alone at several α learning-rate multiples: where does α end after ``steps`` steps?

    Same loop as ``compress`` (SGD lr 0.01 cosine, KD α 0.9 from the original, pad-crop, λ 0.25,
    α from 0.05, latency gate off so every ``relu1`` and the stem region are wrapped); accuracy with σ_α still in
    place, on the first 2,000 test images.
    """
    from safetensors.torch import load_file

    from slimmer.folding import FoldingPenaltyHook, phase
    from slimmer.folding.linearize import linearizable
    from slimmer.stats import accuracy
    from slimmer.train.data import load_data, pad_crop_flip
    from slimmer.train.finetune import FinetuneConfig, finetune
    from slimmer.zoo import ARCHITECTURES, FMNIST_MEAN, FMNIST_STD

    def base() -> torch.nn.Module:
        m = ARCHITECTURES.get(DEMO_ARCH).build()
        m.load_state_dict(load_file(str(bundled_file(DEMO_WEIGHTS))))
        return m.eval()

    data = load_data("fashion-mnist", SHAPE, FMNIST_MEAN, FMNIST_STD)
    teacher = base()
    rows = []
    for scale in scales:
        model = base()
        phase.linearize(model, torch.randn(2, *SHAPE[1:]), gate="off")
        cfg = FinetuneConfig(
            steps=steps,
            batch_size=128,
            lr=0.01,
            seed=seed,
            device="cpu",
            kd_alpha=0.9,
            augment=pad_crop_flip(3),
            progress_every_s=1e9,
        )
        finetune(model, teacher, data.train, cfg, [FoldingPenaltyHook(phase.PENALTY, alpha_lr_scale=scale)])
        alphas = {p: round(m.value, 3) for p, m in linearizable(model).items()}
        rows.append(
            {
                "row": "alpha-scan",
                "scale": scale,
                "steps": steps,
                "seed": seed,
                "alphas": alphas,
                "at_least_0.9": sum(a >= 0.9 for a in alphas.values()),
                "acc_2k": accuracy(model, data.eval.x[:2000], data.eval.y[:2000]),
            }
        )
    return rows


def baseline(work: Path) -> tuple[Path, Path, float]:
    """The unpruned model exported twice (for the control row) and its test accuracy."""
    from safetensors.torch import load_file

    from slimmer.stats import accuracy
    from slimmer.train.data import load_data
    from slimmer.zoo import ARCHITECTURES, FMNIST_MEAN, FMNIST_STD

    model = ARCHITECTURES.get(DEMO_ARCH).build()
    model.load_state_dict(load_file(str(bundled_file(DEMO_WEIGHTS))))
    model.eval()
    x = torch.randn(SHAPE)
    a = _common.export(model, x, work / "original.onnx", dynamic_batch=False)
    b = _common.export(model, x, work / "original-again.onnx", dynamic_batch=False)
    data = load_data("fashion-mnist", SHAPE, FMNIST_MEAN, FMNIST_STD)
    return a, b, accuracy(model, data.eval.x, data.eval.y)


def latency(rows: list[dict], work: Path, warmup: int, pairs: int) -> list[dict]:
    from slimmer.export.bench import paired_latency

    original, again, acc = baseline(work)
    timed = [
        {
            "row": "control",
            "label": "control: unpruned vs a re-export of itself",
            "onnx": str(again),
            "onnx_conv_nodes": conv_nodes(again),
            "accuracy": {"before": acc, "after_finetune": acc},
        }
    ]
    timed += rows
    for r in timed:
        result = paired_latency(original, Path(r["onnx"]), warmup=warmup, pairs=pairs, threads=1, batch=1)
        r["latency"] = {
            "original_ms": round(result.a.p50_ms, 4),
            "ms": round(result.b.p50_ms, 4),
            "speedup": round(result.speedup, 3),
            "warmup": warmup,
            "pairs": pairs,
        }
        r["original_conv_nodes"] = conv_nodes(original)
    return timed


def _pair(d: dict | None) -> str:
    return f"{d['before']:,} → {d['after']:,}" if d and d.get("before") is not None else "—"


def reading(timed: list[dict]) -> str:
    """The paragraph under the table, with the numbers of the rows it reads."""
    control = next(r for r in timed if r["row"] == "control")
    rows = {r["row"]: r for r in timed if r["row"] in ROWS}
    out = []
    gated = rows.get("measure")
    if gated and gated.get("regions_collapsed"):
        region = gated["regions_collapsed"][0]
        pairs = [v["speedup"] for k, v in (gated.get("latency_measured") or {}).items() if "conv)" not in k]
        out.append(
            f"**Reading.** With the default gate, layer folding pays on this model through one region: the stem and "
            f"stage 1 ({len(region['layers'])} convolutions and 3 residual sums, 1 → 16 channels) became one "
            f"{region['into'].split(',')[0]}, because their activations, sharing one α, all reached α ≥ 0.9. "
            f"Conv nodes {gated['original_conv_nodes']} → {gated['onnx_conv_nodes']}, depth {_pair(gated['depth'])}, "
            f"MACs {_pair(gated['macs'])}, and the exported model is {gated['latency']['speedup']:.2f}× as fast as "
            f"the unpruned one (control {control['latency']['speedup']:.2f}×), at "
            f"{gated['accuracy']['after_finetune']:.2%} test accuracy against {gated['accuracy']['before']:.2%}: the "
            "whole first stage is linear now, and the 234 steps after folding also absorb the border approximation "
            "of a 15×15 kernel on a 28×28 image. "
            + (
                f"Every pairwise merge stayed refused: a merged 5×5 (or 7×7 stride 2) conv ran at "
                f"{min(pairs):.2f}–{max(pairs):.2f}× the speed of the two 3×3 convs it replaces."
                if pairs
                else ""
            )
        )
    off = rows.get("off")
    if off:
        out.append(
            f"With the gate off (the paper's way: every merge the rules allow once α ≥ 0.9), {off['merges']} "
            f"conv pairs merged and {len(off.get('regions_collapsed') or [])} region collapsed: "
            f"{off['original_conv_nodes']} → {off['onnx_conv_nodes']} Conv nodes and depth {_pair(off['depth'])}, but "
            f"MACs {_pair(off['macs'])} and {off['latency']['speedup']:.2f}× the speed, at "
            f"{off['accuracy']['after_finetune']:.2%}: merging 3×3 pairs costs time on this CPU, which is why the gate "
            "measures each merge. In that run each `relu1` had its own α and only the stem's activations were "
            "tied, so the full stem region did not open (`layer1.0.relu1` went to 0)."
        )
    return "\n\n".join(out)


def write_docs(timed: list[dict], command: str, scan: list[dict]) -> None:
    lines = [
        "| row | activations linearized → identity | merges (refused) | Conv nodes in ONNX | depth | params | MACs | "
        "latency ms (unpruned → row) | paired speedup | test acc before → after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in timed:
        lat = r["latency"]
        acc = r["accuracy"]
        after = acc.get("after_finetune")
        lines.append(
            f"| {r['label']} | "
            + (f"{r['wrapped']} → {len(r['became_identity'] or [])}" if "wrapped" in r else "—")
            + " | "
            + (f"{r['merges']} ({len(r['merges_refused'] or {})})" if "merges" in r else "—")
            + f" | {r['original_conv_nodes']} → {r['onnx_conv_nodes']} | {_pair(r.get('depth'))} | "
            f"{_pair(r.get('params'))} | {_pair(r.get('macs'))} | {lat['original_ms']:.3f} → {lat['ms']:.3f} | "
            f"{lat['speedup']:.3f} | {acc['before']:.2%} → {after:.2%} |"
        )
    notes = []
    for r in timed:
        if r.get("alpha_final"):
            alphas = ", ".join(f"{k} {v:.2f}" for k, v in r["alpha_final"].items())
            notes.append(f"- {r['label']}: final α: {alphas}.")
        for region in r.get("regions_collapsed") or []:
            notes.append(
                f"- {r['label']}: collapsed {', '.join(region['layers'])} (and the residual sums between them) "
                f"into one {region['into']}: MACs {region['macs_before']:,} → {region['macs_after']:,}."
            )
        measured = r.get("latency_measured") or {}
        pairs = [v["speedup"] for k, v in measured.items() if "conv)" not in k]
        regions = {k: v["speedup"] for k, v in measured.items() if "conv)" in k}
        if pairs:
            notes.append(
                f"- {r['label']}: the gate timed {len(pairs)} conv pairs against their merged conv "
                f"(pair/merged {min(pairs):.2f}–{max(pairs):.2f}; < 1 means the merged conv is slower)"
                + (
                    "; and the region against its one conv: " + ", ".join(f"{k} {v:.2f}" for k, v in regions.items())
                    if regions
                    else ""
                )
                + "."
            )
    v = _common.versions()
    first = timed[1] if len(timed) > 1 else {}
    body = (
        "Commands (one process per row, run side by side on a shared 2-core machine): "
        f"`python bench/folding.py --rows measure --steps {first.get('steps', 468)}`, "
        f"`python bench/folding.py --rows off --steps {first.get('steps', 468)}`, then "
        f"`python {command}` ({_common.today()}; torch {v.get('torch')}, onnxruntime {v.get('onnxruntime')}).\n\n"
        "Bundled resnet20-fmnist, `--method fold` with `--data fashion-mnist --finetune-steps "
        f"{first.get('steps', 468)} --batch-size 128` (half the steps learn α with λ = 0.25, α from 0.05, the "
        "activations of a region sharing one α; the other half after folding), distillation "
        "from the original. Latency per §2: batch 1, 1 intra-op thread, "
        f"{timed[0]['latency']['warmup']} warm-up runs, {timed[0]['latency']['pairs']} interleaved pairs, median "
        "of per-pair ratios unpruned/row (> 1 = the row is faster). Depth = Conv/Linear layers on the longest path; "
        "params and MACs are the model's before the folding phase and after merging (BatchNorm folded). "
        "Test accuracy on the 10,000-image test split.\n\n" + "\n".join(lines) + "\n\n" + "\n".join(notes)
    )
    body += "\n\n" + reading(timed)
    if scan:
        body += (
            "\n\n**α learning rate** (measured before region folding existed, so only the nine `relu1` were "
            "wrapped; the α half alone, the loop of `python bench/folding.py --alpha-scan 1,10,30`: "
            f"{scan[0]['steps']} steps, accuracy with σ_α in place on the first 2,000 "
            "test images):\n\n"
            "| α lr multiple | α ≥ 0.9 after | final α (layer1.0 … layer3.2) | accuracy |\n|---|---|---|---|\n"
            + "\n".join(
                f"| {r['scale']:g}× | {r['at_least_0.9']} / {len(r['alphas'])} | "
                f"{' '.join(f'{a:.2f}' for a in r['alphas'].values())} | {r['acc_2k']:.2%} |"
                for r in sorted(scan, key=lambda r: r["scale"])
            )
        )
    _common.write_section("Layer folding", body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="", help="comma-separated: measure, off")
    ap.add_argument("--steps", type=int, default=468)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--latency", action="store_true", help="time the exported rows of --out against the original")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--alpha-scan", default="", help="comma-separated α learning-rate multiples to scan")
    ap.add_argument("--alpha-steps", type=int, default=234)
    ap.add_argument("--alpha-lr-scale", type=float, default=None, help="override phase.ALPHA_LR_SCALE")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    for row in filter(None, args.rows.split(",")):
        record = fold_row(row, args.steps, args.seed, args.work, args.alpha_lr_scale)
        _common.append_jsonl(args.out, record)
        print(json.dumps(record), flush=True)
    if args.alpha_scan:
        for record in alpha_scan([float(v) for v in args.alpha_scan.split(",")], args.alpha_steps, args.seed):
            _common.append_jsonl(args.out, record)
            print(json.dumps(record), flush=True)
    if args.latency:
        latest: dict[str, dict] = {}
        for r in _common.read_jsonl(args.out):
            if r.get("status") == "ok" and Path(r["onnx"]).exists():
                if r.get("wrapped") == 0:  # the α learning rate never mattered
                    r["label"] = r["label"].split(", α lr")[0] + ", nothing linearized"
                elif "α lr" not in r["label"]:  # rows written before the label carried it
                    r["label"] += f", α lr {r.get('alpha_lr_scale'):g}×"
                latest[r["label"]] = r  # the last run of each row
        timed = latency([r for r in latest.values() if r["row"] in ROWS], args.work, args.warmup, args.pairs)
        for r in timed:
            print(json.dumps({k: r.get(k) for k in ("row", "onnx_conv_nodes", "latency")}), flush=True)
        if args.write_docs:
            runs = _common.read_jsonl(args.out) + (_common.read_jsonl(PRE_REGION) if PRE_REGION.exists() else [])
            scan = [r for r in runs if r.get("row") == "alpha-scan"]
            write_docs(timed, "bench/folding.py " + " ".join(sys.argv[1:]), scan)


if __name__ == "__main__":
    main()
