"""Writing masks and label maps: NIfTI (with the source geometry), PNG, and DICOM
SEG (``.dcm``, on a DICOM source); atomically, with the umask's permissions."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import numpy as np

from ..errors import InputError, WriteError
from ..fileutil import jsonable, write_bytes
from ._base import (
    WRITE_EXTENSIONS, ImageData, affine_from_spacing, extension, label_colours, spacing_of,
    stem, valid_affine,
)
from .nifti import nifti_bytes


def as_labels(arr, name: str) -> tuple[np.ndarray, bool]:
    """Validate a mask or label map; return (smallest unsigned array, is_binary)."""
    a = np.asarray(arr)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise InputError(f"{name} has dtype {a.dtype}; give a bool or integer label array.")
    if a.size == 0:
        raise InputError(f"{name} is empty (shape {a.shape}).")
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim not in (2, 3):
        raise InputError(f"{name} has shape {a.shape}; give (H, W) or (Z, Y, X) labels.")
    if a.dtype == bool:
        return a.astype(np.uint8), True
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise InputError(f"{name} contains NaN or infinite values; give integer labels.")
        if not np.all(a == np.round(a)):
            raise InputError(
                f"{name} has non-integer values; threshold it (mask > 0.5) or round it first."
            )
    lo, hi = float(a.min()), float(a.max())
    if lo < 0:
        raise InputError(f"{name} has negative values ({lo:g}); labels must be >= 0.")
    for dt in (np.uint8, np.uint16, np.uint32):
        if hi <= np.iinfo(dt).max:
            return a.astype(dt), hi <= 1
    raise InputError(f"{name} has label values up to {hi:g}; at most 2**32 - 1 are supported.")


def writer_ext(path: Path) -> str:
    ext = extension(path)
    if ext not in WRITE_EXTENSIONS:
        raise WriteError(
            f"{path}: cannot write {ext or 'a file without extension'!r}; use one of "
            f"{', '.join(WRITE_EXTENSIONS)} (.dcm: a DICOM SEG, for a DICOM source)."
        )
    return ext


def atomic_write(path: Path, payload: bytes) -> None:
    """Write bytes to ``path`` through a temporary file in the same folder."""
    parent = path.parent
    if path.is_dir():
        raise WriteError(f"{path} is a folder; give a file name to write to.")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(
            f"Cannot write {path}: cannot create the folder {parent} "
            f"({exc.strerror or exc}). Choose a writable folder."
        ) from exc
    write_bytes(path, payload)


def _descrip(provenance: dict | None) -> bytes:
    from .. import __version__

    parts = [f"napari-cuts {__version__}"]
    for key in ("method", "level", "seed"):
        if provenance and key in provenance:
            parts.append(f"{key}={provenance[key]}")
    return " ".join(parts).encode("ascii", "replace")[:80]


def png_bytes(arr: np.ndarray, *, binary: bool, colour: bool, name: str) -> bytes:
    import imageio.v3 as iio

    a = arr
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise InputError(
            f"{name} has shape {arr.shape}; PNG holds 2D images only. Write volumes "
            "as .nii.gz."
        )
    if binary:
        out = (a > 0).astype(np.uint8) * 255
    elif colour:
        out = label_colours(int(a.max()))[a]
    else:
        if a.max() > 65535:
            raise InputError(
                f"{name} has more than 65535 labels; a PNG holds 16 bits. Write .nii.gz."
            )
        out = a.astype(np.uint8 if a.max() <= 255 else np.uint16)
    return iio.imwrite("<bytes>", out, extension=".png")


def _sidecar(p: Path, like, provenance: dict | None, kind: str, shape, dtype) -> bytes | None:
    if provenance is None:
        return None
    from .. import __version__

    record = {
        "napari_cuts_version": __version__,
        "file": p.name,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "kind": kind,
        "shape": list(shape),
        "dtype": str(dtype),
    }
    if like is not None:
        record["source"] = like.source
    record.update(provenance)
    try:
        return json.dumps(record, indent=2, default=jsonable).encode()
    except (TypeError, ValueError) as exc:
        raise InputError(f"provenance cannot be saved as JSON: {exc}") from exc


def _nifti_geometry(labels, *, like, affine, spacing, kind):
    geometry = None
    code = 2
    if affine is not None:
        aff = np.asarray(affine, dtype=float)
        if aff.shape != (4, 4) or not valid_affine(aff):
            raise InputError(f"affine must be a valid 4x4 matrix; got {aff.shape}.")
        if like is not None and like.affine is not None and np.array_equal(aff, like.affine):
            geometry = like.metadata.get("nifti_header")
    elif like is not None:
        _check_like_shape(labels, like, kind)
        if like.affine is not None:
            aff = np.asarray(like.affine, dtype=float)
            geometry = like.metadata.get("nifti_header")
            if like.format in ("dicom", "dicom_seg"):
                code = 1
        else:
            aff = affine_from_spacing(like.spacing, labels.ndim)
    elif spacing is not None:
        aff = affine_from_spacing(spacing, labels.ndim)
    else:
        aff = affine_from_spacing((1.0,) * labels.ndim, labels.ndim)
    if geometry is not None and labels.shape != like.spatial_shape:
        geometry = None
    return aff, geometry, code


def _check_like_shape(labels, like, kind):
    if labels.shape != like.spatial_shape:
        raise InputError(
            f"{kind} shape {labels.shape} does not match the source image "
            f"{like.spatial_shape} ({like.source}); give a {kind} on the same grid "
            "or pass affine= for its own grid."
        )


def _write(path, arr, *, like, affine, spacing, provenance, kind: str, colour: bool,
           name: str | None = None, algorithm_type: str | None = None,
           names: dict | None = None) -> Path:
    p = Path(os.fspath(path)).expanduser()
    ext = writer_ext(p)
    labels, binary = as_labels(arr, kind)
    if kind == "labels":
        # a label map keeps its ids (a map holding only id 1 is not a 0/255 mask)
        binary = False
    sidecar = _sidecar(p, like, provenance, "mask" if binary else "labels", labels.shape,
                       labels.dtype)
    if ext == ".dcm":
        from .dicom_seg import write_seg

        if binary:
            masks, seg_names = [labels > 0], [name or "CUTS mask"]
            default_type = "SEMIAUTOMATIC"
        else:
            ids = [int(v) for v in np.unique(labels) if v != 0]
            if not ids:
                raise InputError(f"{kind} has no non-zero label to write as a DICOM SEG segment.")
            masks = [labels == i for i in ids]
            seg_names = [str((names or {}).get(i) or f"{name or 'CUTS label'} {i}") for i in ids]
            default_type = "AUTOMATIC" if kind == "labels" else "SEMIAUTOMATIC"
        write_seg(p, masks, seg_names, like=like, algorithm_type=algorithm_type or default_type,
                  what=kind)
    elif ext == ".png":
        atomic_write(p, png_bytes(labels, binary=binary, colour=colour, name=kind))
    else:
        aff, geometry, code = _nifti_geometry(labels, like=like, affine=affine, spacing=spacing,
                                              kind=kind)
        atomic_write(p, nifti_bytes(labels, aff, geometry, _descrip(provenance),
                                    ext == ".nii.gz", code))
    if sidecar is not None:
        atomic_write(p.with_name(stem(p) + ".json"), sidecar)
    return p


def write_mask(
    path, mask, *, like: ImageData | None = None, affine=None, spacing=None,
    provenance: dict | None = None, name: str | None = None,
    algorithm_type: str = "SEMIAUTOMATIC",
) -> Path:
    """Write a binary mask (or a label map) to ``.nii`` / ``.nii.gz`` / ``.png`` /
    ``.dcm``.

    ``mask``: ``(H, W)`` or ``(Z, Y, X)``, bool / 0-1 (-> uint8) or integer labels
    (-> the smallest of uint8 / uint16 / uint32). NIfTI geometry, first found of:
    ``affine`` (4x4, array index -> RAS mm, the convention of this module), ``like``
    (the source image: its affine, and for a NIfTI source its exact qform/sform),
    ``spacing`` (mm per array axis), else 1 mm. PNG: 0/255 uint8 for a binary mask,
    colour-coded RGB for labels. ``.dcm``: a DICOM SEG (BINARY) referencing the
    DICOM series ``like`` was read from, one segment labelled ``name`` ("CUTS
    mask"), of ``algorithm_type`` (SEMIAUTOMATIC: a click; AUTOMATIC; MANUAL);
    without a DICOM ``like`` a :class:`WriteError` suggests ``.nii.gz``.
    ``provenance``: also writes ``<name>.json`` beside the file (version, time,
    source, and the dict's items) and a short NIfTI ``descrip``. Atomic; raises
    :class:`WriteError` naming the path, or :class:`InputError` for an unsuitable
    array.
    """
    return _write(path, mask, like=like, affine=affine, spacing=spacing,
                  provenance=provenance, kind="mask", colour=True, name=name,
                  algorithm_type=algorithm_type)


def write_labels(
    path, labels, *, like: ImageData | None = None, affine=None, spacing=None,
    provenance: dict | None = None, colour: bool = True, names: dict | None = None,
    algorithm_type: str = "AUTOMATIC",
) -> Path:
    """Write a label map like :func:`write_mask`; a PNG is colour-coded RGB, or with
    ``colour=False`` the raw ids as 8- or 16-bit grey. ``.dcm``: a DICOM SEG with
    one segment per non-zero id (segment numbers 1..n in id order), labelled
    ``names[id]`` or "CUTS label <id>", of ``algorithm_type`` (AUTOMATIC)."""
    return _write(path, labels, like=like, affine=affine, spacing=spacing,
                  provenance=provenance, kind="labels", colour=colour, names=names,
                  algorithm_type=algorithm_type)


def write_segments(
    path, masks, names, *, like: ImageData | None, algorithm_type: str = "SEMIAUTOMATIC",
    provenance: dict | None = None,
) -> Path:
    """Several masks (``(Z, Y, X)`` or ``(Y, X)`` bool, on ``like``'s grid; they may
    overlap) as one file. ``.dcm``: one DICOM SEG, segment ``i + 1`` = ``masks[i]``
    labelled ``names[i]`` (overlaps kept). NIfTI / PNG hold one value per voxel: a
    label map, mask ``i`` -> value ``i + 1``, later masks painted over earlier ones
    where they overlap (:class:`InputError` if that would hide a whole mask)."""
    p = Path(os.fspath(path)).expanduser()
    ext = writer_ext(p)
    masks = [as_labels(m, f"mask {names[i] if i < len(names) else i}")[0] > 0
             for i, m in enumerate(masks)]
    if not masks or len(names) != len(masks):
        raise InputError(f"give one name per mask ({len(masks)} mask(s), {len(names)} name(s)).")
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise InputError(f"the masks have different shapes {sorted(shapes)}; give masks on one grid.")
    if ext == ".dcm":
        from .dicom_seg import write_seg

        sidecar = _sidecar(p, like, provenance, "segments", masks[0].shape, "bool")
        write_seg(p, masks, names, like=like, algorithm_type=algorithm_type, what="mask")
        if sidecar is not None:
            atomic_write(p.with_name(stem(p) + ".json"), sidecar)
        return p
    labels = np.zeros(masks[0].shape, np.uint16 if len(masks) > 255 else np.uint8)
    for i, m in enumerate(masks):
        labels[m] = i + 1
    hidden = [names[i] for i, m in enumerate(masks) if m.any() and not np.any(labels == i + 1)]
    if hidden:
        raise InputError(f"{', '.join(map(str, hidden))} would be hidden entirely by later masks "
                         f"in {p.name}: {ext} holds one label per voxel. Save as .dcm (DICOM "
                         "SEG keeps overlaps) or as one file per mask.")
    return _write(p, labels, like=like, affine=None, spacing=None, provenance=provenance,
                  kind="labels", colour=True)


def like_from_metadata(metadata: dict | None, shape) -> ImageData | None:
    """Rebuild a geometry-only :class:`ImageData` from napari layer metadata (as
    written by :meth:`ImageData.layer_kwargs`), for writers; None if it has no
    affine. A layer read from DICOM keeps ``dicom_files`` / ``sop_instance_uids`` in
    its metadata, so the result can be ``like=`` of a DICOM SEG export (the source
    headers are read again from those files when the SEG is written)."""
    if not isinstance(metadata, dict) or metadata.get("affine") is None:
        return None
    aff = np.asarray(metadata["affine"], dtype=float)
    if aff.shape != (4, 4) or not valid_affine(aff):
        return None
    shape = tuple(int(s) for s in shape)
    data = np.broadcast_to(np.zeros((), np.uint8), shape)
    spacing = spacing_of(aff, len(shape))
    if len(shape) == 2 and metadata.get("format") == "dicom" and metadata.get("pixel_spacing"):
        spacing = tuple(float(v) for v in metadata["pixel_spacing"])
    return ImageData(
        data=data, affine=aff, spacing=spacing, rgb=False,
        source=str(metadata.get("source", "")), format=str(metadata.get("format", "")),
        metadata=dict(metadata),
    )
