"""Atomic file writes: a failure never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from .errors import WriteError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any error the temporary file is removed and ``path`` is untouched. OS errors
    become :class:`WriteError` naming the path.
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
        os.replace(tmp, path)
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
