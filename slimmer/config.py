"""Frozen option dataclasses. Validation raises :class:`ConfigError` naming the bad value (never assert)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from slimmer.errors import ConfigError
from slimmer.paths import check_output_names
from slimmer.registry import did_you_mean

SCOPES = ("global", "layer")
REGULARIZER_METHODS = {
    "slimming": ("channel",),
    "greg": ("unstructured", "channel"),
    "greg2": ("unstructured",),
    "halo": ("unstructured",),
}
"""Which pruning each ``--regularizer`` prepares (see :mod:`slimmer.regularize`)."""


_PATH_FIELDS = ("model", "example_inputs", "output", "report", "save_pretrained")


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


def _check_fraction(name: str, value: float, *, low_open: bool, high_open: bool) -> None:
    bad = not isinstance(value, (int, float)) or not math.isfinite(value)
    if not bad:
        bad = (value <= 0 if low_open else value < 0) or (value >= 1 if high_open else value > 1)
    if bad:
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ConfigError(f"{name} must be a number in {interval}, got {value!r}")


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
    criterion: str = "magnitude"
    scope: str = "global"
    schedule: str = "oneshot"
    regularizer: str | None = None
    reg_steps: int | None = None
    data: str | None = None
    finetune_steps: int = 0
    batch_size: int = 128
    optimizer: str = "sgd"
    kd: bool = True
    kd_weight: float = 0.5  # distillation's share of the loss when labels exist; the rest is cross-entropy
    kd_layers: float = 0.0  # weight of layer-wise distillation (train/feature_kd.py); 0 = logits only
    regrow: bool = False  # dense straight-through fine-tuning of a one-shot unstructured mask (recover.regrows)
    reconstruct: bool | None = None  # None: only when no fine-tuning follows (measured: see recover.reconstructs)
    amp: bool = True
    augment: bool = False  # pad-crop-flip while fine-tuning; off: brief fine-tuning recovers more without (recover.py)
    progress_every_s: float = 10.0
    lr: float = 0.01
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    round_to: int | str | None = None  # None: prune.DEFAULT_ROUND_TO; "relative": slimmer/structures/rounding.py
    prune_parts: str | None = None  # channel: heads, ffn or heads,ffn (slimmer/graph/attention.py)
    latency_aware: bool = False
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
        check_output_names(self.output, self.report)  # issue 19: before output_path/report_path are derived
        if self.sparsity is not None:
            _check_fraction("--sparsity", self.sparsity, low_open=False, high_open=True)
        _check_fraction("--sparsity-tolerance", self.sparsity_tolerance, low_open=False, high_open=True)
        if self.macs_target is not None:
            _check_fraction("--macs-target", self.macs_target, low_open=True, high_open=False)
        if self.speedup is not None:
            if not (isinstance(self.speedup, (int, float)) and math.isfinite(self.speedup) and self.speedup > 1):
                raise ConfigError(f"--speedup must be a number > 1, got {self.speedup!r}")
            if "channel" not in self.methods:
                raise ConfigError("--speedup applies to --method channel", hint="add --method channel")
            if self.macs_target is not None or self.sparsity is not None:
                raise ConfigError("--speedup chooses the MACs target itself: drop --macs-target and --sparsity")
        if self.latency_aware and "channel" not in self.methods:
            raise ConfigError("--latency-aware applies to --method channel", hint="add --method channel")
        if self.latency_aware and self.scope != "global":
            raise ConfigError("--latency-aware ranks channels across layers: use --scope global")
        if self.macs_target is not None and "channel" not in self.methods:
            raise ConfigError("--macs-target applies to --method channel", hint="add --method channel")
        from slimmer import choices

        methods = choices.methods()
        if not self.methods:
            raise ConfigError("--method: give at least one of " + ", ".join(methods))
        for m in self.methods:
            if m not in methods:
                raise ConfigError(f"--method {m!r} is not one of {', '.join(methods)}.{did_you_mean(m, methods)}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"--method {','.join(self.methods)}: a method is named twice")
        if self.exporter not in choices.exporters():
            raise ConfigError(f"--exporter {self.exporter!r} is not one of {', '.join(choices.exporters())}")
        if self.criterion not in choices.criteria():
            known = choices.criteria()
            raise ConfigError(
                f"--criterion {self.criterion!r} is not one of {', '.join(known)}.{did_you_mean(self.criterion, known)}"
            )
        if "nm" in self.methods:
            from slimmer.structures.nm import parse_nm

            n, m = parse_nm(self.nm)
            if self.sparsity is not None and not {"unstructured", "channel"} & set(self.methods):
                raise ConfigError(
                    f"--sparsity {self.sparsity:g} does not apply to --method nm: the pattern {n}:{m} sets the "
                    f"sparsity of every pruned layer to {1 - n / m:g}",
                    hint="drop --sparsity, or choose the pattern with --nm (e.g. --nm 1:4 for 75%)",
                )
        if self.scope not in SCOPES:
            raise ConfigError(f"--scope {self.scope!r} is not one of {', '.join(SCOPES)}")
        if self.schedule not in choices.schedules():
            raise ConfigError(f"--schedule {self.schedule!r} is not one of {', '.join(choices.schedules())}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a finite number > 0, got {self.lr!r}")  # as FinetuneConfig
        for name, value in (
            ("--atol", self.atol),
            ("--rtol", self.rtol),
            ("--kd-layers", self.kd_layers),
        ):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number ≥ 0, got {value!r}")
        if self.finetune_steps < 0:
            raise ConfigError(f"--finetune-steps must be ≥ 0, got {self.finetune_steps}")
        if self.max_accuracy_drop is not None:
            if not math.isfinite(self.max_accuracy_drop) or self.max_accuracy_drop < 0:
                raise ConfigError(f"--max-accuracy-drop must be a finite number ≥ 0, got {self.max_accuracy_drop!r}")
            if self.data is None:
                raise ConfigError(
                    "--max-accuracy-drop needs labelled data to measure accuracy",
                    hint="pass --data with labels (fashion-mnist, an IDX folder, an image folder or a .npz with y)",
                )
        _check_fraction("--kd-weight", self.kd_weight, low_open=True, high_open=False)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if self.round_to is not None:
            from slimmer.structures.rounding import check_round_to

            check_round_to(self.round_to)  # an int ≥ 1 or "relative"; ConfigError otherwise
        if self.opset is not None and not 7 <= self.opset <= 30:
            raise ConfigError(f"--opset {self.opset} is not a valid ONNX opset")
        if self.expect_sha256 is not None:
            h = self.expect_sha256.strip().lower()
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise ConfigError(f"--expect-sha256 {self.expect_sha256!r}: expected 64 hexadecimal digits")
        if self.seed < 0:
            raise ConfigError(f"--seed must be ≥ 0, got {self.seed}")
        if self.fold_latency_gate not in ("measure", "off"):
            raise ConfigError(f"--fold-latency-gate {self.fold_latency_gate!r} is not one of measure, off")
        _check_fraction("--fold-alpha-start", self.fold_alpha_start, low_open=True, high_open=False)
        if not isinstance(self.latency_pairs, int) or self.latency_pairs < 1:
            raise ConfigError(f"--latency-pairs must be an integer ≥ 1, got {self.latency_pairs!r}")
        if self.quantize is not None:
            self.quantize_config  # noqa: B018 - validates the int8 options once, before any work
        if self.recon_samples < 1:
            raise ConfigError(f"--recon-samples must be ≥ 1, got {self.recon_samples}")
        self._check_inputs()
        if self.eval_samples is not None and self.eval_samples < 1:
            raise ConfigError(f"--eval-samples must be ≥ 1, got {self.eval_samples}")
        if not (isinstance(self.val_fraction, (int, float)) and 0 < self.val_fraction <= 1):
            raise ConfigError(f"--val-fraction must be in (0, 1], got {self.val_fraction!r}")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"--device {self.device!r}: expected auto, cpu, cuda or cuda:N")
        for name, values in (("--mean", self.mean), ("--std", self.std)):
            if values is not None and not all(math.isfinite(v) for v in values):
                raise ConfigError(f"{name} must hold finite numbers")
        if self.std is not None and any(v == 0 for v in self.std):
            raise ConfigError("--std must not contain 0")
        if self.optimizer not in choices.optimizers():
            raise ConfigError(f"--optimizer {self.optimizer!r} is not one of {', '.join(choices.optimizers())}")
        if self.schedule != "oneshot":
            if self.finetune_steps == 0:
                raise ConfigError(f"--schedule {self.schedule} spreads pruning over fine-tuning: pass --finetune-steps")
            if tuple(self.methods) not in (("unstructured",), ("channel",)):
                raise ConfigError(
                    f"--schedule {self.schedule} works with --method unstructured or --method channel alone",
                    hint="use --schedule oneshot to combine methods (e.g. channel,nm) or with nm and fold",
                )
            if self.speedup is not None:
                raise ConfigError(
                    f"--speedup measures one plan; --schedule {self.schedule} changes the plan during fine-tuning",
                    hint="use --macs-target with a schedule, or --schedule oneshot with --speedup",
                )
        if self.finetune_steps > 0 and self.data is None:
            raise ConfigError("--finetune-steps needs --data to train on")
        if self.regrow:
            self._check_regrow()
        if self.kd_layers > 0:
            self._check_kd_layers()
        if self.regularizer is not None:
            self._check_regularizer()
        elif self.reg_steps is not None:
            raise ConfigError("--reg-steps applies to --regularizer", hint="add --regularizer slimming, greg or halo")

    def _check_inputs(self) -> None:
        from slimmer.inputs import parse_dynamic_axis, parse_input_spec

        specs = [parse_input_spec(t) for t in self.inputs]
        for t in self.dynamic_axes:
            parse_dynamic_axis(t)
        if self.input_shape is not None and (specs or self.example_inputs is not None):
            raise ConfigError(
                "--input-shape gives one float input; --input and --example-inputs name the inputs themselves",
                hint="drop --input-shape (or give the float input as --input NAME:float32[SHAPE])",
            )
        if specs and self.example_inputs is not None:
            raise ConfigError("give the inputs either with --input or with --example-inputs, not both")
        if self.data is not None and len(specs) > 1:
            raise ConfigError(
                f"--data feeds one tensor per sample; this run names {len(specs)} inputs ("
                + ", ".join(s.name for s in specs)
                + ")",
                hint="fine-tuning and accuracy on --data need a model with one input",
            )

    def _check_kd_layers(self) -> None:
        if self.finetune_steps == 0:
            raise ConfigError("--kd-layers distils while fine-tuning: pass --finetune-steps and --data")
        if not self.kd:
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
        if self.reconstruct:
            raise ConfigError(
                "--regrow fine-tunes from the weights before masking, which would undo --reconstruct",
                hint="choose one of --regrow and --reconstruct",
            )

    def _check_regularizer(self) -> None:
        name = self.regularizer
        if name not in REGULARIZER_METHODS:
            known = list(REGULARIZER_METHODS)
            raise ConfigError(f"--regularizer {name!r} is not one of {', '.join(known)}.{did_you_mean(name, known)}")
        if self.reg_steps is not None and self.reg_steps < 1:
            raise ConfigError(f"--reg-steps must be ≥ 1, got {self.reg_steps}")
        if self.regularize_steps < 1:
            raise ConfigError(
                f"--regularizer {name} trains with a penalty before pruning: give it steps",
                hint="pass --reg-steps N (it defaults to --finetune-steps)",
            )
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
        if name == "slimming" and self.criterion not in ("magnitude", "bn-scale"):
            raise ConfigError(
                f"--regularizer slimming ranks channels by their BatchNorm scale, not --criterion {self.criterion}",
                hint="drop --criterion (or pass --criterion bn-scale)",
            )

    @property
    def quantize_config(self):
        """The int8 step's :class:`~slimmer.export.quantize.QuantizeConfig` (validated on creation)."""
        from slimmer.export.quantize import QuantizeConfig

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
        from slimmer.export.quantize import default_output

        return default_output(self.output_path)

    @property
    def target_sparsity(self) -> float:
        """The sparsity asked for, or the default 0.5 when none was given."""
        return 0.5 if self.sparsity is None else self.sparsity

    @property
    def regularize_steps(self) -> int:
        """Steps of the regularized phase: ``--reg-steps``, else as many as ``--finetune-steps``."""
        return self.finetune_steps if self.reg_steps is None else self.reg_steps

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

        ``trust_remote_code`` is never taken from the file: only an override (the command line) sets it.
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
            if key == "trust_remote_code":
                continue
            if key in _PATH_FIELDS and value is not None:
                value = Path(value)
            elif isinstance(value, list):
                value = tuple(value)
            values[key] = value
        values.update(overrides)
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"the recorded config does not fit this version of slimmer: {exc}") from None
