"""Per-stage configs: each stage of ``compress`` reads a frozen config of its own options only, which
validates itself once, on creation (the torchao pattern).

:class:`~slimmer.config.CompressConfig` stays the flat record of the command line (what the report's
``config`` holds and ``--replay`` reads back); it builds the stage configs from its fields by name
(:meth:`StageConfig.of`) when it is created, so they validate before any work, and keeps only the
rules that span two stages. A field may belong to more than one stage (``seed``, ``device``,
``output_name``); every field of ``CompressConfig`` belongs to at least one, with the same default
(``tests/test_stage_config.py`` checks both, so the two cannot drift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from slimmer.errors import ConfigError
from slimmer.registry import did_you_mean

SCOPES = ("global", "layer")
REGULARIZER_METHODS = {
    "slimming": ("channel",),
    "greg": ("unstructured", "channel"),
    "greg2": ("unstructured",),
    "halo": ("unstructured",),
}
"""Which pruning each ``--regularizer`` prepares (see :mod:`slimmer.regularize`)."""
T = TypeVar("T", bound="StageConfig")


def check_fraction(name: str, value: float, *, low_open: bool, high_open: bool) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number in the interval named."""
    bad = not isinstance(value, (int, float)) or not math.isfinite(value)
    if not bad:
        bad = (value <= 0 if low_open else value < 0) or (value >= 1 if high_open else value > 1)
    if bad:
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ConfigError(f"{name} must be a number in {interval}, got {value!r}")


def _finite_at_least_zero(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number ≥ 0, got {value!r}")


class StageConfig:
    """Base of the stage configs: built from a :class:`~slimmer.config.CompressConfig` by field name."""

    @classmethod
    def of(cls: type[T], config: Any) -> T:
        """This stage's config from ``config`` (any object with the same attribute names)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class InputConfig(StageConfig):
    """Loading: the checkpoint, how to build and call the model, the data (``slimmer.stages.load``)."""

    model: Path | None = None
    arch: str | None = None
    input_shape: tuple[int, ...] | None = None
    inputs: tuple[str, ...] = ()
    example_inputs: Path | None = None
    dynamic_axes: tuple[str, ...] = ()
    output_name: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    data: str | None = None
    eval_samples: int | None = None  # None: a whole official test split, else 2000 held-out samples
    val_fraction: float = 0.1
    expect_sha256: str | None = None
    task: str | None = None
    dynamic_batch: bool = True
    max_length: int | None = None  # text --data: tokens per text (None: min(128, the model's positions))

    def __post_init__(self) -> None:
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
        if self.eval_samples is not None and (not isinstance(self.eval_samples, int) or self.eval_samples < 1):
            raise ConfigError(f"--eval-samples must be ≥ 1, got {self.eval_samples}")
        if not (isinstance(self.val_fraction, (int, float)) and 0 < self.val_fraction <= 1):
            raise ConfigError(f"--val-fraction must be in (0, 1], got {self.val_fraction!r}")
        if self.max_length is not None and (
            isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2
        ):
            raise ConfigError(f"--max-length must be an integer ≥ 2, got {self.max_length!r}")
        for name, values in (("--mean", self.mean), ("--std", self.std)):
            if values is not None and not all(math.isfinite(v) for v in values):
                raise ConfigError(f"{name} must hold finite numbers")
        if self.std is not None and any(v == 0 for v in self.std):
            raise ConfigError("--std must not contain 0")
        if self.expect_sha256 is not None:
            h = self.expect_sha256.strip().lower()
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise ConfigError(f"--expect-sha256 {self.expect_sha256!r}: expected 64 hexadecimal digits")


@dataclass(frozen=True)
class PruneConfig(StageConfig):
    """The pruning stage (``slimmer.prune``): the methods, their target, criterion and scope, the schedule."""

    methods: tuple[str, ...] = ("unstructured",)
    sparsity: float | None = None
    nm: str = "2:4"
    sparsity_tolerance: float = 0.01
    macs_target: float | None = None
    criterion: str = "magnitude"
    scope: str = "global"
    schedule: str = "oneshot"
    round_to: int | str | None = None  # None: prune_channel.DEFAULT_ROUND_TO; "relative": structures/rounding.py
    prune_parts: str | None = None
    latency_aware: bool = False
    latency_costs: Path | None = None  # --latency-costs FILE (read and checked on creation: latency_constants)
    speedup: float | None = None
    seed: int = 0
    output_name: str | None = None
    search_steps: int = 200  # --method search: bi-level search steps (slimmer/search_run.py)

    def __post_init__(self) -> None:
        from slimmer import choices
        from slimmer.structures.latency_cost import constants_for

        methods = choices.methods()
        if not self.methods:
            raise ConfigError("--method: give at least one of " + ", ".join(methods))
        for m in self.methods:
            if m not in methods:
                raise ConfigError(f"--method {m!r} is not one of {', '.join(methods)}.{did_you_mean(m, methods)}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"--method {','.join(self.methods)}: a method is named twice")
        if self.sparsity is not None:
            check_fraction("--sparsity", self.sparsity, low_open=False, high_open=True)
        check_fraction("--sparsity-tolerance", self.sparsity_tolerance, low_open=False, high_open=True)
        if self.macs_target is not None:
            check_fraction("--macs-target", self.macs_target, low_open=True, high_open=False)
            if not {"channel", "search"} & set(self.methods):
                raise ConfigError("--macs-target applies to --method channel or search", hint="add --method channel")
        self._check_speedup()
        if self.latency_aware and "channel" not in self.methods:
            raise ConfigError("--latency-aware applies to --method channel", hint="add --method channel")
        if self.latency_aware and self.scope != "global":
            raise ConfigError("--latency-aware ranks channels across layers: use --scope global")
        # --latency-costs is read and checked now, before any work (its rules: latency_cost.constants_for)
        costs = constants_for(self.latency_costs, latency_aware=self.latency_aware, speedup=self.speedup)
        object.__setattr__(self, "_latency_constants", costs)
        if self.criterion not in choices.criteria():
            known = choices.criteria()
            raise ConfigError(
                f"--criterion {self.criterion!r} is not one of {', '.join(known)}.{did_you_mean(self.criterion, known)}"
            )
        if self.criterion == "head-importance" and "channel" not in self.methods:  # criteria/head_importance.py
            raise ConfigError(
                "--criterion head-importance gates whole heads and channels; it ranks for --method channel only",
                hint="add --method channel, or choose another criterion",
            )
        if "nm" in self.methods:
            self._check_nm()
        if "search" in self.methods:
            self._check_search()
        if self.scope not in SCOPES:
            raise ConfigError(f"--scope {self.scope!r} is not one of {', '.join(SCOPES)}")
        if self.schedule not in choices.schedules():
            raise ConfigError(f"--schedule {self.schedule!r} is not one of {', '.join(choices.schedules())}")
        if self.schedule != "oneshot" and tuple(self.methods) not in (("unstructured",), ("channel",)):
            raise ConfigError(
                f"--schedule {self.schedule} works with --method unstructured or --method channel alone",
                hint="use --schedule oneshot to combine methods (e.g. channel,nm) or with nm and fold",
            )
        if self.round_to is not None:
            from slimmer.structures.rounding import check_round_to

            check_round_to(self.round_to)  # an int ≥ 1 or "relative"; ConfigError otherwise
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"--seed must be ≥ 0, got {self.seed}")

    @property
    def latency_constants(self):
        """The ``LatencyCosts`` latency-aware ranking uses: the ``--latency-costs`` file's, else the built-ins."""
        return self._latency_constants  # type: ignore[attr-defined]

    def _check_speedup(self) -> None:
        if self.speedup is None:
            return
        if not (isinstance(self.speedup, (int, float)) and math.isfinite(self.speedup) and self.speedup > 1):
            raise ConfigError(f"--speedup must be a number > 1, got {self.speedup!r}")
        if "channel" not in self.methods:
            raise ConfigError("--speedup applies to --method channel", hint="add --method channel")
        if self.macs_target is not None or self.sparsity is not None:
            raise ConfigError("--speedup chooses the MACs target itself: drop --macs-target and --sparsity")
        if self.schedule != "oneshot":
            raise ConfigError(
                f"--speedup measures one plan; --schedule {self.schedule} changes the plan during fine-tuning",
                hint="use --macs-target with a schedule, or --schedule oneshot with --speedup",
            )

    def _check_search(self) -> None:
        if not isinstance(self.search_steps, int) or self.search_steps < 1:
            raise ConfigError(f"--search-steps must be an integer ≥ 1, got {self.search_steps!r}")
        if {"channel", "unstructured"} & set(self.methods):
            raise ConfigError(
                f"--method {','.join(self.methods)}: search chooses the channels itself",
                hint="use --method search alone (or with nm / fold)",
            )
        if self.macs_target is None:
            raise ConfigError("--method search searches under a MACs target: pass --macs-target, e.g. 0.5")
        if self.sparsity is not None:
            raise ConfigError("--method search prunes to --macs-target, not --sparsity", hint="drop --sparsity")

    def _check_nm(self) -> None:
        from slimmer.structures.nm import parse_nm

        n, m = parse_nm(self.nm)
        if self.sparsity is not None and not {"unstructured", "channel"} & set(self.methods):
            raise ConfigError(
                f"--sparsity {self.sparsity:g} does not apply to --method nm: the pattern {n}:{m} sets the "
                f"sparsity of every pruned layer to {1 - n / m:g}",
                hint="drop --sparsity, or choose the pattern with --nm (e.g. --nm 1:4 for 75%)",
            )

    @property
    def target_sparsity(self) -> float:
        """The sparsity asked for, or the default 0.5 when none was given."""
        return 0.5 if self.sparsity is None else self.sparsity


@dataclass(frozen=True)
class RegularizeConfig(StageConfig):
    """The regularized phase before pruning (``slimmer.regularize``)."""

    regularizer: str | None = None
    reg_steps: int | None = None
    finetune_steps: int = 0

    def __post_init__(self) -> None:
        if self.regularizer is None:
            if self.reg_steps is not None:
                raise ConfigError(
                    "--reg-steps applies to --regularizer", hint="add --regularizer slimming, greg or halo"
                )
            return
        name = self.regularizer
        if name not in REGULARIZER_METHODS:
            known = list(REGULARIZER_METHODS)
            raise ConfigError(f"--regularizer {name!r} is not one of {', '.join(known)}.{did_you_mean(name, known)}")
        if self.reg_steps is not None and self.reg_steps < 1:
            raise ConfigError(f"--reg-steps must be ≥ 1, got {self.reg_steps}")
        if self.steps < 1:
            raise ConfigError(
                f"--regularizer {name} trains with a penalty before pruning: give it steps",
                hint="pass --reg-steps N (it defaults to --finetune-steps)",
            )

    @property
    def steps(self) -> int:
        """Steps of the regularized phase: ``--reg-steps``, else as many as ``--finetune-steps``."""
        return self.finetune_steps if self.reg_steps is None else self.reg_steps


@dataclass(frozen=True)
class RecoverConfig(StageConfig):
    """The recovery stage (``slimmer.recover``): reconstruction, fine-tuning and distillation, regrowing
    and layer folding's phase. :meth:`loop` embeds the training loop's
    :class:`~slimmer.train.finetune.FinetuneConfig`."""

    finetune_steps: int = 0
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.01
    methods: tuple[str, ...] = ("unstructured",)
    kd: bool | None = None
    kd_weight: float = 0.5
    kd_layers: float = 0.0
    regrow: bool = False
    nm_fixed_mask: bool = False  # N:M: hold the one-shot pattern fixed while fine-tuning instead of SR-STE
    reconstruct: bool | None = None
    recon_samples: int = 512
    amp: bool = True
    augment: bool = False
    progress_every_s: float = 10.0
    device: str = "auto"
    seed: int = 0
    output_name: str | None = None
    fold_latency_gate: str = "measure"
    fold_alpha_start: float = 0.05

    @property
    def distils(self) -> bool:
        """Whether fine-tuning distils from the original when the data has labels (without labels it
        always does: the original is the only signal). ``--kd``/``--no-kd`` decide; by default it
        distils, except when channel pruning is the only method: there cross-entropy alone recovered
        more on every member of the model set (docs/BENCHMARKS.md "Accuracy on the model set"),
        while at 90% unstructured sparsity distillation recovered more. ``--kd-layers`` distils."""
        if self.kd is not None:
            return self.kd
        return self.kd_layers > 0 or tuple(self.methods) != ("channel",)

    def __post_init__(self) -> None:
        from slimmer import choices

        if not isinstance(self.finetune_steps, int) or self.finetune_steps < 0:
            raise ConfigError(f"--finetune-steps must be ≥ 0, got {self.finetune_steps}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a finite number > 0, got {self.lr!r}")  # as FinetuneConfig
        if self.optimizer not in choices.optimizers():
            raise ConfigError(f"--optimizer {self.optimizer!r} is not one of {', '.join(choices.optimizers())}")
        check_fraction("--kd-weight", self.kd_weight, low_open=True, high_open=False)
        _finite_at_least_zero("--kd-layers", self.kd_layers)
        if not isinstance(self.recon_samples, int) or self.recon_samples < 1:
            raise ConfigError(f"--recon-samples must be ≥ 1, got {self.recon_samples}")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"--device {self.device!r}: expected auto, cpu, cuda or cuda:N")
        if self.fold_latency_gate not in ("measure", "off"):
            raise ConfigError(f"--fold-latency-gate {self.fold_latency_gate!r} is not one of measure, off")
        check_fraction("--fold-alpha-start", self.fold_alpha_start, low_open=True, high_open=False)
        if self.regrow and self.reconstruct:
            raise ConfigError(
                "--regrow fine-tunes from the weights before masking, which would undo --reconstruct",
                hint="choose one of --regrow and --reconstruct",
            )


@dataclass(frozen=True)
class ExportConfig(StageConfig):
    """The export stage (``slimmer.export.onnx``) and what is written where."""

    output: Path | None = None
    report: Path | None = None
    opset: int | None = None
    dynamic_batch: bool = True
    exporter: str = "dynamo"
    force: bool = False
    keep_failed: bool = False
    save_pretrained: Path | None = None

    def __post_init__(self) -> None:
        from slimmer import choices
        from slimmer.paths import check_output_names

        check_output_names(self.output, self.report)  # issue 19: before output_path/report_path are derived
        if self.exporter not in choices.exporters():
            raise ConfigError(f"--exporter {self.exporter!r} is not one of {', '.join(choices.exporters())}")
        if self.opset is not None and not 7 <= self.opset <= 30:
            raise ConfigError(f"--opset {self.opset} is not a valid ONNX opset")


@dataclass(frozen=True)
class VerifyConfig(StageConfig):
    """The verification stage (``slimmer.export.verify``): tolerances and the paired latency measurement."""

    atol: float = 1e-4
    rtol: float = 1e-3
    measure_latency: bool = False
    latency_pairs: int = 30
    seed: int = 0
    max_accuracy_drop: float | None = None  # accuracy points the final model may lose (acceptance.py)

    def __post_init__(self) -> None:
        _finite_at_least_zero("--atol", self.atol)
        if self.max_accuracy_drop is not None:
            _finite_at_least_zero("--max-accuracy-drop", self.max_accuracy_drop)
        _finite_at_least_zero("--rtol", self.rtol)
        if not isinstance(self.latency_pairs, int) or isinstance(self.latency_pairs, bool) or self.latency_pairs < 1:
            raise ConfigError(f"--latency-pairs must be an integer ≥ 1, got {self.latency_pairs!r}")


@dataclass(frozen=True)
class Stages:
    """The stage configs of one run, built (and so validated) once by ``CompressConfig``."""

    input: InputConfig
    prune: PruneConfig
    regularize: RegularizeConfig
    recover: RecoverConfig
    export: ExportConfig
    verify: VerifyConfig

    @classmethod
    def of(cls, config: Any) -> Stages:
        # export first: a bad output name is reported before anything else (issue 19)
        export = ExportConfig.of(config)
        return cls(
            input=InputConfig.of(config),
            prune=PruneConfig.of(config),
            regularize=RegularizeConfig.of(config),
            recover=RecoverConfig.of(config),
            export=export,
            verify=VerifyConfig.of(config),
        )


STAGE_CONFIGS = (InputConfig, PruneConfig, RegularizeConfig, RecoverConfig, ExportConfig, VerifyConfig)
