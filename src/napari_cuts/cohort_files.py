"""A cohort's files: the inputs that files and folders stand for, and ``summary.csv``.

Shared by the batch (:mod:`napari_cuts.cohort`) and the widget's "Apply to folder"
(:func:`napari_cuts.matching.match_folder`): which inputs a list of paths names
(:func:`expand_inputs`: a folder's supported images, a DICOM series folder as one
input, unique output stems), what identifies an input's version on disk
(:func:`input_signature`), the training sample of a cohort (:func:`training_sample`)
and the rows of ``summary.csv`` (:data:`CSV_COLUMNS`, :func:`write_summary`).
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import CutsError, InputError

__all__ = ["CSV_COLUMNS", "MAX_TRAIN_IMAGES", "RESERVED_NAMES", "CohortInput", "expand_inputs",
           "input_signature", "is_volume", "has_physical_spacing", "sha256_file", "one_line",
           "empty_row", "write_summary", "training_sample"]

#: Columns of ``summary.csv``, in this order.
CSV_COLUMNS = ("image", "status", "level", "n_clusters", "mask_pixels", "area_mm2",
               "volume_ml", "seconds", "error")
#: The encoder of a cohort is trained on at most this many of its images (evenly spaced).
MAX_TRAIN_IMAGES = 16
#: Names in the output folder that no input's folder may take.
RESERVED_NAMES = ("encoder.pt", "summary.csv", "reference.json")


# ------------------------------------------------------------------------ inputs

@dataclass(frozen=True)
class CohortInput:
    """One input of a cohort: a file or a DICOM series folder, and its output stem."""

    path: Path      #: absolute (what the workers get)
    stem: str       #: the output folder's name, unique in the cohort
    name: str = ""  #: the path as given (the ``image`` column of ``summary.csv``)


def _has_dicom_files(folder: Path) -> bool:
    """True if ``folder`` itself (not its subfolders) holds DICOM files."""
    from .io._base import DICOM_EXTS, FORMAT, extension, has_dicm_magic

    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        ext = extension(f)
        if ext in DICOM_EXTS or (ext not in FORMAT and has_dicm_magic(f)):
            return True
    return False


def _folder_inputs(folder: Path) -> list[Path]:
    """The inputs a folder stands for: itself if it is a DICOM series folder, else its
    supported image files and its DICOM-series subfolders, sorted by name."""
    from .io import is_supported
    from .io.dicom import looks_like_dicom_folder

    if _has_dicom_files(folder):
        return [folder]
    out = []
    for f in sorted(folder.iterdir(), key=lambda p: p.name):
        if f.name.startswith("."):
            continue
        if f.is_dir():
            if looks_like_dicom_folder(f):
                out.append(f)
        elif is_supported(f):
            out.append(f)
    return out


def expand_inputs(paths: Sequence) -> list[CohortInput]:
    """Files and folders -> the cohort's inputs, in the order given (a folder: its
    supported image files sorted; a DICOM series folder is one input). Output stems are
    the file names without extension, made unique with ``_2``, ``_3``... in order.
    Raises :class:`InputError` when a path does not exist or nothing is left."""
    from .io._base import stem

    if not paths:
        raise InputError("no inputs given; name image files or folders of them.")
    found: list[Path] = []
    for raw in paths:
        p = Path(os.fspath(raw)).expanduser()
        if not p.exists():
            raise InputError(f"{p}: no such file or folder; check the path.")
        if p.is_dir():
            sub = _folder_inputs(p)
            if not sub:
                raise InputError(f"{p} holds no supported image files (PNG/JPEG/TIFF, NIfTI, "
                                 "DICOM) and no DICOM series.")
            found += sub
        else:
            found.append(p)
    seen_paths = set()
    used = {n.lower() for n in RESERVED_NAMES}
    out = []
    for p in found:
        key = os.path.abspath(p)
        if key in seen_paths:
            continue
        seen_paths.add(key)
        base = (stem(p) if p.is_file() else p.name).strip() or "image"
        if base.startswith("."):
            base = "_" + base.lstrip(".")
        name, k = base, 1
        while name.lower() in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name.lower())
        out.append(CohortInput(Path(key), name, str(p)))
    return out


def input_signature(path: Path) -> dict:
    """Size and modification time of a file (or of the files of a folder): a changed
    input is recomputed on a rerun."""
    p = Path(path)
    try:
        if p.is_dir():
            n, size, mtime = 0, 0, 0
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in files:
                    if f.startswith("."):
                        continue
                    st = os.stat(os.path.join(root, f))
                    n, size, mtime = n + 1, size + st.st_size, max(mtime, st.st_mtime_ns)
            return {"files": n, "bytes": size, "mtime_ns": mtime}
        st = p.stat()
        return {"files": 1, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"files": 0, "bytes": -1, "mtime_ns": 0}


def is_volume(src) -> bool:
    """True for an input segmented as one 3D object (as ``napari-cuts segment`` does)."""
    data = src.data
    return (data.ndim == 3 and not src.rgb) or data.ndim == 4


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def has_physical_spacing(src) -> bool:
    """True when the pixel sizes of an input are millimetres (NIfTI, DICOM)."""
    return src.format in ("nifti", "dicom") and src.affine is not None


# ------------------------------------------------------------------- summary

def one_line(exc: BaseException, limit: int = 300) -> str:
    """An error as one line of at most ``limit`` characters (the ``error`` column); the
    exception's type is named unless it is one of this package's own errors."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, CutsError):
        text = f"{type(exc).__name__}: {text}"
    return text[:limit]


def empty_row(image: str) -> dict:
    """A summary row with every column empty but ``image``."""
    return {k: "" for k in CSV_COLUMNS} | {"image": image}


def write_summary(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as ``summary.csv`` (:data:`CSV_COLUMNS`), atomically."""
    from .fileutil import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in CSV_COLUMNS})


# ---------------------------------------------------------- training sample

def training_sample(inputs: list[CohortInput], log) -> tuple[list, list, bool]:
    """Read up to MAX_TRAIN_IMAGES evenly spaced inputs (unreadable ones skipped).
    Returns ``(arrays, spacings, volumes)``; InputError for a 2D/volume or channel mix."""
    from .io import read_image

    n = len(inputs)
    order = list(np.linspace(0, n - 1, min(n, MAX_TRAIN_IMAGES)).round().astype(int))
    order += [i for i in range(n) if i not in set(order)]
    arrays, spacings, kinds, names = [], [], [], []
    for i in order:
        if len(arrays) >= MAX_TRAIN_IMAGES:
            break
        try:
            src = read_image(inputs[i].path)
        except CutsError as exc:
            log(f"not used for training: {one_line(exc)}")
            continue
        data = np.asarray(src.data)
        vol = is_volume(src)
        chans = (data.shape[3] if data.ndim == 4 else 1) if vol else (
            data.shape[2] if data.ndim == 3 else 1)
        kinds.append((vol, chans))
        names.append(inputs[i].path.name)
        arrays.append(data)
        spacings.append(tuple(float(v) for v in src.spacing[:3]) if vol else None)
    if not arrays:
        raise InputError("no input could be read to train the cohort encoder; see the errors "
                         "above, or give --weights.")
    vols = {k[0] for k in kinds}
    if len(vols) > 1:
        a = names[[k[0] for k in kinds].index(True)]
        b = names[[k[0] for k in kinds].index(False)]
        raise InputError(f"the cohort mixes volumes ({a}) and 2D images ({b}); one encoder "
                         "serves one kind: run them as separate batches.")
    chans = {k[1] for k in kinds}
    if len(chans) > 1:
        by = {}
        for k, nm in zip(kinds, names):
            by.setdefault(k[1], nm)
        raise InputError("the cohort mixes channel counts ("
                         + ", ".join(f"{c} in {nm}" for c, nm in sorted(by.items()))
                         + "); one encoder needs one channel count: convert them or run "
                           "separate batches.")
    return arrays, spacings, vols.pop()
