"""Which reader a path goes to: :func:`read_image`, :func:`read_all`, :func:`is_supported`."""

from __future__ import annotations

import warnings

from ..errors import CutsError, ReadError
from ._base import (
    DICOM_EXTS, FORMAT, SUPPORTED_EXTENSIONS, ImageData, as_path, extension, has_dicm_magic,
    supported_list,
)
from ._dicom_common import dcmread, is_seg
from .dicom import looks_like_dicom_folder, read_dicom_file, read_dicom_folder
from .dicom_seg import read_seg
from .nifti import read_nifti
from .pictures import read_one, read_stack, stack_files


def is_supported(path) -> bool:
    """True for a path the readers take: a supported extension, a DICOM file without
    one (``DICM`` magic), a folder that holds DICOM files, or a folder of PNG/TIFF
    pictures (a stack), or a napari-cuts session / ``segment`` output folder (which the
    napari reader opens as a session, never as a stack of its PNG figures). Never raises."""
    try:
        p = as_path(path)
        if p.is_dir():
            return (_is_session(p) or looks_like_dicom_folder(p)
                    or bool(stack_files(p)))
        ext = extension(p)
        if ext in SUPPORTED_EXTENSIONS or ext in DICOM_EXTS:
            return True
        return p.is_file() and has_dicm_magic(p)
    except Exception:  # noqa: BLE001 - a yes/no question never raises
        return False


def _is_session(p) -> bool:
    from ..session import is_session_folder

    return is_session_folder(p)


def read_image(path, *, sequences: bool | None = None) -> ImageData:
    """Read one image: a picture, a NIfTI file, a DICOM file, a DICOM folder (its
    largest series; the others are named in ``notes``), a DICOM SEG (as labels: see
    :mod:`napari_cuts.io.dicom_seg`), or a folder of PNG/TIFF pictures as a stack.

    A 4D NIfTI with at most 8 volumes and no time unit is a multi-sequence image
    ``(Z, Y, X, C)`` (``metadata["sequences"]``); ``sequences=True`` / ``False``
    overrides the guess (sequences / a time series: its first volume).

    Raises :class:`ReadError` (and nothing else) naming the file and what to do.
    """
    return _read(path, all_series=False, sequences=sequences)[0]


def read_all(path, *, sequences: bool | None = None) -> list[ImageData]:
    """Every series in a DICOM folder (images, largest first, then its SEGs), one
    labels image per segment for a DICOM SEG whose segments overlap, and a
    one-element list otherwise."""
    return _read(path, all_series=True, sequences=sequences)


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def _read_dicom_file(p, all_layers: bool) -> list[ImageData]:
    """A DICOM file: an image or a multi-frame volume, or a DICOM SEG (as labels; one
    labels image per segment with ``all_layers`` when its segments overlap)."""
    ds = dcmread(p, header_only=False)
    if is_seg(ds):
        return read_seg(p, ds, all_layers=all_layers)
    return read_dicom_file(p, ds)


def _read_dicom_folder(folder, all_series: bool) -> list[ImageData]:
    """A DICOM folder: its image series, then the DICOM SEGs it holds that are to be
    read (:func:`~napari_cuts.io.dicom.read_dicom_folder`)."""
    images, segs = read_dicom_folder(folder, all_series=all_series)
    for seg in segs:
        images.extend(read_seg(seg, None, all_layers=all_series))
    return images


def _read(path, *, all_series: bool, sequences: bool | None = None) -> list[ImageData]:
    p = as_path(path)
    try:
        if not p.exists():
            raise ReadError(f"{p}: no such file or folder. Check the path and its spelling.")
        if p.is_dir():
            if p.name.lower().endswith(SUPPORTED_EXTENSIONS):
                raise ReadError(f"{p} is a folder, not a file. Give the image file inside it.")
            if _is_session(p):
                raise ReadError(
                    f"{p} is a napari-cuts session (or segment output) folder, not an image: "
                    "open it in napari (File > Open Folder) to get the image, levels and "
                    "objects back, or give the image it was made on.")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if looks_like_dicom_folder(p) or not stack_files(p):
                    return _read_dicom_folder(p, all_series)
                return [read_stack(p)]
        ext = extension(p)
        fmt = FORMAT.get(ext)
        if fmt is None:
            if has_dicm_magic(p):
                fmt = "dicom"
            else:
                raise ReadError(
                    f"{p}: unsupported file type {ext or '(no extension)'!r}. "
                    f"Convert it to one of {supported_list()}."
                )
        if p.stat().st_size == 0:
            raise ReadError(f"{p} is empty (0 bytes). Re-export or re-copy the file.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "nifti":
                return [read_nifti(p, sequences=sequences)]
            if fmt == "dicom":
                return _read_dicom_file(p, all_series)
            return [read_one(p, fmt)]
    except CutsError:
        raise
    except Exception as exc:  # noqa: BLE001 - wrap every library failure
        kind = FORMAT.get(extension(p), "image")
        raise ReadError(
            f"{p}: could not read this {kind} file ({type(exc).__name__}: "
            f"{_one_line(exc)}). It may be corrupt, truncated or not really a "
            f"{kind} file; re-export or re-copy it."
        ) from exc
