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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimmer.errors import ConfigError
from slimmer.prune_config import PruneConfig
from slimmer.registry import did_you_mean
from slimmer.stage_base import SCOPES, StageConfig, check_finite_nonnegative, check_fraction

__all__ = [
    "REGULARIZER_METHODS",
    "SCOPES",
    "ExportConfig",
    "InputConfig",
    "PruneConfig",
    "RecoverConfig",
    "RegularizeConfig",
    "StageConfig",
    "Stages",
    "VerifyConfig",
    "check_fraction",
]

REGULARIZER_METHODS = {
    "slimming": ("channel",),
    "greg": ("unstructured", "channel"),
    "greg2": ("unstructured",),
    "halo": ("unstructured",),
}
"""Which pruning each ``--regularizer`` prepares (see :mod:`slimmer.regularize`)."""


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


FINETUNE_LR = 0.1  # SGD after unstructured or channel pruning: RecoverConfig.finetune_lr
BASE_LR = 0.01  # every other training phase when --lr is not given
PRUNING_ONLY = frozenset({"unstructured", "channel"})  # the methods whose recovery defaults the model set chose


@dataclass(frozen=True)
class RecoverConfig(StageConfig):
    """The recovery stage (``slimmer.recover``): reconstruction, fine-tuning and distillation, regrowing
    and layer folding's phase. :meth:`loop` embeds the training loop's
    :class:`~slimmer.train.finetune.FinetuneConfig`."""

    finetune_steps: int = 0
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float | None = None
    methods: tuple[str, ...] = ("unstructured",)
    kd: bool | None = None
    kd_weight: float | None = None
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
        distils, except when every method is unstructured or channel pruning: cross-entropy alone
        recovered more there on every member of the model set, at 90% sparsity at the default rate
        (:attr:`finetune_lr`, 0.1; 2 seeds each) and at half the MACs at lr 0.01 (docs/BENCHMARKS.md
        "Accuracy on the model set: reading"). N:M, layer folding and search were measured with
        distillation. ``--kd-layers`` distils."""
        return self._distils_unless(set(self.methods) <= PRUNING_ONLY)

    @property
    def distillation_weight(self) -> float:
        """Distillation's share of the loss when it distils on labelled data (the rest is cross-entropy):
        ``--kd-weight``, else 0.9 with search (TAS transfers with α = 0.9: Dong & Yang, NeurIPS 2019) and
        0.5 otherwise."""
        if self.kd_weight is not None:
            return self.kd_weight
        return 0.9 if "search" in self.methods else 0.5

    @property
    def finetune_lr(self) -> float:
        """Peak learning rate of the fine-tuning after pruning. ``--lr`` decides; by default
        :data:`FINETUNE_LR` with SGD when every method is unstructured or channel pruning: on the model
        set, 468 steps at 0.1 recovered more than at 0.01, 0.03 or 0.05 on every member for both methods
        (docs/BENCHMARKS.md "Accuracy on the model set"). Otherwise :data:`BASE_LR`, the rate the other
        recipes were measured at: layer folding's α schedule and SR-STE's refinement term scale with
        it, and AdamW wants a smaller one."""
        if self.lr is not None:
            return self.lr
        return FINETUNE_LR if self.optimizer == "sgd" and set(self.methods) <= PRUNING_ONLY else BASE_LR

    @property
    def phase_distils(self) -> bool:
        """Whether a regularizer's phase before pruning distils (with labels): ``--kd``/``--no-kd``
        decide; by default as its recipes were measured, distilling unless channel pruning is the
        only method. The fine-tuning after pruning follows :attr:`distils`."""
        return self._distils_unless(tuple(self.methods) == ("channel",))

    def _distils_unless(self, labels_alone: bool) -> bool:
        """``--kd``/``--no-kd`` when given; else distil unless ``labels_alone`` (``--kd-weight`` and
        ``--kd-layers`` distil)."""
        if self.kd is not None:
            return self.kd
        return self.kd_weight is not None or self.kd_layers > 0 or not labels_alone

    @property
    def phase_lr(self) -> float:
        """Peak learning rate of the training before pruning (a regularizer's phase, TAS's weights):
        ``--lr``, else :data:`BASE_LR`."""
        return BASE_LR if self.lr is None else self.lr

    def __post_init__(self) -> None:
        from slimmer import choices

        if not isinstance(self.finetune_steps, int) or self.finetune_steps < 0:
            raise ConfigError(f"--finetune-steps must be ≥ 0, got {self.finetune_steps}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a finite number > 0, got {self.lr!r}")  # as FinetuneConfig
        if self.optimizer not in choices.optimizers():
            raise ConfigError(f"--optimizer {self.optimizer!r} is not one of {', '.join(choices.optimizers())}")
        if self.kd_weight is not None:
            check_fraction("--kd-weight", self.kd_weight, low_open=True, high_open=False)
        check_finite_nonnegative("--kd-layers", self.kd_layers)
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
        check_finite_nonnegative("--atol", self.atol)
        if self.max_accuracy_drop is not None:
            check_finite_nonnegative("--max-accuracy-drop", self.max_accuracy_drop)
        check_finite_nonnegative("--rtol", self.rtol)
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
