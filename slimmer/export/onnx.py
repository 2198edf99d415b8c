"""ONNX export with ``torch.onnx.export`` (the default, torch.export-based exporter).

The graph is written to a temporary file in the output's own directory and moved into place by
:func:`slimmer.export.files.commit` only after verification passed, so the final path never holds a
partial or unverified file. The exporter's progress and log output are captured (never on stdout) and
kept for errors.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from slimmer.errors import ConfigError, ExportError, InputError
from slimmer.export.files import temp_path_for
from slimmer.inputs import ExampleInputs, as_args, batch_size_of, fresh
from slimmer.outputs import TensorLeaves, has_other_leaves, output_names
from slimmer.paths import is_utf8

MAX_PROTO_BYTES = 2**31 - 1
EXPORTERS = ("dynamo", "legacy")
LEGACY_OPSET = 17
QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir", "torch.fx")


@dataclass
class ExportResult:
    """A verified-to-be-written ONNX file: where it sits now and what it holds."""

    temp_path: Path
    final_path: Path
    opset: int
    size_bytes: int
    log: str
    warnings: list[str] = field(default_factory=list)


MIN_ONNXSCRIPT = (0, 3)


def preflight() -> None:
    """Before any work: the default exporter needs onnxscript; refuse early if it is missing or too old."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("onnxscript") is None:
        raise InputError(
            "onnxscript is not installed; torch.onnx.export needs it",
            hint="pip install 'onnxscript>=0.3' (it is a dependency of slimmer: reinstall slimmer)",
        )
    try:
        version = importlib.metadata.version("onnxscript")
    except importlib.metadata.PackageNotFoundError:
        return
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_ONNXSCRIPT:
        raise InputError(
            f"onnxscript {version} is too old for torch.onnx.export",
            hint="pip install -U 'onnxscript>=0.3'",
        )


@contextlib.contextmanager
def _quiet_exporter(log: io.StringIO, warned: list[str]):
    levels = {n: logging.getLogger(n).level for n in QUIET_LOGGERS}
    handler = logging.StreamHandler(log)
    for n in QUIET_LOGGERS:
        logging.getLogger(n).setLevel(logging.ERROR)
        logging.getLogger(n).addHandler(handler)
    try:
        with (
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            yield
            warned.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
            logging.getLogger(n).removeHandler(handler)


def _summarize(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:  # the first line naming a torch op or an export failure is the informative one
        if "aten." in ln or "Unsupported" in ln or "not supported" in ln or "data-dependent" in ln.lower():
            return f"{type(exc).__name__}: {ln[:400]}"
    return f"{type(exc).__name__}: {(lines[0] if lines else '')[:400]}"


def export_onnx(
    model: nn.Module,
    example: torch.Tensor | tuple[Any, ...],
    final_path: Path,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    exporter: str = "dynamo",
    inputs: ExampleInputs | None = None,
    output: Any = None,
) -> ExportResult:
    """Export ``model`` on ``example`` to a temporary file beside ``final_path`` and check it.

    ``example`` is one input tensor or a tuple of positional arguments; ``inputs`` (when given)
    names the graph's inputs and declares its dynamic axes (batch, and e.g. a sequence length), and
    the outputs are named after the model's output leaves (``logits``, ``0``, ...), read from ``output``
    (the model's output on any batch, when the caller has one: it saves a forward) or from a forward on
    ``example``. Without ``inputs`` the single input is named ``input`` and only the batch is dynamic.

    ``exporter`` is ``dynamo`` (torch.export-based, the default) or ``legacy`` (TorchScript
    tracing: faster, but it records only the branch the example input takes; a tracer warning
    about that becomes a warning in the result). Raises :class:`ExportError` (exit 4) when the
    exporter fails, the graph exceeds 2 GB, or the opset written differs from the one requested
    (the dynamo exporter silently raises opsets below 18).
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"--exporter {exporter!r} is not one of {', '.join(EXPORTERS)}")
    final_path = Path(final_path)
    log = io.StringIO()
    model = model.eval()
    args = as_args(example)
    if dynamic_batch and batch_size_of(args) < 2:  # torch.export specializes a size-1 dimension
        args = tuple(_two_rows(a) for a in args)
    if inputs is not None:
        dynamic_shapes = inputs.dynamic_shapes() if (dynamic_batch or inputs.has_dynamic_length) else None
        if dynamic_shapes is not None and not dynamic_batch:
            dynamic_shapes = tuple(
                {d: v for d, v in ds.items() if d != 0} or None if isinstance(ds, dict) else ds for ds in dynamic_shapes
            )
        input_names = inputs.names
    else:
        dynamic_shapes = tuple({0: torch.export.Dim.DYNAMIC} for _ in args) if dynamic_batch else None
        input_names = ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
    if output is None:
        with torch.no_grad():
            output = model(*fresh(args))
    names = _unique_outputs(output_names(output), input_names)
    if has_other_leaves(output):  # an int or str beside the tensors: the graph returns the tensors only
        model = TensorLeaves(model).eval()
        if dynamic_shapes is not None:  # TensorLeaves.forward takes *args: one tuple of specs
            dynamic_shapes = (tuple(dynamic_shapes),)
    if len(names) == 1 and names[0] == "output":
        names = None  # one tensor: the exporter's own name, as before
    legacy_axes = None
    if dynamic_batch or (inputs is not None and inputs.has_dynamic_length):
        legacy_axes = {}
        specs = inputs.specs if inputs is not None else [None] * len(input_names)
        for name, spec in zip(input_names, specs, strict=True):
            dims = ([0] if dynamic_batch else []) + (list(spec.dynamic) if spec is not None else [])
            legacy_axes[name] = {d: "batch" if d == 0 else f"{name}_dim{d}" for d in dims}
        for out_name in names or ["output"]:
            legacy_axes[out_name] = {0: "batch"} if dynamic_batch else {}
    other = "legacy" if exporter == "dynamo" else "dynamo"
    warned: list[str] = []
    written: int | None = None
    tmp = temp_path_for(final_path)  # created last: every path out of here from now on removes it
    target = exporter_path(tmp)  # the exporters take UTF-8 path names only
    try:
        try:
            with _quiet_exporter(log, warned), torch.no_grad():
                if exporter == "dynamo":
                    program = torch.onnx.export(
                        model,
                        args,
                        dynamo=True,
                        opset_version=opset,
                        dynamic_shapes=dynamic_shapes,
                        input_names=input_names,
                        output_names=names,
                        verbose=False,
                    )
                    _strip_ir_source_paths(program.model)  # in memory: no reload and rewrite of the file
                    program.save(str(target), external_data=False)
                    written = program.model.opset_imports.get("")
                    del program
                else:
                    torch.onnx.export(
                        model,
                        args,
                        str(target),
                        dynamo=False,
                        opset_version=opset or LEGACY_OPSET,
                        input_names=input_names,
                        output_names=[_legacy_name(n) for n in names or ["output"]],
                        dynamic_axes=legacy_axes and {_legacy_name(k): v for k, v in legacy_axes.items()},
                    )
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - every exporter failure becomes exit 4
            if "2GB" in str(exc) or "2 GB" in str(exc) or "protobuf" in str(exc).lower():
                raise ExportError(
                    "the model is too large for a single ONNX file (protobuf limit 2 GB)",
                    hint="slimmer writes self-contained files only; prune further before export",
                ) from None
            raise ExportError(
                f"ONNX export failed ({exporter} exporter): {_summarize(exc)}",
                hint=f"try --exporter {other}; run with --debug for the exporter's full message",
            ) from exc
        size = target.stat().st_size
        if size > MAX_PROTO_BYTES:
            raise ExportError(f"the exported graph is {size} bytes, above the 2 GB limit of one ONNX file")
        proto = None
        if exporter != "dynamo":
            proto = onnx.load(str(target), load_external_data=False)
            written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if written is None:
            raise ExportError("the exported graph declares no default-domain opset")
        if opset is not None and written != opset:
            raise ExportError(
                f"--opset: requested {opset}, produced {written} (the exporter does not support the requested opset)",
                hint=f"use --opset {written} or higher, or omit --opset",
            )
        if proto is not None and _strip_source_paths(proto):
            onnx.save(proto, str(target))
        try:  # the file's path: the checker reads it in C++, without a second copy in Python
            onnx.checker.check_model(str(target) if proto is None else proto, full_check=False)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"the exported graph is not valid ONNX: {str(exc).splitlines()[0]}") from None
        del proto
        if target != tmp:
            _move_into(target, tmp)
        size = tmp.stat().st_size
        notes = []
        if any(w.startswith("TracerWarning") and "trace might not generalize" in w for w in warned):
            notes.append(
                "the legacy exporter traced data-dependent Python control flow: only the branch taken by the "
                "example input is in the ONNX graph"
            )
        return ExportResult(
            temp_path=tmp,
            final_path=final_path,
            opset=int(written),
            size_bytes=size,
            log=log.getvalue(),
            warnings=notes,
        )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if target != tmp:
            shutil.rmtree(target.parent, ignore_errors=True)


def exporter_path(tmp: Path) -> Path:
    """Where the exporter writes: ``tmp`` itself, or a UTF-8 named file in a private temporary folder
    when ``tmp``'s path is not valid UTF-8 (its bytes are then moved into ``tmp`` by Python)."""
    if is_utf8(tmp):
        return tmp
    return Path(tempfile.mkdtemp(prefix="slimmer-export-")) / "model.onnx"


def _move_into(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)


def _legacy_name(name: str) -> str:
    """The TorchScript exporter refuses a value name that starts with a digit (a tuple's leaves ``0``,
    ``1.t``): those get an ``output_`` prefix there (outputs are verified by position, not by name)."""
    return f"output_{name}" if name[:1].isdigit() else name


def _unique_outputs(names: list[str], input_names: list[str]) -> list[str]:
    """Output leaf names that collide with an input name (a model returning ``{"query": ...}`` for an
    input ``query``) or with each other get an ``output.`` prefix: ONNX names must be unique."""
    taken = set(input_names)
    out = []
    for name in names:
        unique = name
        while unique in taken:
            unique = f"output.{unique}"
        taken.add(unique)
        out.append(unique)
    return out


def _two_rows(a: Any) -> Any:
    if isinstance(a, torch.Tensor) and a.ndim >= 1 and a.shape[0] < 2:
        return a.expand(2, *a.shape[1:]).contiguous()
    return a


PRIVATE_NODE_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")


def _strip_source_paths(proto: onnx.ModelProto) -> bool:
    """Drop per-node stack traces: they embed this machine's source paths, and the same model
    exported from two install locations must give the same bytes."""
    changed = False
    for node in proto.graph.node:
        keep = [p for p in node.metadata_props if p.key not in PRIVATE_NODE_METADATA]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
            changed = True
    return changed


def _strip_ir_source_paths(model: Any) -> None:
    """:func:`_strip_source_paths` on the exporter's in-memory model (``onnx_ir``)."""
    for node in model.graph:
        for key in PRIVATE_NODE_METADATA:
            node.metadata_props.pop(key, None)
