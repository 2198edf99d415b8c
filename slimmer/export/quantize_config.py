"""What the int8 step is asked and what it answers: :class:`QuantizeConfig` (its options and the gate
thresholds, validated on creation), :class:`QuantizeResult` (the report's ``quantization`` section),
:class:`QuantizationFailed` (exit 5) and :func:`gate_failures`, which thresholds a measured int8 file
misses. The step itself is :func:`slimmer.export.quantize.quantize`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from slimmer.errors import ConfigError, VerificationError
from slimmer.export import int8


@dataclass(frozen=True)
class QuantizeConfig:
    """Options of the int8 step. ``max_quantization_drop`` is in accuracy points (percent), the others
    are fractions; latency is measured with ``latency_pairs`` interleaved runs on ``latency_threads``."""

    method: str = "int8"
    calibration_method: str = "minmax"
    calibration_samples: int = 128
    per_channel: bool = True
    activation_type: str = "uint8"
    reduce_range: bool = True
    max_quantization_drop: float = 1.0
    min_agreement: float = 0.9
    min_cosine: float = 0.99
    quantize_anyway: bool = False
    eval_samples: int = 512
    batch_size: int = 32
    latency_pairs: int = 30
    latency_warmup: int = 5
    latency_threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method != "int8":
            raise ConfigError(f"--quantize {self.method!r} is not supported", hint="the supported method is int8")
        if self.calibration_method not in int8.CALIBRATION_METHODS:
            raise ConfigError(
                f"--calibration-method {self.calibration_method!r} is not one of {', '.join(int8.CALIBRATION_METHODS)}"
            )
        if self.activation_type not in int8.ACTIVATION_TYPES:
            raise ConfigError(f"activation type {self.activation_type!r} is not one of uint8, int8")
        for name, value in (
            ("--calibration-samples", self.calibration_samples),
            ("--eval-samples", self.eval_samples),
            ("batch size", self.batch_size),
            ("latency pairs", self.latency_pairs),
            ("latency threads", self.latency_threads),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.latency_warmup < 0:
            raise ConfigError(f"latency warm-up must be ≥ 0, got {self.latency_warmup!r}")
        if not 0 <= self.max_quantization_drop <= 100:
            raise ConfigError(
                f"--max-quantization-drop is in accuracy points, in [0, 100]; got {self.max_quantization_drop!r}"
            )
        if not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"--min-agreement is a fraction in [0, 1]; got {self.min_agreement!r}")
        if not -1 <= self.min_cosine <= 1:
            raise ConfigError(f"--min-cosine is in [-1, 1]; got {self.min_cosine!r}")


@dataclass(frozen=True)
class QuantizeResult:
    """What the int8 step measured: the report's ``quantization`` section plus where the artifact is.

    Accuracies and agreement are fractions in [0, 1] (None without labels / for non-classifier
    outputs); sizes in bytes; latencies are medians in milliseconds; ``speedup`` is the median of the
    paired float/int8 ratios (> 1: int8 is faster)."""

    method: str
    calibration: dict[str, Any]
    per_channel: bool
    activation_type: str
    reduce_range: bool
    size_bytes_float: int
    size_bytes_int8: int
    agreement: float | None
    cosine: float
    accuracy_float: float | None
    accuracy_int8: float | None
    latency_ms_float: float | None
    latency_ms_int8: float | None
    speedup: float | None
    faster: bool | None
    passed: bool
    kept: str  # "int8" or "float": which file is the artifact
    artifact: str | None
    int8_path: str | None
    float_path: str
    eval_samples: int
    depthwise_convs: int
    failures: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)
    sha256_int8: str | None = None  # of the int8 file at int8_path (what a later run checks before replacing it)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"], d["warnings"] = list(self.failures), list(self.warnings)
        return d


class QuantizationFailed(VerificationError):
    """The int8 file failed a gate (exit 5); ``result`` holds what was measured, nothing was written."""

    def __init__(self, message: str, *, result: QuantizeResult, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result


def gate_failures(config: QuantizeConfig, cosine, agree, acc_f, acc_q, finite) -> list[str]:
    """The gates the int8 file missed, one readable line each (empty: it passed).

    ``cosine``: output cosine with the float file; ``agree``: top-1 agreement, a fraction, None for
    outputs that are not class scores; ``acc_f``/``acc_q``: float and int8 accuracy, fractions, None
    without labels; ``finite``: whether every int8 output was finite."""
    if not finite:
        return ["the int8 outputs are not finite"]
    failures = []
    if agree is not None and agree < config.min_agreement:
        failures.append(f"top-1 agreement with the float file {agree:.2%} < --min-agreement {config.min_agreement:.2%}")
    if cosine < config.min_cosine:
        failures.append(f"cosine of the int8 and float outputs {cosine:.4f} < --min-cosine {config.min_cosine:g}")
    if acc_f is not None and acc_q is not None:
        drop = (acc_f - acc_q) * 100
        if drop > config.max_quantization_drop:
            failures.append(
                f"accuracy {acc_q:.2%} is {drop:.2f} points below the float {acc_f:.2%} "
                f"(--max-quantization-drop {config.max_quantization_drop:g})"
            )
    return failures
