"""Shared pieces of the benchmarks: models, the two pruners (slimmer, Torch-Pruning), comparisons, docs.

Both pruners are judged the same way: the pruned model must equal its *masked original* (the
original with every removed parameter/buffer element set to zero). slimmer builds its masked
original with :func:`slimmer.surgery.mask_model`; for Torch-Pruning we replay every handler call
of its groups on a float64 "tag" twin whose elements hold their own flat index, so the elements
that survive in the twin are exactly those Torch-Pruning kept (see :func:`tp_prune`).
"""

from __future__ import annotations

import copy
import datetime as _dt
import importlib.metadata
import json
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "BENCHMARKS.md"
BIG_INPUT = {"inception_v3": 299}


# ---------------------------------------------------------------- models


def input_size(name: str) -> int:
    return BIG_INPUT.get(name, 224)


def all_models() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def build_model(name: str, seed: int = 0) -> nn.Module:
    """A torchvision classification model with random weights, in eval mode."""
    import torchvision

    torch.manual_seed(seed)
    kwargs: dict[str, Any] = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kwargs["init_weights"] = True  # avoids the deprecation warning; same distribution
    return torchvision.models.get_model(name, **kwargs).eval()


def example(name: str, batch: int = 1, seed: int = 0) -> torch.Tensor:
    size = input_size(name)
    return torch.randn((batch, 3, size, size), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reinit_zero_layers(model: nn.Module, seed: int = 1) -> list[str]:
    """Re-initialize Conv/Linear layers whose weight is all zero (torchvision ViT's head), so the
    comparison is not between two all-zero outputs. Returns the layers changed."""
    torch.manual_seed(seed)
    changed = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and not module.weight.any():
            module.reset_parameters()
            changed.append(name)
    return changed


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, name: str, batches: int = 2, batch: int = 8) -> None:
    """Set BatchNorm running statistics from random inputs (cumulative average), back in eval mode.

    With torchvision's own init and fresh running stats (mean 0, var 1), activations of some models
    (googlenet: trunc-normal std 0.01 everywhere) vanish with depth and the logits are the same for
    every input, which makes any comparison meaningless."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(batches):
        model(example(name, batch, seed=100 + i))
    for m in bns:
        m.momentum = 0.1
    model.eval()


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The layers that produce the logits (kept whole by Torch-Pruning, as in BENCHMARKS §1):
    every Linear/Conv with 1000 outputs."""
    out = []
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == 1000:
            out.append(module)
        elif isinstance(module, nn.Conv2d) and module.out_channels == 1000:
            out.append(module)
    return out


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "logits"):
        out = out.logits
    return out.detach().double()


@dataclass
class Comparison:
    max_abs: float
    scale: float
    rel: float  # max_abs / scale
    constant: bool  # the reference output is the same for every input of the batch
    ok: bool
    reason: str = ""


def compare_outputs(got: torch.Tensor, want: torch.Tensor, rel_tol: float = 1e-5, rtol: float = 1e-4) -> Comparison:
    """Pass when every element satisfies |got - want| <= rel_tol * scale + rtol * |want|, with scale =
    max |want| (a tolerance relative to the output scale: Inception logits reach 1e6, ViT's are ~1),
    and the reference is not constant across the batch."""
    got, want = got.double(), want.double()
    if got.shape != want.shape:
        reason = f"shape {tuple(got.shape)} != {tuple(want.shape)}"
        return Comparison(float("inf"), 0.0, float("inf"), False, False, reason)
    if not (torch.isfinite(got).all() and torch.isfinite(want).all()):
        return Comparison(float("inf"), 0.0, float("inf"), False, False, "non-finite outputs")
    diff = (got - want).abs()
    scale = float(want.abs().max()) if want.numel() else 0.0
    max_abs = float(diff.max()) if diff.numel() else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    flat = want.reshape(want.shape[0], -1)
    constant = want.shape[0] > 1 and float((flat.max(0).values - flat.min(0).values).max()) <= 1e-7 * max(scale, 1e-30)
    ok = bool((diff <= rel_tol * scale + rtol * want.abs()).all())
    reason = ""
    if constant:
        ok, reason = False, "output is the same for every input (comparison proves nothing)"
    elif scale == 0:
        ok, reason = False, "output is all zero"
    elif not ok:
        reason = f"pruned differs from masked original: max diff {max_abs:.3g} = {rel:.2g} x output scale {scale:.3g}"
    return Comparison(max_abs, scale, rel, constant, ok, reason)


def with_latency_exponent(exponent: float, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the latency-aware key's exponent on the cost term set to ``exponent``
    (``slimmer.structures.channel.LATENCY_EXPONENT``: 1 divides a channel's score by its group's relative
    time per MAC, 0 ignores it)."""
    from slimmer.structures import channel

    saved = channel.LATENCY_EXPONENT
    channel.LATENCY_EXPONENT = exponent
    try:
        return fn(*args, **kwargs)
    finally:
        channel.LATENCY_EXPONENT = saved


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs at batch 1 by FlopCounterMode, with autograd *enabled*: under no_grad in eval mode,
    nn.MultiheadAttention / TransformerEncoderLayer take a fused native fast path that
    FlopCounterMode does not see (slimmer.stats.count_macs reports 0 MACs for a
    TransformerEncoderLayer and 11.3 G instead of 17.6 G for vit_b_16). Counted on a meta copy
    first (no memory, and CPU's SDPA kernel is not counted either), for real when that fails."""
    from torch.utils.flop_counter import FlopCounterMode

    from slimmer.graph.macs import count_macs as meta_macs
    from slimmer.graph.macs import to_meta

    try:  # on a meta copy, like slimmer's planner (counts the attention matmuls too)
        return meta_macs(*to_meta(model, (x[:1],)))
    except Exception:  # noqa: BLE001 - a forward that fails on meta: count for real
        pass
    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), counter:
        model(x[:1])
    return int(counter.get_total_flops() // 2)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- pruners


@dataclass
class Pruned:
    """A pruned model, its masked original (None when not derivable), and what the pruner said."""

    model: nn.Module
    masked: nn.Module | None
    seconds: float
    info: dict = field(default_factory=dict)


def slimmer_prune(model: nn.Module, x: torch.Tensor, *, macs_target: float = 0.5, round_to: int = 1) -> Pruned:
    """slimmer's library flow (as in ``slimmer compress --method channel``): build_groups →
    plan_channels(l1, global) → shrink (which checks and rolls back), plus the masked original."""
    from slimmer.graph.groups import build_groups
    from slimmer.prune_channel import DEFAULT_MAX_RATIO
    from slimmer.structures.channel import plan_channels
    from slimmer.surgery import mask_model, shrink

    t0 = time.perf_counter()
    original = copy.deepcopy(model).eval()
    groups = build_groups(model, (x,))
    t_groups = time.perf_counter() - t0
    plan = plan_channels(
        groups,
        model,
        macs_target=macs_target,
        round_to=round_to,
        max_ratio=DEFAULT_MAX_RATIO,
        scope="global",
        criterion="l1",
        example_inputs=(x,),
    )
    t_plan = time.perf_counter() - t0 - t_groups
    pruned = copy.deepcopy(model).eval()
    surgery = shrink(pruned, plan, (x,))
    seconds = time.perf_counter() - t0
    masked = mask_model(copy.deepcopy(original), surgery.plan)
    blocked = sorted({g.blocked_by for g in groups.blocked if g.blocked_by})
    info = {
        "groups": len(groups.groups),
        "prunable_groups": len(groups.prunable),
        "blocked_groups": len(groups.blocked),
        "blocked_reasons": [r for r in blocked if not r.startswith(("model output", "model input"))][:6],
        "channels_pruned": surgery.plan.channels_pruned,
        "channels_total": surgery.plan.channels_total,
        "rolled_back": dict(list(surgery.rolled_back.items())[:6]),
        "n_rolled_back": len(surgery.rolled_back),
        "plan_notes": plan.notes[:6],
        "shrink_check_rel": surgery.max_abs_diff / surgery.output_scale if surgery.output_scale else None,
        "seconds_groups": round(t_groups, 2),
        "seconds_plan": round(t_plan, 2),
    }
    return Pruned(pruned, masked, seconds, info)


def _tag_twin(model: nn.Module) -> nn.Module:
    """A float64 copy whose every parameter/buffer element holds its own flat index."""
    twin = copy.deepcopy(model).double()
    with torch.no_grad():
        for _, t in [*twin.named_parameters(), *twin.named_buffers()]:
            if t.is_floating_point():
                t.copy_(torch.arange(t.numel(), dtype=torch.float64).reshape(t.shape))
    return twin


def _get_attr(root: nn.Module, dotted: str) -> Any:
    obj = root
    for part in dotted.split(".") if dotted else []:
        obj = getattr(obj, part)
    return obj


@torch.no_grad()
def _mask_from_twin(original: nn.Module, twin: nn.Module) -> nn.Module:
    """Zero every element of ``original`` whose tag did not survive in ``twin``."""
    masked = copy.deepcopy(original)
    twin_tensors = dict([*twin.named_parameters(), *twin.named_buffers()])
    for name, t in [*masked.named_parameters(), *masked.named_buffers()]:
        if not t.is_floating_point():
            continue
        survivor = twin_tensors.get(name)
        if survivor is None:
            raise RuntimeError(f"tensor {name} disappeared from the pruned model")
        kept = torch.zeros(t.numel(), dtype=torch.bool)
        kept[survivor.detach().reshape(-1).long()] = True
        t.mul_(kept.reshape(t.shape).to(t.dtype))
    return masked


def tp_prune(
    model: nn.Module,
    x: torch.Tensor,
    *,
    ratio: float = 0.5,
    round_to: int | None = None,
    p: int = 1,
    with_masked: bool = True,
) -> Pruned:
    """Torch-Pruning 1.6.1 out of the box: magnitude importance, ``pruning_ratio`` per layer,
    classifier ignored. With ``with_masked`` every handler call is replayed on a tag twin."""
    import torch_pruning as tp

    original = copy.deepcopy(model).eval()
    pruned = copy.deepcopy(model).eval()
    t0 = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(
        pruned,
        example_inputs=x,
        importance=tp.importance.MagnitudeImportance(p=p),
        pruning_ratio=ratio,
        ignored_layers=classifier_layers(pruned),
        round_to=round_to,
    )
    names = {id(m): n for n, m in pruned.named_modules()}
    twin = _tag_twin(pruned) if with_masked else None
    replay_failures: list[str] = []
    n_groups = 0
    for group in pruner.step(interactive=True):
        n_groups += 1
        if twin is not None:
            for dep, idxs in group:
                hybrid = idxs and isinstance(idxs[0], tp._helpers._HybridIndex)
                plain = tp._helpers.to_plain_idxs(idxs) if hybrid else idxs
                target = dep.target.module
                dep.handler.__self__.pruning_dim = dep.target.pruning_dim
                try:
                    if isinstance(target, nn.Parameter):
                        pname = pruner.DG._param_to_name[target]
                        new = dep.handler(_get_attr(twin, pname), plain)
                        owner, _, attr = pname.rpartition(".")
                        setattr(_get_attr(twin, owner), attr, new)
                    elif id(target) in names:  # TP's dummy ops (add, concat, ...) hold no tensors
                        dep.handler(_get_attr(twin, names[id(target)]), plain)
                except Exception as exc:  # noqa: BLE001 - the masked original is then unknown
                    replay_failures.append(f"{dep}: {type(exc).__name__}: {exc}"[:200])
        group.prune()
    seconds = time.perf_counter() - t0
    masked = None
    if twin is not None and not replay_failures:
        masked = _mask_from_twin(original, twin)
    info = {"groups_pruned": n_groups, "replay_failures": replay_failures[:3], "ratio": ratio, "round_to": round_to}
    return Pruned(pruned, masked, seconds, info)


# ---------------------------------------------------------------- export


def export(model: nn.Module, x: torch.Tensor, path: Path, *, dynamic_batch: bool) -> Path:
    """slimmer's exporter (torch.onnx.export, dynamo=True, external_data=False), committed to ``path``."""
    from slimmer.export.files import commit
    from slimmer.export.onnx import export_onnx

    result = export_onnx(model, x, Path(path), dynamic_batch=dynamic_batch)
    commit(result.temp_path, Path(path))
    return Path(path)


# ---------------------------------------------------------------- provenance and docs


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "onnxruntime", "onnx", "onnxscript", "torch-pruning"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    try:
        import subprocess

        out["slimmer_commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        pass
    return out


def cpu() -> str:
    """The CPU model and its widest x86 vector extension ("AMD EPYC, avx512f"): training runs of the same plan
    and seed on CPUs with different vector units take different float paths and diverge, so records say which
    kind of machine made them (docs/BENCHMARKS.md, "Accuracy on the model set: reading")."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    widest = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), "")
    return f"{name}, {widest}" if widest else name


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by a kill: ignore
    return rows


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")
        fh.flush()


def write_section(heading: str, body: str, path: Path = DOCS) -> None:
    """Replace (or append) the ``## heading`` section of docs/BENCHMARKS.md, leaving others alone."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# slimmer benchmarks\n\nTables written by the scripts in `bench/`.\n"
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")
