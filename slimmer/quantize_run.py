"""``slimmer quantize GRAPH.onnx``: int8 of an ONNX file slimmer may not have produced, as a report.

The graph's own inputs say what the data must look like: ``--data`` (any ``--data`` source of
:mod:`slimmer.train.data`) feeds a graph with one float input, its training split calibrating and its
held-out split (with labels when it has them) verifying; ``--example-inputs FILE.npz`` gives named
arrays for graphs with several inputs (integer ones included), split between calibration and
verification; with neither, calibration runs on random inputs and the report warns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slimmer.errors import ConfigError, InputError
from slimmer.export import int8
from slimmer.export.files import check_writable, write_atomic
from slimmer.export.quantize import quantize
from slimmer.export.quantize_config import QuantizationFailed, QuantizeConfig, QuantizeResult
from slimmer.paths import check_paths, data_reads, int8_output
from slimmer.report import Report

if TYPE_CHECKING:
    from slimmer.config import CompressConfig
    from slimmer.stages import Loaded, Measured
    from slimmer.train.data import DataSplits


@dataclass(frozen=True)
class QuantizeJob:
    """The options of ``slimmer quantize`` after parsing (paths as given, not yet checked)."""

    graph: Path
    config: QuantizeConfig
    data: str | None = None
    example_inputs: Path | None = None
    input_shape: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    val_fraction: float = 0.1
    output: Path | None = None
    report: Path | None = None
    force: bool = False


def run_quantize(job: QuantizeJob) -> Report:
    """Quantize ``job.graph`` and write the report; returns it (status failed, exit 5, when a gate failed).

    Raises :class:`ConfigError` (2), :class:`InputError`/:class:`OutputError` (3), :class:`ExportError` (4)."""
    graph = Path(job.graph)
    if not graph.is_file():
        raise InputError(f"{graph}: no such ONNX file")
    output = Path(job.output) if job.output is not None else int8_output(graph)
    report_path = Path(job.report) if job.report is not None else output.with_name(output.name + ".report.json")
    paths = [p.resolve() for p in (graph, output, report_path)]
    if len(set(paths)) != 3:
        raise ConfigError("the input graph, the int8 output and the report must be three different paths")
    reads = [graph, *data_reads(job.data), *([Path(job.example_inputs)] if job.example_inputs is not None else [])]
    check_paths(reads, {"-o/--output": output, "--report": report_path}, force=True)  # --force never replaces an input
    check_writable(output, job.force)
    check_writable(report_path, job.force)
    calibration, held_out, labels, source = _feeds(graph, job)
    from slimmer.paths import sha256_file

    report = Report(
        input={"path": str(graph), "sha256": sha256_file(graph), "format": "onnx"},
        config={
            **asdict(job.config),
            "data": source,
            "output": str(output),
            "report": str(report_path),
            "input_shape": list(job.input_shape) if job.input_shape else None,
        },
    )
    try:
        result = quantize(graph, calibration, job.config, output, held_out=held_out, labels=labels, force=job.force)
        report.status, report.exit_code = "ok", 0
    except QuantizationFailed as exc:
        result = exc.result
        report.status, report.exit_code, report.error = "failed", exc.exit_code, exc.message
    fill_report(report, result)
    report.verification["passed"] = result.passed
    if result.artifact is not None:
        report.onnx = artifact_info(Path(result.artifact))
    write_atomic(report_path, report.to_json().encode())
    return report


def fill_report(report: Report, result: QuantizeResult) -> None:
    """Put ``result`` into ``report``: the ``quantization`` section and its warnings (``compress`` can call
    this too; the ``onnx`` section is left to the caller)."""
    report.quantization = result.to_dict()
    report.warnings += [w for w in result.warnings if w not in report.warnings]


def artifact_info(path: Path) -> dict:
    """The report's ``onnx`` section for the file ``path``: path, sha256, opset, size in bytes."""
    import hashlib

    data = Path(path).read_bytes()
    return {
        "path": str(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "opset": _opset(Path(path)),
        "size_bytes": len(data),
    }


def _opset(path: Path) -> int | None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _feeds(graph: Path, job: QuantizeJob):
    """(calibration feeds, held-out feeds, labels, a description of the source) for ``job``."""
    if job.data is not None and job.example_inputs is not None:
        raise ConfigError("give --data or --example-inputs, not both")
    specs = int8.graph_inputs(graph)
    batch = job.config.batch_size
    if job.example_inputs is not None:
        calib, held = _named_arrays(Path(job.example_inputs), specs, job.val_fraction, batch)
        return calib, held, None, str(job.example_inputs)
    if job.data is None:
        return None, None, None, None
    floats = [s for s in specs if np.issubdtype(s[1], np.floating)]
    if len(specs) != 1 or len(floats) != 1:
        raise InputError(
            f"--data feeds graphs with one float input; {graph} has inputs {[s[0] for s in specs]}",
            hint="pass --example-inputs FILE.npz with one array per graph input instead",
        )
    name, _, dims = specs[0]
    shape = job.input_shape or _static_shape(name, dims)
    from slimmer.train.data import load_data

    mean = job.mean or (0.0,)
    std = job.std or (1.0,)
    splits = load_data(job.data, shape, mean, std, seed=job.config.seed, val_fraction=job.val_fraction)
    from slimmer.export.quantize import feeds_from_array

    calib = feeds_from_array(splits.train.x[: job.config.calibration_samples].numpy(), name, batch)
    n = job.config.eval_samples
    held = feeds_from_array(splits.eval.x[:n].numpy(), name, batch)
    labels = splits.eval.y[:n].numpy() if splits.eval.y is not None else None
    return calib, held, labels, job.data


def _static_shape(name: str, dims) -> tuple[int, ...]:
    rest = dims[1:]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise ConfigError(
            f"the graph's input {name!r} has the shape {dims}: its sample shape is not fixed",
            hint="pass --input-shape with the full input shape, batch first, e.g. 1,3,224,224",
        )
    return (1, *rest)


def _named_arrays(path: Path, specs, val_fraction: float, batch: int):
    if not path.is_file() or path.suffix != ".npz":
        raise InputError(f"--example-inputs {path}: not a .npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    names = [s[0] for s in specs]
    if sorted(arrays) != sorted(names):
        raise InputError(f"--example-inputs {path} holds arrays {sorted(arrays)}, the graph takes {sorted(names)}")
    sizes = {len(a) for a in arrays.values()}
    if len(sizes) != 1 or min(sizes) < 2:
        raise InputError(f"--example-inputs {path}: the arrays need one common number of samples, at least 2")
    total = sizes.pop()
    cut = max(1, min(total - 1, round(total * (1 - val_fraction))))
    dtypes = {s[0]: s[1] for s in specs}

    def chunk(lo: int, hi: int) -> list[dict[str, np.ndarray]]:
        return [
            {k: np.ascontiguousarray(v[i : min(i + batch, hi)], dtype=dtypes[k]) for k, v in arrays.items()}
            for i in range(lo, hi, batch)
        ]

    return chunk(0, cut), chunk(cut, total)


def after_compress(
    config: CompressConfig, report: Report, loaded: Loaded, measured: Measured, data: DataSplits | None
) -> None:
    """``compress --quantize int8``'s stage, on the committed float file: calibrated on the training split of ``--data``
    (random inputs otherwise, with a warning), verified on the held-out split; a failed gate fails the
    run (exit 5) with nothing under the int8 name, a slower int8 file keeps the float one."""
    from slimmer.export.quantize import quantize, quantize_after_compress
    from slimmer.export.quantize_config import QuantizationFailed

    qcfg = config.quantize_config
    if measured.eval_x is not None and len(measured.eval_x):  # the images the float accuracy was measured on
        qcfg = dataclasses.replace(qcfg, eval_samples=len(measured.eval_x))
    try:
        if loaded.inputs.single_float:
            result = quantize_after_compress(
                config.output_path,
                data.train.x.numpy() if data is not None and len(data.train) else None,
                measured.eval_y.numpy() if measured.eval_y is not None else None,
                qcfg,
                eval_inputs=measured.eval_x.numpy() if measured.eval_x is not None else None,
                output_path=config.int8_path,
                force=config.force,
            )
        else:  # several or integer inputs: named feeds of the example inputs
            feeds = [
                {k: v.numpy() for k, v in loaded.inputs.tensors(loaded.inputs.args(loaded.inputs.batch, seed)).items()}
                for seed in range(config.seed + 100, config.seed + 100 + min(qcfg.calibration_samples, 32))
            ]
            result = quantize(config.output_path, feeds, qcfg, config.int8_path, force=config.force)
            report.warnings.append(
                "int8 calibration ran on the example inputs: activation ranges calibrated on random inputs are "
                "unreliable; pass --example-inputs with real samples"
            )
    except QuantizationFailed as exc:
        fill_report(report, exc.result)
        report.status, report.exit_code, report.error = "failed", 5, exc.message
        return
    fill_report(report, result)
