"""The report of ``compress`` assembled from the stage results, and the scores taken after each stage
(accuracy on labelled ``--data``, embedding cosine to the original on text ``--data``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from slimmer.config import CompressConfig
from slimmer.errors import ConfigError
from slimmer.prune import PruneResult
from slimmer.report import Report
from slimmer.runplan import RunPlan
from slimmer.stages import Loaded, Measured
from slimmer.stats import accuracy, count_macs, count_nonzero, count_params
from slimmer.train.data import DataSplits, eval_count
from slimmer.train.embedding import embedding_evaluator


class Scores:
    """Accuracy (labelled ``--data``) and embedding cosine to the original (text ``--data``) after each
    stage, for the report's ``accuracy`` and ``embedding`` sections."""

    def __init__(self, measured: Measured, original: nn.Module | None, config: CompressConfig, data: DataSplits | None):
        self.acc: dict[str, Any] = {"before": measured.accuracy, "after_prune": None, "after_finetune": None}
        self.evaluate = evaluator(measured, config, data)
        if measured.accuracy is not None:
            self.acc["evaluation"] = measured.evaluation
        elif config.max_accuracy_drop is not None:
            raise ConfigError(
                f"--max-accuracy-drop needs labels: {config.data} has none",
                hint="pass --data with labels (a .npz with an array y, an IDX folder with labels, an image folder)",
            )
        limit = eval_count(data, config.eval_samples) if data is not None else 0
        self.cosine = embedding_evaluator(original, data, config.output_name, limit)  # text --data
        self.cosines: dict[str, float] = {}

    def record(self, stage: str, model: nn.Module) -> None:
        """Score ``model`` as it is after ``stage`` (``after_prune``, ``after_finetune``, ...)."""
        if self.evaluate:
            self.acc[stage] = self.evaluate(model)
        if self.cosine and stage != "after_regularize":
            self.cosines[stage] = self.cosine(model)

    def embedding(self) -> dict | None:
        return self.cosine.describe(self.cosines) if self.cosine else None


def evaluator(
    measured: Measured, config: CompressConfig, data: DataSplits | None = None
) -> Callable[[nn.Module], float] | None:
    if measured.eval_y is None:
        return None
    x, y = measured.eval_x, measured.eval_y
    feed = data.eval.feed if data is not None else None  # text data packs several inputs per sample
    return lambda m: accuracy(m, x, y, output_name=config.output_name, feed=feed)


def assemble(
    loaded: Loaded,
    config: CompressConfig,
    plan: RunPlan,
    measured: Measured,
    pruned: PruneResult,
    surgery: dict | None,
    finetune: dict | None,
    scores: Scores,
    model: nn.Module,
    example: tuple,
) -> Report:
    """The report from the stage results (export and verification fill in the rest)."""
    inputs = loaded.inputs
    report = Report(config=config.to_dict())
    report.input = {**loaded.source, "inputs": inputs.to_dict(), "outputs": measured.outputs}
    if inputs.single_float and len(inputs.slots) == 1:
        report.input["input_shape"] = list(inputs.first.shape)
    report.warnings += list(loaded.notes)
    fill_pruning(report, pruned, config)
    report.surgery = surgery
    report.finetune = finetune
    report.accuracy = scores.acc
    report.embedding = scores.embedding()
    report.params = {
        "before": measured.params,
        "nonzero_before": measured.nonzero,
        "after": count_params(model),
        "nonzero_after": count_nonzero(model),
    }
    report.macs = {"before": measured.macs, "after": count_macs(model, example)}
    if config.macs_target is not None:
        report.macs["target"] = config.macs_target
    report.run_plan = plan.to_dict()
    return report


def fill_pruning(report: Report, pruned: PruneResult, config: CompressConfig) -> None:
    report.sparsity = {
        "requested": pruned.sparsity_requested,
        "achieved": pruned.sparsity_achieved,
        "per_layer": pruned.per_layer,
        "tolerance": config.sparsity_tolerance,
    }
    report.warnings += [w for w in pruned.warnings if w not in report.warnings]
    report.pruning = pruned.details
    if "unstructured" in config.methods:
        report.warnings.append(
            "unstructured zeros do not reduce dense MACs or onnxruntime CPU latency; the file compresses better"
        )
    if config.finetune_steps == 0:
        report.warnings.append("no fine-tuning was run (pass --data and --finetune-steps to recover accuracy)")
