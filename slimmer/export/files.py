"""Publishing files safely: a hidden temporary file beside the final one, fsync, then an atomic rename.

Every file slimmer writes (the ONNX graph, its plan and report, the int8 graph, calibrated latency
constants) goes through here: :func:`temp_path_for` makes the temporary file on the output's own file
system, :func:`commit` publishes it (``os.replace`` with ``--force``, otherwise a no-clobber
``os.link``), so the final path never holds a partial file and an existing one is never overwritten
by surprise. :func:`check_writable` refuses a bad output before any work starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

import onnx

from slimmer.errors import OutputError
from slimmer.paths import PUBLISHED, refuse_special


def check_writable(path: Path, force: bool) -> None:
    """Refuse early: an existing output without ``force``, or a directory we cannot write to."""
    path = Path(path)
    refuse_special(path)
    if path.exists() and not force:
        raise OutputError(f"{path} already exists", hint="pass --force to replace it, or choose another -o/--output")
    if path.is_dir():
        raise OutputError(f"{path} is a directory; -o/--output must name a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"the output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"the output directory {parent} is not writable")


def temp_path_for(final: Path) -> Path:
    """A fresh, hidden file beside ``final`` (same filesystem, so the final rename is atomic)."""
    fd, name = tempfile.mkstemp(
        dir=final.parent if str(final.parent) else ".", prefix=f".{final.name}.", suffix=".partial"
    )
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())  # mkstemp makes 0600; the final file gets the usual mode
    return Path(name)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def add_metadata(path: Path, props: dict[str, str]) -> None:
    """Add ``metadata_props`` to an exported (not yet committed) ONNX file, rewriting it in place."""
    proto = onnx.load(str(path), load_external_data=False)
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in sorted(props.items()):
        if key in existing:
            existing[key].value = value
        else:
            proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit(temp: Path, final: Path, *, replace: bool = True) -> None:
    """fsync ``temp`` and publish it as ``final`` atomically.

    With ``replace`` (``--force``) an old ``final`` is replaced only now (``os.replace``). Without it
    the publish itself is no-clobber (``os.link`` fails if ``final`` appeared meanwhile, e.g. written
    by a concurrent run): :class:`OutputError` (exit 3), ``temp`` removed, the other file untouched.
    """
    try:
        with open(temp, "rb+") as fh:
            os.fsync(fh.fileno())
        if replace:
            os.replace(temp, final)
        else:
            _publish_new(temp, final)
    except FileExistsError:
        temp.unlink(missing_ok=True)
        raise OutputError(
            f"{final} already exists: another run wrote it while this one was working; it was left as it is",
            hint="pass --force to replace it, or choose another -o/--output",
        ) from None
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from None
    _fsync_dir(final.parent if str(final.parent) else Path("."))
    PUBLISHED.append(Path(final))


def _publish_new(temp: Path, final: Path) -> None:
    """Give ``temp`` the name ``final`` only if no file of that name exists (raises FileExistsError)."""
    try:
        os.link(temp, final)
    except FileExistsError:
        raise
    except OSError as exc:  # a file system without hard links: reserve the name exclusively, then fill it
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
        os.close(fd)
        os.replace(temp, final)
        return
    os.unlink(temp)


def failed_name(final: Path) -> Path:
    """Where ``--keep-failed`` puts an artifact that failed verification: never mistaken for a good one."""
    return final.with_name(final.name + ".FAILED-VERIFICATION")


def write_atomic(final: Path, data: bytes, *, replace: bool = True) -> None:
    """Write bytes through a temporary file beside ``final``, fsync, publish (see :func:`commit`)."""
    final = Path(final)
    tmp = temp_path_for(final)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from None
    commit(tmp, final, replace=replace)
