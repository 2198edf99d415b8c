"""Frozen option dataclasses. Validation raises :class:`ConfigError` naming the bad value (never assert)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from slimmer.errors import ConfigError
from slimmer.stage_config import PRUNING_ONLY, REGULARIZER_METHODS, SCOPES, Stages

__all__ = ["REGULARIZER_METHODS", "SCOPES", "CompressConfig", "parse_floats", "parse_shape"]

_PATH_FIELDS = ("model", "example_inputs", "output", "report", "save_pretrained", "latency_costs")


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    """``"0.5"`` or ``"0.485,0.456,0.406"`` → tuple of finite floats."""
    if text is None:
        return None
    try:
        values = tuple(float(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected numbers separated by commas") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{option} {text!r}: expected finite numbers separated by commas")
    return values


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"1,3,224,224"`` → (1, 3, 224, 224); every dimension a positive integer."""
    if text is None or str(text).strip() == "":
        return None
    try:
        dims = tuple(int(p) for p in str(text).replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(f"--input-shape {text!r}: expected integers separated by commas, e.g. 1,3,224,224") from None
    if len(dims) < 2 or any(d <= 0 for d in dims):
        raise ConfigError(f"--input-shape {text!r}: need at least 2 positive dimensions (batch first)")
    from slimmer.sources import check_input_size

    check_input_size(dims)  # issue 19: a shape too large to allocate is a usage error, not a crash
    return dims


@dataclass(frozen=True)
class CompressConfig:
    """Every option of ``slimmer compress``; built by the CLI (or directly by library users)."""

    model: Path | None = None  # None: an in-memory model given to slimmer.api.compress
    arch: str | None = None
    input_shape: tuple[int, ...] | None = None
    inputs: tuple[str, ...] = ()  # --input NAME:DTYPE[SHAPE][:RANGE], repeatable (slimmer.inputs)
    example_inputs: Path | None = None  # --example-inputs FILE (.npz / .safetensors of named arrays)
    dynamic_axes: tuple[str, ...] = ()  # --dynamic-axis NAME:DIM, repeatable
    output_name: str | None = None  # the output leaf read as logits (default: the first floating leaf)
    methods: tuple[str, ...] = ("unstructured",)
    sparsity: float | None = None
    nm: str = "2:4"
    sparsity_tolerance: float = 0.01
    macs_target: float | None = None
    criterion: str | None = None  # None: prune_config.default_criterion, resolved in stages.prune.criterion
    scope: str = "global"
    schedule: str = "oneshot"
    regularizer: str | None = None
    reg_steps: int | None = None
    search_steps: int = 200  # --method search: bi-level search steps (slimmer/search_run.py)
    data: str | None = None
    finetune_steps: int = 0
    batch_size: int = 128
    optimizer: str = "sgd"
    # None: distil, except after unstructured/channel pruning with labels when no kd_weight or kd_layers is given
    # (RecoverConfig.distils)
    kd: bool | None = None
    # distillation's share of the loss with labels; the rest is cross-entropy. A weight given turns distillation
    # on, as --kd-weight does: __post_init__ sets kd True (and dataclasses.replace keeps it True when the weight is
    # taken away). None: 0.5, or 0.9 with search (RecoverConfig.distillation_weight)
    kd_weight: float | None = None
    kd_layers: float = 0.0  # weight of layer-wise distillation (train/feature_kd.py); 0 = logits only
    regrow: bool = False  # dense straight-through fine-tuning of a one-shot unstructured mask (recover.regrows)
    nm_fixed_mask: bool = False  # N:M: hold the one-shot pattern fixed while fine-tuning instead of SR-STE
    reconstruct: bool | None = None  # None: only when no fine-tuning follows (measured: see recover.reconstructs)
    amp: bool = True
    augment: bool = False  # pad-crop-flip while fine-tuning; off: brief fine-tuning recovers more without (recover.py)
    progress_every_s: float = 10.0
    lr: float | None = None  # None: RecoverConfig.finetune_lr / phase_lr
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    round_to: int | str | None = None  # None: prune_channel.DEFAULT_ROUND_TO; "relative": structures/rounding.py
    prune_parts: str | None = None  # channel: heads, ffn or heads,ffn (slimmer/graph/attention.py)
    latency_aware: bool = False
    latency_costs: Path | None = None  # --latency-costs FILE: constants from `slimmer bench --calibrate`
    speedup: float | None = None
    expect_sha256: str | None = None
    keep_failed: bool = False
    device: str = "auto"
    output: Path | None = None
    report: Path | None = None
    opset: int | None = None
    dynamic_batch: bool = True
    exporter: str = "dynamo"
    atol: float = 1e-4
    rtol: float = 1e-3
    seed: int = 0
    force: bool = False
    trust_remote_code: bool = field(default=False, repr=False)
    task: str | None = None  # Hugging Face folders: feature-extraction or sequence-classification (slimmer/hf.py)
    save_pretrained: Path | None = None  # Hugging Face folders out (slimmer/hf_save.py)
    eval_samples: int | None = None  # None: a whole official test split, else 2000 held-out samples
    max_accuracy_drop: float | None = None  # accuracy points the final model may lose (exit 5 beyond; acceptance.py)
    val_fraction: float = 0.1
    max_length: int | None = None  # text --data: tokens per text (None: min(128, the model's positions))
    recon_samples: int = 512  # training inputs of least-squares reconstruction (train/reconstruct.py)
    quantize: str | None = None  # "int8": static QDQ of the verified float file (slimmer.export.quantize)
    calibration_method: str = "minmax"
    calibration_samples: int = 128
    max_quantization_drop: float = 1.0  # accuracy points, int8 against float
    min_agreement: float = 0.9
    min_cosine: float = 0.99
    quantize_anyway: bool = False
    measure_latency: bool = False  # paired onnxruntime latency of the original's export against the pruned file
    latency_pairs: int = 30
    fold_latency_gate: str = "measure"  # layer folding keeps only merges onnxruntime measures not slower ("off": all)
    fold_alpha_start: float = 0.05  # layer folding: the linearized activations' starting α (folding/phase.py)

    def __post_init__(self) -> None:
        """Build the stage configs (each validates its own options), then check the rules that span stages."""
        if isinstance(self.methods, str):  # methods="channel,nm": the names, as --method takes them
            object.__setattr__(self, "methods", tuple(m.strip() for m in self.methods.split(",") if m.strip()))
        if self.kd_weight is not None:
            if self.kd is False:
                raise ConfigError(
                    "--kd-weight sets distillation's share of the loss, and --no-kd turns distillation off",
                    hint="drop one of them",
                )
            object.__setattr__(self, "kd", True)  # a weight given is a wish to distil, channel pruning included
        object.__setattr__(self, "_stages", Stages.of(self))
        if self.quantize is not None:
            self.quantize_config  # noqa: B018 - validates the int8 options once, before any work
        if self.schedule != "oneshot" and self.finetune_steps == 0:
            raise ConfigError(f"--schedule {self.schedule} spreads pruning over fine-tuning: pass --finetune-steps")
        if self.finetune_steps > 0 and self.data is None:
            raise ConfigError("--finetune-steps needs --data to train on")
        if self.max_accuracy_drop is not None and self.data is None:
            raise ConfigError(
                "--max-accuracy-drop needs labelled data to measure accuracy",
                hint="pass --data with labels (fashion-mnist, an IDX folder, an image folder or a .npz with y)",
            )
        if self.nm_fixed_mask and "nm" not in self.methods:
            raise ConfigError("--nm-fixed-mask holds an N:M pattern: it applies to --method nm", hint="add --method nm")
        if "search" in self.methods and self.data is None:
            raise ConfigError(
                "--method search trains the weights and the architecture on --data: pass labelled data",
                hint="e.g. --data fashion-mnist, an IDX folder or an .npz with x and y",
            )
        if self.regrow:
            self._check_regrow()
        if self.kd_layers > 0:
            self._check_kd_layers()
        if self.regularizer is not None:
            self._check_regularizer()

    @property
    def stages(self) -> Stages:
        """The per-stage configs (:mod:`slimmer.stage_config`), validated when this config was made."""
        return self._stages  # type: ignore[attr-defined]

    def _check_kd_layers(self) -> None:
        if self.finetune_steps == 0:
            raise ConfigError("--kd-layers distils while fine-tuning: pass --finetune-steps and --data")
        if self.kd is False:
            raise ConfigError("--kd-layers distils from the original model: drop --no-kd, or drop --kd-layers")
        if "fold" in self.methods:
            raise ConfigError(
                "--kd-layers matches layers by name, and layer folding merges and renames them",
                hint="drop --kd-layers with --method fold",
            )

    def _check_regrow(self) -> None:
        if tuple(self.methods) != ("unstructured",):
            raise ConfigError(
                f"--regrow re-chooses unstructured masks while fine-tuning, not --method {','.join(self.methods)}",
                hint="use --method unstructured, or drop --regrow",
            )
        if self.finetune_steps == 0:
            raise ConfigError("--regrow re-chooses the mask while fine-tuning: pass --finetune-steps and --data")
        if self.schedule != "oneshot":
            raise ConfigError(
                f"--regrow moves a one-shot mask; --schedule {self.schedule} already re-prunes on its own",
                hint="drop --regrow, or use --schedule oneshot",
            )

    def _check_regularizer(self) -> None:
        name = self.regularizer
        if self.data is None:
            raise ConfigError(f"--regularizer {name} trains before pruning: pass --data to train on")
        allowed = REGULARIZER_METHODS[name]
        if not set(allowed) & set(self.methods):
            raise ConfigError(
                f"--regularizer {name} prepares {' or '.join(allowed)} pruning, not --method {','.join(self.methods)}",
                hint=f"add --method {allowed[0]}",
            )
        if {"unstructured", "channel"} <= set(self.methods):
            raise ConfigError(
                f"--regularizer {name} prepares one kind of pruning: choose --method unstructured or channel"
            )
        if self.schedule != "oneshot":
            raise ConfigError(f"--regularizer {name} prunes once after its phase: use --schedule oneshot")
        if name == "slimming" and self.criterion not in (None, "magnitude", "bn-scale"):
            raise ConfigError(
                f"--regularizer slimming ranks channels by their BatchNorm scale, not --criterion {self.criterion}",
                hint="drop --criterion (or pass --criterion bn-scale)",
            )

    @property
    def quantize_config(self):
        """The int8 step's :class:`~slimmer.export.quantize_config.QuantizeConfig` (validated on creation)."""
        from slimmer.export.quantize_config import QuantizeConfig

        return QuantizeConfig(
            method=self.quantize or "int8",
            calibration_method=self.calibration_method,
            calibration_samples=self.calibration_samples,
            max_quantization_drop=self.max_quantization_drop,
            min_agreement=self.min_agreement,
            min_cosine=self.min_cosine,
            quantize_anyway=self.quantize_anyway,
            seed=self.seed,
        )

    @property
    def int8_path(self) -> Path | None:
        """Where ``--quantize int8`` writes: ``<output stem>.int8.onnx`` beside the float file."""
        if self.quantize is None:
            return None
        from slimmer.paths import int8_output

        return int8_output(self.output_path)

    @property
    def target_sparsity(self) -> float:
        """The sparsity asked for, or the default 0.5 when none was given."""
        return self.stages.prune.target_sparsity

    @property
    def regularize_steps(self) -> int:
        """Steps of the regularized phase: ``--reg-steps``, else as many as ``--finetune-steps``."""
        return self.stages.regularize.steps

    @property
    def output_path(self) -> Path:
        """``-o``, else ``<model stem>.slim.onnx`` beside the checkpoint (``model.slim.onnx`` in the
        working directory for an in-memory model)."""
        if self.output is not None:
            return Path(self.output)
        if self.model is None:
            return Path("model.slim.onnx")
        return Path(self.model).with_name(Path(self.model).stem + ".slim.onnx")

    @property
    def report_path(self) -> Path:
        if self.report is not None:
            return Path(self.report)
        out = self.output_path
        return out.with_name(out.name + ".report.json")

    def to_dict(self) -> dict[str, Any]:
        """The resolved options for the report (paths as strings, the trust flag included)."""
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, Path):
                d[key] = str(value)
            elif isinstance(value, tuple):
                d[key] = list(value)
        d["output"] = str(self.output_path)
        d["report"] = str(self.report_path)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> CompressConfig:
        """The config a report's ``config`` section records (``--replay``), with ``overrides`` applied.

        ``trust_remote_code`` and ``force`` are never taken from the file: only an override (the command
        line) sets them (a replayed run never replaces files, nor runs code, because the recorded one did).
        Raises :class:`ConfigError` for a key this version does not know or a value of the wrong kind.
        """
        if not isinstance(d, dict):
            raise ConfigError("the report's config is not an object")
        names = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(
                "the recorded config has options this version of slimmer does not know: " + ", ".join(unknown)
            )
        values: dict[str, Any] = {}
        for key, value in d.items():
            if key in ("trust_remote_code", "force"):
                continue
            if key in _PATH_FIELDS and value is not None:
                value = Path(value)
            elif isinstance(value, list):
                value = tuple(value)
            values[key] = value
        _reconcile_kd(values, overrides)
        values.update(overrides)
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"the recorded config does not fit this version of slimmer: {exc}") from None


def _reconcile_kd(values: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Make a recorded ``kd``/``kd_weight`` pair and the options given beside ``--replay`` agree, in ``values``
    (the recorded config, before ``overrides`` are applied).

    - ``--no-kd`` given turns off the recorded distillation, its weight with it; a ``--kd-weight`` given
      distils over a recorded ``--no-kd``.
    - Reports written before a weight turned distillation on by itself (this version never records a weight
      beside ``kd`` null or false: ``__post_init__``) recorded the default weight (0.5, 0.9 with search)
      whether or not it was asked for, and a weight the API was given even where it did not apply. A weight
      beside ``kd`` false, or beside ``kd`` null where the run trained on labels alone (unstructured or channel
      pruning without ``--kd-layers``), never took effect and is read as not given; so is the default one.
      Beside ``kd`` null on a run that distilled by default, the weight is kept: it ran.
    """
    if overrides.get("kd") is False and "kd_weight" not in overrides:
        values["kd_weight"] = None
    if overrides.get("kd_weight") is not None and "kd" not in overrides and values.get("kd") is False:
        values["kd"] = None
    if "kd_weight" in overrides or values.get("kd") is True or values.get("kd_weight") is None:
        return
    methods = set(values.get("methods") or ())
    labels_alone = methods <= PRUNING_ONLY and not values.get("kd_layers")
    default = 0.9 if "search" in methods else 0.5
    if values.get("kd") is False or labels_alone or values["kd_weight"] == default:
        values["kd_weight"] = None
