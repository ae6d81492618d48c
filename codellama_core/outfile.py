"""Output files of the tools: checked before any work, written beside the target, renamed into place whole.

Shared by ``codellama-convert`` and ``codellama-quantize`` (and the quantize pipeline's imatrix and
manifest), so that every file the tools write follows the same rules:

- ``check_output(dest, inputs, error)``: the target is a file path in an existing, writable folder and is
  none of the files the output is made from - not the same path, not a symlink to one of them, not a hard
  link to one (a ``-o CKPT/consolidated.00.pth`` would otherwise replace the user's checkpoint).
- ``atomic_output(dest, error)``: a context manager that yields a temporary path in the target's folder
  (so the final rename never crosses file systems). When the block completes, the file is fsynced, given
  the permissions any new file gets (``0o666`` minus the umask, normally 0644 - ``mkstemp`` creates 0600),
  renamed onto ``dest``, and the folder entry is fsynced. If the block raises - an error, Ctrl-C
  (``KeyboardInterrupt``), SIGTERM (``Terminated``, see ``codellama_core.tool.sigterm_raises``) - the temporary file is removed
  and ``dest`` is left as it was.
- Temporary names are ``.NAME.codellama-PID-XXXXXXXX.part``. A run that cannot clean up (SIGKILL, an abort in
  native code) leaves one behind; the next ``atomic_output`` in that folder removes those whose process is
  gone and logs each one, and names (without touching) those whose process still runs.

- ``write_file(dest, data, error)``: ``data`` (bytes, or text written as UTF-8) through ``atomic_output``;
  ``file_sha256(path)``: the hex SHA-256 of a file, read in blocks (``hashlib.file_digest``).

``error`` is the calling package's exception type (``ExportError``, ``QuantizeError``): every problem is
raised as ``error("expected ..., got ...")``, so each CLI keeps its one translation boundary.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("codellama.outfile")

ErrorType = Callable[[str], Exception]

_TAG = "codellama"
_TEMP_RE = re.compile(rf"^\..+\.{_TAG}-(\d+)-[a-z0-9_]+\.part$")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either side missing: not the same file
        return False


def check_output(dest: Path, inputs: Iterable[Path], error: ErrorType) -> None:
    """Refuse an output path that is a folder, is in a missing or read-only folder, or is one of ``inputs``."""
    if dest.is_dir():
        raise error(f"expected an output file path, got the folder {dest}")
    parent = dest.parent
    if not parent.is_dir():
        what = "a file" if parent.exists() else "no folder"
        raise error(f"expected an existing folder for the output {dest}, got {what} at {parent}")
    if not os.access(parent, os.W_OK):
        raise error(f"expected a writable folder for the output, got {parent} (permission denied)")
    for src in inputs:
        if _same_file(dest, src):
            how = (
                "the input itself" if os.path.abspath(dest) == os.path.abspath(src)
                else f"a symlink to the input {src}" if dest.is_symlink()
                else f"the same file as the input {src} (a hard link, or the same file by another path)"
            )  # fmt: skip
            raise error(f"expected an output path that is not one of the inputs, got {dest}, {how}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (best effort: not every file system lets a folder be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_stale(folder: Path) -> list[Path]:
    """Remove our temporary files in ``folder`` whose writing process is gone; returns what was removed.

    A file whose process still runs (another conversion writing into the same folder) is only logged.
    """
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP_RE.match(name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        path = folder / name
        pid = int(m.group(1))
        if _pid_alive(pid):
            log.warning("leaving %s alone: the process that writes it (%d) is still running", path, pid)
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError as e:
            log.warning("found %s left by an interrupted run, could not remove it: %s", path, e)
            continue
        log.warning("removed %s (%.1f MB) left by an interrupted run (process %d)", path, size / 1e6, pid)
        removed.append(path)
    return removed


@contextmanager
def atomic_output(dest: Path, error: ErrorType) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success move it onto ``dest``, on any exception remove it."""
    dest = Path(dest)
    folder = dest.parent
    sweep_stale(folder)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.{_TAG}-{os.getpid()}-", suffix=".part", dir=folder)
    except OSError as e:
        raise error(f"expected a writable folder for {dest}, got {type(e).__name__}: {e.strerror or e}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        try:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, dest)
        except OSError as e:
            raise error(f"expected to write {dest}, got {type(e).__name__}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(folder)


def write_file(dest: Path, data: bytes | str, error: ErrorType) -> None:
    """Write ``data`` to ``dest`` whole or not at all (``atomic_output``); text is written as UTF-8."""
    with atomic_output(dest, error) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of the file at ``path``."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


__all__ = ["atomic_output", "check_output", "file_sha256", "sweep_stale", "write_file"]
