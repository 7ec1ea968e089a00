"""NIfTI-1/2 ``.nii`` / ``.nii.gz``: reading, and the bytes of a label map on a grid."""

from __future__ import annotations

import gzip
import logging
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import ReadError
from ._base import ImageData, check_size, clean_float, extension, native, spacing_of, valid_affine

NIFTI_GEOMETRY_FIELDS = (
    "pixdim", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
    "qoffset_z", "srow_x", "srow_y", "srow_z", "qform_code", "sform_code", "xyzt_units",
)


#: A 4D NIfTI with at most this many volumes and no time unit is read as sequences.
MAX_SEQUENCES = 8
#: The time part of the header's ``xyzt_units`` (NIfTI-1: sec 8, msec 16, usec 24, ...).
TIME_UNIT_BITS = 0x38


def _text(hdr, key: str) -> str:
    try:
        return bytes(hdr[key]).split(b"\x00")[0].decode("ascii", "replace").strip()
    except (KeyError, TypeError, ValueError):
        return ""


def sequence_names(hdr, n: int) -> list[str]:
    """Names of the ``n`` volumes of a multi-sequence NIfTI: ``descrip`` or
    ``intent_name`` when it lists exactly ``n`` names (separated by ``;``, ``,``, ``|``
    or spaces), else ``"sequence 1"`` .. ``"sequence n"``."""
    import re

    for key in ("descrip", "intent_name"):
        text = _text(hdr, key)
        if not text:
            continue
        for sep in (r"[;,|]", r"\s+"):
            parts = [t.strip() for t in re.split(sep, text) if t.strip()]
            if len(parts) == n and len(set(parts)) == n:
                return parts
    return [f"sequence {i + 1}" for i in range(n)]


def _four_d_mode(p: Path, hdr, shape, sequences) -> tuple[bool, str]:
    """Whether a 4D+ NIfTI reads as sequences, and (if not) why, for the note.

    ``sequences``: ``None`` guesses (4D, at most 8 volumes, no time unit), ``True``
    forces sequences, ``False`` a time series (the first volume)."""
    time_bits = int(hdr["xyzt_units"]) & TIME_UNIT_BITS
    n = int(shape[3])
    if sequences is False:
        return False, " (read as a time series, as asked)"
    if sequences is True:
        if len(shape) != 4 or not 1 <= n <= MAX_SEQUENCES:
            raise ReadError(
                f"{p}: shape {shape} cannot be read as sequences: that needs a 4D image with "
                f"at most {MAX_SEQUENCES} volumes on its fourth axis. Read it as a time "
                "series (--time-series) or split it into files.")
        return True, ""
    if len(shape) != 4 or n < 2:
        return False, ""
    if time_bits:
        return False, (" (a time series: its header has a time unit; --sequences reads "
                       "its volumes as sequences)")
    if n > MAX_SEQUENCES:
        return False, (f" (a time series: more than {MAX_SEQUENCES} volumes; --sequences "
                       "reads them as sequences)")
    return True, ""


def read_nifti(p: Path, *, sequences: bool | None = None) -> ImageData:
    """Read a NIfTI file. A 4D file with at most 8 volumes and no time unit (or any 4D
    file with ``sequences=True``) is a multi-sequence image: ``data`` ``(Z, Y, X, C)``,
    ``metadata["sequences"]`` the names; otherwise (a time series, or
    ``sequences=False``) its first volume, with a note."""
    import nibabel as nib
    from nibabel.imageglobals import logger as nib_logger

    notes: list[str] = []
    gz = extension(p) == ".nii.gz"
    if gz:
        with open(p, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                raise ReadError(
                    f"{p}: not a gzip file although it ends in .nii.gz. Rename it to "
                    ".nii if it is uncompressed, or re-export it."
                )
    level = nib_logger.level
    nib_logger.setLevel(logging.CRITICAL + 1)  # nibabel logs each header fix-up it makes
    try:
        img = nib.load(str(p))
    finally:
        nib_logger.setLevel(level)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ReadError(f"{p}: not a NIfTI-1/2 image ({type(img).__name__}).")
    hdr = img.header
    shape = tuple(int(s) for s in img.shape)
    dtype = hdr.get_data_dtype()
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ReadError(f"{p}: NIfTI image of shape {shape}; need at least 2 dimensions.")
    nbytes = float(np.prod(shape, dtype=float)) * dtype.itemsize
    check_size(nbytes, p, "an array")
    offset = int(hdr.get_data_offset())
    size = p.stat().st_size
    if not gz and size < offset + nbytes:
        raise ReadError(
            f"{p}: file is truncated ({size} bytes, the header needs {offset + int(nbytes)}). "
            "Re-copy or re-export it."
        )
    if gz and offset + nbytes < 2**32 and size >= 4:
        with open(p, "rb") as f:
            f.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", f.read(4))
        if isize < offset + nbytes:
            raise ReadError(
                f"{p}: file is truncated or corrupt (it holds less data than its header "
                "describes). Re-copy or re-export it."
            )
    if dtype.kind == "c":
        raise ReadError(f"{p}: complex-valued NIfTI; export the magnitude image instead.")
    names = None
    if len(shape) > 3:
        as_seq, why = _four_d_mode(p, hdr, shape, sequences)
        if as_seq:
            vox = np.asarray(img.dataobj[...])
            names = sequence_names(hdr, shape[3])
        else:
            extra = shape[3:]
            if int(np.prod(extra)) > 1:
                notes.append(
                    f"{len(shape)}D image of shape {shape}: using the first volume "
                    f"({shape[0]}x{shape[1]}x{shape[2]}){why}."
                )
            vox = img.dataobj[(slice(None),) * 3 + (0,) * (len(shape) - 3)]
    else:
        vox = img.dataobj[...]
    vox = np.asarray(vox)
    if vox.dtype.names:  # RGB24 / RGBA32
        vox = np.stack([vox[n] for n in vox.dtype.names[:3]], axis=-1)
    vox = native(vox)
    rgb = vox.dtype.kind == "u" and vox.ndim >= 3 and hdr.get_data_dtype().names is not None
    if names is not None:
        # (X, Y, Z, C) -> (Z, Y, X, C); one slice (X, Y, 1, C) -> (Y, X, C)
        if vox.shape[2] == 1:
            data = np.ascontiguousarray(vox[:, :, 0].transpose(1, 0, 2))
        else:
            data = np.ascontiguousarray(vox.transpose(2, 1, 0, 3))
    elif rgb:
        vox = vox[:, :, 0] if vox.ndim == 4 and vox.shape[2] == 1 else vox
        if vox.ndim != 3:
            raise ReadError(f"{p}: RGB NIfTI volumes are not supported; give one RGB slice.")
        data = np.ascontiguousarray(np.transpose(vox, (1, 0, 2)))
    elif vox.ndim == 2:
        data = np.ascontiguousarray(vox.T)
    elif vox.shape[2] == 1:
        data = np.ascontiguousarray(vox[:, :, 0].T)
    else:
        data = np.ascontiguousarray(vox.transpose(2, 1, 0))
    if data.dtype == bool:
        data = data.astype(np.uint8)
    nifti_affine = np.asarray(img.affine, dtype=float)
    if not valid_affine(nifti_affine):
        zooms = [abs(clean_float(z) or 1.0) or 1.0 for z in (list(hdr.get_zooms()) + [1, 1, 1])[:3]]
        nifti_affine = np.diag(zooms + [1.0])
        notes.append(
            f"{p.name}: the header's affine is missing or invalid; using the voxel sizes "
            f"{tuple(zooms)} mm without orientation."
        )
    affine = nifti_affine[:, [2, 1, 0, 3]]
    n_sp = data.ndim - (1 if rgb or names is not None else 0)
    geometry = {}
    for key in NIFTI_GEOMETRY_FIELDS:
        v = np.asarray(hdr[key])
        geometry[key] = v.tolist() if v.ndim else v.item()
    geometry["shape"] = list(shape[:3])
    meta = {
        "nifti_affine": np.asarray(img.affine, float).tolist(),
        "qform_code": int(hdr["qform_code"]),
        "sform_code": int(hdr["sform_code"]),
        "nifti_header": geometry,
        "nifti_dtype": str(dtype),
        "descrip": bytes(hdr["descrip"]).split(b"\x00")[0].decode("ascii", "replace"),
    }
    if names is not None:
        meta["sequences"] = names
        meta["sources"] = [str(p)]
    return ImageData(
        data=data, affine=affine, spacing=spacing_of(affine, n_sp), rgb=bool(rgb),
        source=str(p), format="nifti", metadata=meta, notes=notes,
    )


def nifti_bytes(
    arr: np.ndarray, affine: np.ndarray, geometry: dict | None, descrip: bytes,
    gz: bool, code: int,
) -> bytes:
    """A label map ``(Y, X)`` / ``(Z, Y, X)`` as NIfTI-1 bytes: the inverse of the
    reader; ``geometry`` (a NIfTI source's raw header fields) wins over ``affine``."""
    import nibabel as nib

    vox = arr.T  # (Y, X) -> (X, Y); (Z, Y, X) -> (X, Y, Z): the inverse of the reader
    hdr = nib.Nifti1Header()
    if geometry is not None:
        shape = tuple(int(s) for s in geometry.get("shape", vox.shape))
        if shape != vox.shape and int(np.prod(shape)) == vox.size:
            vox = vox.reshape(shape)
        for key in NIFTI_GEOMETRY_FIELDS:
            if key in geometry:
                hdr[key] = np.asarray(geometry[key], dtype=hdr[key].dtype)
    else:
        nii_affine = affine[:, [2, 1, 0, 3]]
        hdr.set_qform(nii_affine, code=code)
        hdr.set_sform(nii_affine, code=code)
        hdr.set_xyzt_units("mm")
    hdr.set_data_dtype(vox.dtype)
    hdr.set_data_shape(vox.shape)
    hdr["descrip"] = descrip
    img = nib.Nifti1Image(np.ascontiguousarray(vox), None, header=hdr)
    payload = img.to_bytes()
    return gzip.compress(payload, compresslevel=6, mtime=0) if gz else payload
