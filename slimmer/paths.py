"""Checks on the paths a run reads and writes, made once before any work.

:func:`check_paths` refuses a run whose outputs would replace one of its inputs or one another
(compared after resolving symbolic links and ``..``, and by inode for hard links), an output that
already exists (a dangling symbolic link included) without ``--force``, and output names too long
for the file system once the hidden temporary name (see :func:`slimmer.export.files.temp_path_for`)
is added. ``--force`` allows replacing an earlier output, never an input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from slimmer.errors import ConfigError, OutputError


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def int8_output(onnx_path: Path) -> Path:
    """``model.onnx`` → ``model.int8.onnx`` beside it: where int8 is written by default."""
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}.int8{p.suffix or '.onnx'}")


TEMP_NAME_EXTRA = len(".") + len(".") + 8 + len(".partial")
"""Bytes the temporary name ``.{name}.XXXXXXXX.partial`` adds to an output's file name."""

DEFAULT_NAME_MAX = 255
DEFAULT_PATH_MAX = 4096


def resolved(path: Path) -> Path:
    """``path`` made absolute with every symbolic link and ``..`` resolved (it need not exist)."""
    return Path(os.path.realpath(os.fspath(path)))


def _same(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file: equal after resolution, or the same inode (hard links)."""
    if resolved(a) == resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(folder, name))
    except (OSError, ValueError):
        return default


def check_name_length(path: Path, *, option: str = "-o/--output") -> None:
    """Refuse an output whose name (or whose temporary name) the file system cannot hold.

    Raises :class:`ConfigError` (exit 2) naming the path, its length in bytes and the limit.
    """
    folder = path.parent if str(path.parent) else Path(".")
    probe = folder if folder.is_dir() else Path(".")
    name_bytes = len(os.fsencode(path.name))
    name_max = _limit(probe, "PC_NAME_MAX", DEFAULT_NAME_MAX)
    if name_bytes + TEMP_NAME_EXTRA > name_max:
        raise ConfigError(
            f"{option} {os.fsdecode(os.fsencode(path))!r}: the file name is {name_bytes} bytes; with the temporary "
            f"name written first ({TEMP_NAME_EXTRA} bytes more) it exceeds the file system's limit of {name_max}",
            hint=f"choose a file name of at most {name_max - TEMP_NAME_EXTRA} bytes",
        )
    full = len(os.fsencode(resolved(path))) + TEMP_NAME_EXTRA
    path_max = _limit(probe, "PC_PATH_MAX", DEFAULT_PATH_MAX)
    if full > path_max:
        raise ConfigError(
            f"{option}: the path is {full - TEMP_NAME_EXTRA} bytes long; the file system allows {path_max} "
            "including the temporary name",
            hint="choose a shorter output path",
        )


def check_paths(reads: Iterable[Path], writes: Mapping[str, Path], force: bool) -> None:
    """Refuse a run whose written paths collide with what it reads or with each other.

    ``reads`` are the files (or folders) the run reads; ``writes`` maps each option that names an
    output (e.g. ``"-o/--output"``, ``"--report"``) to its path. Raises :class:`ConfigError` (exit 2)
    when an output is an input or equals another output (whatever ``force`` says: ``--force`` never
    replaces an input), when an output name is too long, and :class:`OutputError` (exit 3) when an
    output exists without ``force`` (a dangling symbolic link counts as existing).
    """
    reads = [Path(r) for r in reads if r is not None]
    items = [(option, Path(p)) for option, p in writes.items() if p is not None]
    for option, path in items:
        for src in reads:
            if _same(path, src) or _inside(src, path):
                how = "" if str(path) == str(src) else f" (it resolves to {resolved(path)})"
                raise ConfigError(
                    f"{option} {path} would overwrite the input {src}{how}; --force never replaces an input",
                    hint=f"choose another {option.split('/')[-1]} path",
                )
    for i, (option, path) in enumerate(items):
        for other_option, other in items[i + 1 :]:
            if _same(path, other):
                raise ConfigError(
                    f"{option} and {other_option} both name {resolved(path)}; each output needs its own path",
                    hint=f"choose another {other_option.split('/')[-1]} path",
                )
    for option, path in items:
        check_name_length(path, option=option)
        refuse_special(path, option)
        if os.path.lexists(path) and not force:
            what = f"a symbolic link to {os.readlink(path)}" if path.is_symlink() else "a file"
            raise OutputError(
                f"{path} already exists ({what})",
                hint="pass --force to replace it, or choose another -o/--output",
            )


PUBLISHED: list[Path] = []
"""Every output this process has published (appended by :func:`slimmer.export.files.commit`): what a run
interrupted or failing later, in a later stage, must not claim it did not write."""


def refuse_special(path: Path, option: str = "-o/--output") -> None:
    """Raises :class:`OutputError` (exit 3) when ``path`` (or what a link there points to) exists and is
    neither a regular file nor a directory: a device such as ``/dev/null``, a pipe or a socket. Outputs
    are written beside their name and renamed over it, which would replace the device node itself,
    even with ``--force``."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise OutputError(
            f"{option} {path} is not a regular file (a device, pipe or socket); slimmer writes only regular files",
            hint=f"choose another {option.split('/')[-1]} path",
        )


def _inside(folder: Path, path: Path) -> bool:
    """True when ``path`` is an existing file inside the input folder ``folder`` (a Hugging Face model
    folder, a folder of images): replacing it would change the input."""
    try:
        return folder.is_dir() and os.path.lexists(path) and resolved(path).is_relative_to(resolved(folder))
    except OSError:
        return False


def make_parent(path: Path, *, option: str = "-o/--output") -> None:
    """Create the folder ``path`` goes into; a file in the way or a refused ``mkdir`` is exit 3, naming it."""
    parent = Path(path).parent
    if str(parent) in ("", "."):
        return
    for p in [parent, *parent.parents]:
        if p.exists() and not p.is_dir():
            raise OutputError(f"{option} {path}: {p} is a file, not a folder", hint="choose another output path")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot create the folder {parent}: {exc.strerror or exc}") from None


def data_reads(spec: str | None) -> list[Path]:
    """The paths a ``--data`` value reads (none for a dataset name like ``fashion-mnist``)."""
    if spec is None:
        return []
    p = Path(spec)
    return [p] if os.path.lexists(p) else []


def check_output_names(output: Path | None, report: Path | None) -> None:
    """``-o``/``--report`` given as ``""``, ``.`` or ``..`` name no file: :class:`ConfigError` (exit 2)."""
    for option, value in (("-o/--output", output), ("--report", report)):
        if value is not None and (str(value) == "" or Path(value).name in ("", ".", "..")):
            raise ConfigError(f"{option} {str(value)!r} does not name a file", hint=f"give {option} a file name")


def compress_writes(config: Any) -> dict[str, Path]:
    """Every path ``compress`` may write for ``config`` (a :class:`slimmer.config.CompressConfig`),
    keyed by the option that names it: the ONNX file, the report, the pruning plan, and with
    ``--keep-failed`` the name a failed artifact is kept under."""
    from slimmer.api import plan_path
    from slimmer.export.files import failed_name

    check_output_names(config.output, config.report)
    out = config.output_path
    writes = {
        "-o/--output": out,
        "--report": config.report_path,
        "the pruning plan (<output>.plan.json)": plan_path(out),
    }
    if config.keep_failed:
        writes["--keep-failed (<output>.FAILED-VERIFICATION)"] = failed_name(out)
    if getattr(config, "int8_path", None) is not None:
        writes["--quantize int8 (<output stem>.int8.onnx)"] = config.int8_path
    if getattr(config, "save_pretrained", None) is not None:
        writes["--save-pretrained"] = Path(config.save_pretrained)
    return writes


def compress_reads(config: Any) -> list[Path]:
    """Every path ``compress`` reads for ``config``: the checkpoint, ``--example-inputs``,
    ``--latency-costs`` and the ``--data`` file or folder."""
    reads = [Path(config.model)] if config.model is not None else []
    for option in ("example_inputs", "latency_costs"):
        if getattr(config, option, None) is not None:
            reads.append(Path(getattr(config, option)))
    return [*reads, *data_reads(config.data)]


def ort_model_arg(path: Path) -> str | bytes:
    """What to hand ``onnxruntime.InferenceSession`` for ``path``: the path itself, or the file's bytes
    when the name is not valid UTF-8 (onnxruntime accepts only UTF-8 path strings). Self-contained
    files only in the bytes case: slimmer writes those, and verify refuses external data elsewhere."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return Path(path).read_bytes()
    return text


def is_utf8(path: Path) -> bool:
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def written_by_demo(output: Path, weights: Path) -> bool:
    """True when nothing exists at the demo's output names, or what exists is an earlier demo's work:
    its report (``<output>.report.json``) records the bundled weights as input and, for the ONNX file
    and the int8 file (``<output stem>.int8.onnx``) that exist, their sha256. Anything else (an
    unrelated file, a symbolic link, an int8 file the report does not record) is not the demo's."""
    import json

    output = Path(output)
    report = output.with_name(output.name + ".report.json")
    plan = output.with_name(output.name + ".plan.json")
    int8 = int8_output(output)
    present = [p for p in (output, report, plan, int8) if os.path.lexists(p)]
    if not present:
        return True
    if any(p.is_symlink() or not p.is_file() for p in present) or report not in present:
        return False
    try:
        recorded = json.loads(report.read_text(encoding="utf-8"))
        ok = recorded["input"]["sha256"] == sha256_file(weights)
        if output in present:
            ok = ok and recorded["onnx"]["sha256"] == sha256_file(output)
        if int8 in present:
            ok = ok and (recorded.get("quantization") or {}).get("sha256_int8") == sha256_file(int8)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return bool(ok)
