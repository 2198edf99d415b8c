"""The run's report: one dataclass that becomes both the JSON file and the rich summary table."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from slimmer import __version__

SCHEMA_VERSION = 1


@dataclass
class Report:
    """Everything a run measured. Keys follow INTERFACE.md; extra keys are additions, never renames."""

    status: str = "failed"
    exit_code: int = 1
    input: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=lambda: {"before": None, "after": None})
    macs: dict[str, Any] = field(default_factory=lambda: {"before": None, "after": None})
    sparsity: dict[str, Any] = field(default_factory=lambda: {"requested": None, "achieved": None, "per_layer": {}})
    onnx: dict[str, Any] = field(
        default_factory=lambda: {"path": None, "sha256": None, "opset": None, "size_bytes": None}
    )
    verification: dict[str, Any] = field(
        default_factory=lambda: {
            "passed": False,
            "max_abs_diff": None,
            "max_rel_diff": None,
            "cosine": None,
            "top1_agreement": None,
            "atol": None,
            "rtol": None,
        }
    )
    accuracy: dict[str, Any] = field(
        default_factory=lambda: {"before": None, "after_prune": None, "after_finetune": None}
    )
    latency_ms: dict[str, Any] = field(default_factory=lambda: {"before": None, "after": None})
    warnings: list[str] = field(default_factory=list)
    pruning: dict[str, Any] = field(default_factory=dict)
    surgery: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None
    rank: int = 0
    error: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    run_plan: dict[str, Any] | None = None
    embedding: dict[str, Any] | None = None  # text --data: held-out cosine to the original (train/embedding.py)
    quantization: dict[str, Any] | None = None  # with --quantize / `slimmer quantize`: QuantizeResult.to_dict()

    def to_dict(self) -> dict[str, Any]:
        d = {"schema_version": SCHEMA_VERSION, "slimmer_version": __version__}
        d.update(asdict(self))
        return _json_safe(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n"

    def __rich__(self):
        from rich.table import Table

        table = Table(title=f"slimmer: {self.status.upper()}", show_header=True, header_style="bold")
        table.add_column("")
        table.add_column("before", justify="right")
        table.add_column("after", justify="right")
        table.add_row("parameters", _n(self.params.get("before")), _n(self.params.get("after")))
        if self.params.get("nonzero_after") is not None:
            table.add_row(
                "non-zero parameters", _n(self.params.get("nonzero_before")), _n(self.params.get("nonzero_after"))
            )
        table.add_row("MACs", _n(self.macs.get("before")), _n(self.macs.get("after")))
        req, got = self.sparsity.get("requested"), self.sparsity.get("achieved")
        if req is not None or got is not None:
            table.add_row("sparsity (requested → achieved)", _pct(req), _pct(got))
        acc = self.accuracy
        if acc.get("before") is not None:
            table.add_row(
                "accuracy",
                _pct(acc.get("before")),
                _pct(
                    _last(
                        acc.get("after_finetune"),
                        acc.get("after_recalibrate"),
                        acc.get("after_reconstruct"),
                        acc.get("after_prune"),
                    )
                ),
            )
        lat = self.latency_ms
        if lat.get("before") is not None:
            speedup = f" ({lat['speedup']:.2f}x faster)" if lat.get("speedup") else ""
            table.add_row("onnxruntime latency (ms, paired)", f"{lat['before']:.3f}", f"{lat['after']:.3f}{speedup}")
        if lat.get("size_bytes_before") is not None:
            table.add_row("ONNX file size (B)", _n(lat["size_bytes_before"]), _n(lat.get("size_bytes_after")))
        v = self.verification
        if v.get("max_abs_diff") is not None:
            verdict = "passed" if v.get("passed") else "FAILED"
            table.add_row("ONNX vs torch", "", f"{verdict} (max abs {v['max_abs_diff']:.2e})")
        if v.get("cosine") is not None:
            top1 = v.get("top1_agreement")
            table.add_row(
                "pruned vs original",
                "",
                f"cosine {v['cosine']:.4f}" + (f", top-1 {top1:.1%}" if top1 is not None else ""),
            )
        if self.onnx.get("path"):
            table.add_row(
                "ONNX file",
                "",
                f"{self.onnx['path']} ({_n(self.onnx.get('size_bytes'))} B, opset {self.onnx.get('opset')})",
            )
        if self.quantization:
            from slimmer.export.quantize import summary_rows

            for row in summary_rows(self.quantization):
                table.add_row(*row)
        return table


def _last(*values):
    return next((v for v in values if v is not None), None)


def _n(v) -> str:
    if v is None:
        return "-"
    return f"{v:,}" if isinstance(v, int) else f"{v:,.0f}"


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2%}"


def _json_safe(obj: Any) -> Any:
    """Non-finite floats become strings ("inf", "nan") so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
