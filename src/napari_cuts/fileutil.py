"""Atomic file writes: a failure never leaves a half-written output behind, and a
new file gets the permissions the user's umask gives any new file (``0o666 &
~umask``: 0644 under umask 022), so colleagues on a shared drive can read it."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path

from .errors import WriteError

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    Linux: the ``Umask:`` line of ``/proc/self/status`` (kernel 4.7+), which is
    thread-safe. Elsewhere: ``os.umask`` set and restored under a lock (the only
    portable way to read it; another thread creating a file in between could see
    the temporary value, which the lock narrows to this module's callers)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask & 0o777


def new_file_mode() -> int:
    """``0o666 & ~umask``: what ``open(path, "w")`` would give a new file."""
    return 0o666 & ~current_umask()


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsynced
        _fsync(folder)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The caller writes the whole file to the temporary path (any writer, any way);
    then it is given the umask's permissions, flushed to disk (fsync) and renamed
    onto ``path`` (``os.replace``, atomic on one file system). On any error the
    temporary file is removed and ``path`` is untouched. OS errors become
    :class:`WriteError` naming the path.
    """
    path = Path(path)
    # Keep the full suffix (.nii.gz) so writers that look at the extension still work.
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}; "
                         "choose a writable folder.") from None
    try:
        yield tmp
        # mkstemp makes the file 0600; a finished output is for the user's group too
        os.chmod(tmp, new_file_mode())
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        _remove(tmp)
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}; "
                         "check the folder is writable and the disk has space.") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def write_bytes(path, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically (see :func:`atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(payload)
    return path


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, default=jsonable)
            fh.write("\n")
    return path


def jsonable(o):
    """``json.dump(default=...)``: numpy scalars and arrays, paths; anything else as text."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def make_output_dir(path) -> Path:
    """Create an output folder (and its parents); :class:`WriteError` if it cannot be."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create the output folder {out}: {exc.strerror or exc}; "
                         "choose a writable folder with --out.") from None
    return out


def save_figure(fig, path) -> None:
    """Lay out a matplotlib figure, write it to ``path`` as PNG atomically, close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
