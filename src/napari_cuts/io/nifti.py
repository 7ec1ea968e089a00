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


def read_nifti(p: Path) -> ImageData:
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
    if len(shape) > 3:
        extra = shape[3:]
        if int(np.prod(extra)) > 1:
            notes.append(
                f"{len(shape)}D image of shape {shape}: using the first volume "
                f"({shape[0]}x{shape[1]}x{shape[2]})."
            )
        vox = img.dataobj[(slice(None),) * 3 + (0,) * (len(shape) - 3)]
    else:
        vox = img.dataobj[...]
    vox = np.asarray(vox)
    if vox.dtype.names:  # RGB24 / RGBA32
        vox = np.stack([vox[n] for n in vox.dtype.names[:3]], axis=-1)
    vox = native(vox)
    rgb = vox.dtype.kind == "u" and vox.ndim >= 3 and hdr.get_data_dtype().names is not None
    if rgb:
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
    n_sp = data.ndim - (1 if rgb else 0)
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
