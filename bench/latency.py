"""Latency (BENCHMARKS.md §2): does smaller mean faster under onnxruntime on CPU?

Per model (random weights, 224×224, batch 1): the unpruned ONNX file against

* slimmer channel pruning at ``macs_target`` 0.5 (L1, global) with ``round_to`` 1, 8 and 16;
* Torch-Pruning 1.6.1 magnitude pruning at ratio 0.3 per layer, default and ``round_to=8``;
* a control: the unpruned file against a second export of itself (speedup should be 1.00).

Every file comes from the same exporter (``slimmer.export.onnx.export_onnx``: torch.onnx.export,
dynamo=True, external_data=False, static batch 1) and every pair is timed by
``slimmer.export.bench.paired_latency`` (both sessions loaded, warm-up, interleaved pairs,
median per-pair ratio; CPUExecutionProvider, 1 intra-op thread). Efficiency = speedup / MACs reduction.

    python bench/latency.py --models resnet50,mobilenet_v2 --pairs 100 --out bench/latency.jsonl --write-docs
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common as C  # noqa: E402

MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0", "convnext_tiny")
MACS_TARGET = 0.5
TP_RATIO = 0.3
CONFIGS = (
    ("control (unpruned re-exported)", "control", None),
    ("slimmer macs 0.5, round_to 1", "slimmer", 1),
    ("slimmer macs 0.5, round_to 8", "slimmer", 8),
    ("slimmer macs 0.5, round_to 16", "slimmer", 16),
    ("TP ratio 0.3, default", "tp", None),
    ("TP ratio 0.3, round_to 8", "tp", 8),
)


def _widths(model) -> dict:
    """How many Conv/Linear output widths are multiples of 8 (onnxruntime's fast kernels like them)."""
    from torch import nn

    widths = [
        m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    return {"layers": len(widths), "multiple_of_8": sum(1 for w in widths if w % 8 == 0)}


def run_model(name: str, pairs: int, warmup: int, workdir: Path, out: Path, configs: list[str] | None) -> None:
    import torch

    from slimmer.export.bench import paired_latency

    torch.set_num_threads(1)
    model = C.build_model(name)
    x = C.example(name, 1, seed=0)
    macs_before = C.count_macs(model, x)
    base = C.export(model, x, workdir / f"{name}.unpruned.onnx", dynamic_batch=False)
    for label, tool, round_to in CONFIGS:
        if configs and label not in configs and tool not in configs:
            continue
        row = {
            "model": name,
            "config": label,
            "tool": tool,
            "round_to": round_to,
            "macs_before": macs_before,
            "pairs": pairs,
            "warmup": warmup,
        }
        t0 = time.perf_counter()
        try:
            if tool == "control":
                pruned = model
            elif tool == "slimmer":
                pruned = C.slimmer_prune(model, x, macs_target=MACS_TARGET, round_to=round_to).model
            else:
                pruned = C.tp_prune(model, x, ratio=TP_RATIO, round_to=round_to, p=2, with_masked=False).model
            row["prune_seconds"] = round(time.perf_counter() - t0, 1)
            row["macs_after"] = C.count_macs(pruned, x)
            row["params_after"] = C.count_params(pruned)
            row["macs_reduction"] = macs_before / row["macs_after"]
            row["widths"] = _widths(pruned)
            path = C.export(pruned, x, workdir / f"{name}.{tool}.{round_to}.onnx", dynamic_batch=False)
            row["onnx_bytes"] = path.stat().st_size
            lat = paired_latency(base, path, warmup=warmup, pairs=pairs, threads=1, batch=1)
            row["speedup"] = lat.speedup
            row["efficiency"] = lat.speedup / row["macs_reduction"]
            row["unpruned_p50_ms"] = lat.a.p50_ms
            row["pruned_p50_ms"] = lat.b.p50_ms if lat.b else None
            row["slower_than_unpruned"] = lat.speedup < 1.0
        except Exception as exc:  # noqa: BLE001 - keep going with the other configurations
            row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:400]
            row["traceback"] = traceback.format_exc()[-1500:]
        row["seconds"] = round(time.perf_counter() - t0, 1)
        C.append_jsonl(out, row)
        print(
            f"{name:16s} {label:34s} macs x{row.get('macs_reduction', 0):.2f} speedup {row.get('speedup', 0):.2f} "
            f"eff {row.get('efficiency', 0):.2f} {row.get('error', '')}",
            flush=True,
        )


def report(rows: list[dict], metas: list[dict]) -> str:
    meta = metas[0] if metas else {}
    lines = [
        "Protocol: BENCHMARKS §2. Random weights, 224×224, batch 1. Every file is exported by "
        "`slimmer.export.onnx.export_onnx` (torch.onnx.export, dynamo=True, external_data=False, static batch) and "
        "timed against the unpruned file by `slimmer.export.bench.paired_latency` (onnxruntime CPUExecutionProvider, "
        "intra_op_num_threads=1, both sessions loaded, warm-up, then interleaved pairs; speedup = median of per-pair "
        "ratios). **Efficiency = speedup / MACs reduction.** slimmer: `plan_channels(macs_target=0.5, criterion='l1', "
        "scope='global', round_to=…)` + `shrink`. TP: Torch-Pruning 1.6.1 `MagnitudePruner` (L2 magnitude), "
        "`pruning_ratio=0.3` per layer, classifier ignored. The control row times the unpruned model against a second "
        "export of itself: its distance from 1.00 is the noise floor of the run. "
        '"×8 widths" = Conv/Linear layers whose output width is a multiple of 8.',
        "",
        "Command(s): " + "; ".join(f"`{m['command']}`" for m in metas) + "  " if metas else "Command: ?  ",
        f"Date: {meta.get('date', '?')}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()) + "  ",
        "Machine: 2 shared cores, other jobs running (hence paired ratios only).",
        "",
    ]
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        runs.setdefault((r["model"], r["config"]), []).append(r)
    models = list(dict.fromkeys(r["model"] for r in rows))
    slower = []
    for m in models:
        lines += [
            f"### {m}",
            "",
            "| configuration | MACs kept | MACs reduction | speedup (median of runs; each run) | efficiency "
            "| p50 ms unpruned → pruned (last run) | ×8 widths | runs × pairs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, _, _ in CONFIGS:
            ok = [r for r in runs.get((m, label), []) if "error" not in r]
            errors = [r for r in runs.get((m, label), []) if "error" in r]
            if not ok:
                text = f"error: {errors[-1]['error'][:150]}" if errors else "not run"
                lines.append(f"| {label} | {text} | | | | | | |".replace("\n", " "))
                continue
            r = ok[-1]
            speedup = statistics.median(x["speedup"] for x in ok)
            eff = speedup / r["macs_reduction"]
            each = ", ".join(f"{x['speedup']:.2f}" for x in ok)
            flag = " **slower than unpruned**" if speedup < 1.0 and r["tool"] != "control" else ""
            if flag and r["tool"] != "control":
                slower.append(f"{m} / {label} ({speedup:.2f}×)")
            w = r.get("widths", {})
            lines.append(
                f"| {label} | {1 / r['macs_reduction']:.3f} | {r['macs_reduction']:.2f}× "
                f"| {speedup:.2f}×{flag} ({each}) "
                f"| {eff:.2f} | {r['unpruned_p50_ms']:.1f} → {r['pruned_p50_ms']:.1f} "
                f"| {w.get('multiple_of_8', '?')}/{w.get('layers', '?')} | {len(ok)} × {r['pairs']} |"
            )
        lines.append("")
    summary = [
        "### Summary across models (median speedup per model, then over models)",
        "",
        "| configuration | models | mean efficiency | min efficiency | min speedup | MACs kept (range) |",
        "|---|---|---|---|---|---|",
    ]
    for label, tool, _ in CONFIGS:
        if tool == "control":
            continue
        per_model = []
        for m in models:
            ok = [r for r in runs.get((m, label), []) if "error" not in r]
            if ok:
                speedup = statistics.median(x["speedup"] for x in ok)
                per_model.append((speedup, speedup / ok[-1]["macs_reduction"], 1 / ok[-1]["macs_reduction"]))
        if per_model:
            summary.append(
                f"| {label} | {len(per_model)} | {statistics.mean(e for _, e, _ in per_model):.2f} "
                f"| {min(e for _, e, _ in per_model):.2f} | {min(s for s, _, _ in per_model):.2f}× "
                f"| {min(k for _, _, k in per_model):.3f}–{max(k for _, _, k in per_model):.3f} |"
            )
    lines += summary + [""]
    lines.append("Configurations slower than unpruned: " + (", ".join(slower) if slower else "none") + ".")
    not_run = [m for m in MODELS if m not in models]
    if not_run:
        lines.append(f"Not run yet: {', '.join(not_run)}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--pairs", type=int, default=100, help="interleaved pairs (≥ 50)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up runs per session (≥ 10)")
    parser.add_argument("--configs", help="only these configuration labels or tools (slimmer,tp,control)")
    parser.add_argument("--out", type=Path, default=Path("bench/latency.jsonl"), help="JSON lines, appended")
    parser.add_argument("--write-docs", action="store_true", help="write the tables into docs/BENCHMARKS.md")
    parser.add_argument("--report-only", action="store_true", help="do not run; tabulate --out")
    args = parser.parse_args(argv)
    if args.pairs < 50 or args.warmup < 10:
        parser.error("BENCHMARKS §2 asks for --pairs ≥ 50 and --warmup ≥ 10")
    if not args.report_only:
        C.append_jsonl(
            args.out,
            {
                "meta": True,
                "command": "python bench/latency.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
                "date": C.today(),
                "versions": C.versions(),
            },
        )
        configs = [c.strip() for c in args.configs.split(",")] if args.configs else None
        with tempfile.TemporaryDirectory(prefix="slimmer-latency-") as work:
            for name in [m.strip() for m in args.models.split(",") if m.strip()]:
                try:
                    run_model(name, args.pairs, args.warmup, Path(work), args.out, configs)
                except Exception as exc:  # noqa: BLE001
                    C.append_jsonl(
                        args.out,
                        {
                            "model": name,
                            "config": "unpruned export",
                            "tool": "unpruned",
                            "error": f"{type(exc).__name__}: {exc}"[:400],
                        },
                    )
    rows = C.read_jsonl(args.out)
    text = report([r for r in rows if not r.get("meta")], [r for r in rows if r.get("meta")])
    if args.write_docs:
        C.write_section("Latency", text)
    else:
        print(text)


if __name__ == "__main__":
    main()
