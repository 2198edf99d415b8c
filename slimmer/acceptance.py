"""Acceptance policy: what makes a verified export fail the run (exit 5) besides differing outputs.

The orchestrator (:mod:`slimmer.api`) asks :func:`failures` once, after verification; every rule
that turns a finished run into a failed one lives here: the MACs target, the measured speedup, the
sparsity asked for, the accuracy drop allowed (``--max-accuracy-drop``), and the N:M pattern read
back from the exported initializers.
"""

from __future__ import annotations

from pathlib import Path

from slimmer.export.verify import Verification
from slimmer.prune import PruneResult
from slimmer.stage_config import PruneConfig, VerifyConfig


def failures(v: Verification, pruned: PruneResult, config: PruneConfig, macs: dict) -> list[str]:
    """Why the run fails (empty when it passes): verification, MACs target, speedup, sparsity."""
    out = []
    if config.macs_target is not None and macs.get("before"):
        kept = macs["after"] / macs["before"]
        if kept > config.macs_target + config.sparsity_tolerance:
            out.append(
                f"MACs target not reached: requested {config.macs_target:.4f} of the original, kept {kept:.4f} "
                f"(tolerance {config.sparsity_tolerance:g}; see warnings for what blocked further pruning)"
            )
    wanted = pruned.details.get("speedup")
    if wanted and not wanted["reached"]:
        out.append(
            f"speedup not reached: requested {wanted['requested']:g}x, best measured {wanted['measured']:.2f}x "
            "(onnxruntime CPU, 1 thread, batch 1)"
        )
    if not v.passed:
        out.append("verification failed: " + v.failure_summary())
    if pruned.sparsity_achieved is not None and pruned.sparsity_requested is not None:
        short = pruned.sparsity_requested - pruned.sparsity_achieved
        if short > config.sparsity_tolerance:
            out.append(
                f"sparsity not reached: requested {pruned.sparsity_requested:.4f}, achieved "
                f"{pruned.sparsity_achieved:.4f} (tolerance {config.sparsity_tolerance:g})"
            )
    return out


def final_accuracy(acc: dict) -> float | None:
    """The accuracy of the model that is exported: after fine-tuning, else after BatchNorm
    re-estimation, else after reconstruction, else right after pruning (fractions in [0, 1]; None
    without labelled data)."""
    for key in ("after_finetune", "after_recalibrate", "after_reconstruct", "after_prune"):
        if acc.get(key) is not None:
            return acc[key]
    return None


def accuracy_failures(acc: dict, config: VerifyConfig) -> tuple[list[str], dict]:
    """``--max-accuracy-drop``: the failure (if the final model lost more points than allowed) and the
    figures for the report's ``accuracy`` section: ``drop_points`` = 100 × (before − final), and
    ``max_drop_points`` when the guard is set. ``acc`` is the report's ``accuracy`` dict."""
    before, after = acc.get("before"), final_accuracy(acc)
    if before is None or after is None:
        return [], {}
    drop = 100.0 * (before - after)
    figures = {"drop_points": round(drop, 4)}
    if config.max_accuracy_drop is None:
        return [], figures
    figures["max_drop_points"] = config.max_accuracy_drop
    if drop <= config.max_accuracy_drop:
        return [], figures
    n = (acc.get("evaluation") or {}).get("samples")
    on = f" on {n:,} evaluation samples" if n else ""
    return [
        f"accuracy dropped {drop:.2f} points ({before:.2%} → {after:.2%}{on}), more than --max-accuracy-drop "
        f"{config.max_accuracy_drop:g} by {drop - config.max_accuracy_drop:.2f}"
    ], figures


def nm_failures(path: Path, pruned: PruneResult) -> tuple[list[str], dict]:
    """Read the exported initializers back and check the N:M pattern in each of them; returns the
    failures and the figures for the report's ``pruning.nm``."""
    from slimmer.structures.nm import check_onnx_nm, compressed_size, locate_pruned_weights

    located = locate_pruned_weights(path, pruned.nm.masks.masks)
    figures: dict = {"weights_located": located is not None}
    if located is not None:  # every pruned weight found: those are the ones held to the pattern
        checked = check_onnx_nm(path, pruned.nm.n, pruned.nm.m, names=sorted(set(located.values())))
        bad = sorted(name for name, ok in checked.items() if not ok)
        failures = [f"N:M pattern broken in the exported initializers: {', '.join(bad[:5])}"] if bad else []
    else:  # one was transformed on export (renamed, reshaped): count the initializers that hold the pattern;
        # the layers left dense may be renamed too, so they cannot be told apart by name
        checked = check_onnx_nm(path, pruned.nm.n, pruned.nm.m)
        bad = sorted(name for name, ok in checked.items() if not ok)
        wanted = len(pruned.nm.masks.masks)
        failures = []
        if len(checked) - len(bad) < wanted:
            failures = [
                f"N:M pattern found in {len(checked) - len(bad)} exported weight initializers, fewer than the "
                f"{wanted} weights pruned (without it: {', '.join(bad[:5])})"
            ]
    figures.update(
        onnx_initializers_checked=len(checked),
        onnx_initializers_with_pattern=len(checked) - len(bad),
        compressed_size_bytes=compressed_size(path),
    )
    return failures, figures
