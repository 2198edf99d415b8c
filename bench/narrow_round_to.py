"""Does rounding matter for latency on a narrow model? resnet20-fmnist at half the MACs.

Exports the bundled model unpruned and channel-pruned at ``--macs-target 0.5`` with round_to 1, 4
8, 16 and ``relative`` (slimmer/structures/rounding.py), and times each pruned file against the unpruned one with
``slimmer.export.bench.paired_latency`` (BENCHMARKS.md §2: onnxruntime CPU, 1 thread, batch 1,
interleaved pairs, median ratio), plus an unpruned-vs-itself control row.

    python bench/narrow_round_to.py --pairs 200 --round-to 1,4,8,16
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from accuracy import base_model  # noqa: E402

from slimmer.export.bench import paired_latency  # noqa: E402
from slimmer.export.onnx import export_onnx  # noqa: E402
from slimmer.graph.groups import build_groups  # noqa: E402
from slimmer.stats import count_macs  # noqa: E402
from slimmer.structures.channel import plan_channels  # noqa: E402
from slimmer.surgery import shrink  # noqa: E402

OUT = Path(__file__).resolve().parent / "narrow_round_to.jsonl"


def export(model: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    done = export_onnx(model, x, path, dynamic_batch=False)
    done.temp_path.replace(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--round-to", default="1,4,8,16", help="comma-separated round_to values (an int or relative)")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(1, 1, 28, 28)
    base = base_model()
    macs0 = count_macs(base, x)
    with tempfile.TemporaryDirectory() as tmp:
        ref = export(base, x, Path(tmp) / "base.onnx")
        control = export(copy.deepcopy(base), x, Path(tmp) / "control.onnx")
        files = {"control (unpruned re-exported)": (control, 1.0)}
        for round_to in (r if r == "relative" else int(r) for r in args.round_to.split(",")):
            model = copy.deepcopy(base)
            plan = plan_channels(
                build_groups(model, (x,)),
                model,
                macs_target=0.5,
                round_to=round_to,
                example_inputs=(x,),
                criterion="l1",
            )
            shrink(model, plan, (x,))
            path = export(model, x, Path(tmp) / f"rt{round_to}.onnx")
            widths = [pg.channels - len(pg.pruned) for pg in plan.groups]
            files[f"macs 0.5, round_to {round_to}, widths {widths}"] = (path, count_macs(model, x) / macs0)
        for label, (path, kept) in files.items():
            timing = paired_latency(ref, path, pairs=args.pairs, warmup=20)
            record = {"config": label, "macs_kept": kept, "speedup": timing.speedup, "pairs": args.pairs}
            _common.append_jsonl(OUT, record)
            print(json.dumps(record), flush=True)
    if args.write_docs:
        write_docs(" ".join(sys.argv))


def write_docs(command: str) -> None:
    rows = _common.read_jsonl(OUT)
    lines = ["| configuration | MACs kept | speedup vs unpruned (median of pairs) | efficiency |", "|---|---|---|---|"]
    for r in rows:
        eff = r["speedup"] * r["macs_kept"]
        lines.append(f"| {r['config']} | {r['macs_kept']:.3f} | {r['speedup']:.2f}× | {eff:.2f} |")
    body = (
        f"Command: `python {command}` ({_common.today()}). resnet20-fmnist (widths 16/32/64, 1×28×28), "
        "onnxruntime CPU, 1 thread, batch 1, interleaved pairs, on a loaded 2-core machine (the control row "
        "is the noise floor). Widths are the kept channels per channel group.\n\n"
        + "\n".join(lines)
        + "\n\nRounding matters for speed even on this narrow model: only multiples of 16 turn half the "
        "MACs into ~1.9× less time. But with round_to 16 every group keeps 16 or 32 channels: the 16-wide "
        "layers cannot be pruned, so the 32- and 64-wide ones are cut to a half or a quarter, and accuracy "
        "after fine-tuning suffers (see Accuracy: round_to 16 against 4). "
        "`--round-to` chooses between the two; the default stays 16 (speed)."
    )
    _common.write_section("Round-to on a narrow model", body)


if __name__ == "__main__":
    main()
