"""Several co-registered images (MRI sequences: T1, T2, FLAIR ...) as ONE input.

:func:`stack_sequences` checks that the images share one grid (shape, and affine within
:data:`AFFINE_TOLERANCE_MM` at every corner of the grid) and stacks them on a last,
channel axis: ``(Z, Y, X, C)`` for volumes, ``(Y, X, C)`` for 2D slices, with the
channel names in ``metadata["sequences"]`` and the first image's geometry (which is the
shared one). The encoder then trains on all channels (each normalised on its own) and
there is one hierarchy. :func:`read_sequences` reads paths and stacks them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .io import ImageData

#: Two grids are the same when every corner of the grid lies within this many mm.
AFFINE_TOLERANCE_MM = 0.01
#: At most this many sequences (the volume code takes at most 8 channels).
MAX_SEQUENCES = 8


def _label(image: ImageData) -> str:
    return Path(image.source).name or image.name


def _describe(image: ImageData) -> str:
    shape = " x ".join(str(s) for s in image.spatial_shape)
    spacing = " x ".join(f"{float(s):g}" for s in image.spacing)
    return f"{_label(image)} (shape {shape}, spacing {spacing} mm)"


def _corners(shape) -> np.ndarray:
    """The corner indices ``(2**n, 4)`` of a grid as homogeneous ``(z, y, x, 1)``."""
    shape = tuple(shape)
    if len(shape) == 2:
        shape = (1,) + shape
    axes = [(0.0, float(max(s - 1, 0))) for s in shape]
    pts = np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).T
    return np.hstack([pts, np.ones((len(pts), 1))])


def affine_distance_mm(a, b, shape) -> float:
    """The largest distance (mm) between where two affines put a corner of ``shape``."""
    c = _corners(shape)
    wa = c @ np.asarray(a, float).T
    wb = c @ np.asarray(b, float).T
    return float(np.max(np.linalg.norm(wa[:, :3] - wb[:, :3], axis=1)))


def _channels(image: ImageData) -> list[tuple[str, np.ndarray]]:
    """``[(name, array (Z, Y, X) or (Y, X))]`` of one image (several for a 4D one)."""
    data = np.asarray(image.data)
    if image.sequences:
        return [(name, data[..., i]) for i, name in enumerate(image.sequences)]
    return [(image.name, data)]


def _check_one(image: ImageData) -> None:
    if image.is_labels:
        raise InputError(f"{_label(image)} is a label map (a segmentation), not an image "
                         "sequence; give the images only.")
    if image.rgb:
        raise InputError(f"{_label(image)} is an RGB picture; sequences must be grey "
                         "images (one channel each).")
    if image.ndim_spatial not in (2, 3):
        raise InputError(f"{_describe(image)} is neither a 2D slice nor a volume.")


def stack_sequences(images: list[ImageData]) -> ImageData:
    """One multi-sequence :class:`ImageData` from co-registered images on one grid.

    ``images``: two or more grey images (2D ``(Y, X)`` or volumes ``(Z, Y, X)``; a
    multi-sequence image brings all its channels). Returns ``data`` ``(Z, Y, X, C)``
    (``(Y, X, C)`` for 2D) float32, ``metadata["sequences"]`` the channel names (file
    stems, made unique), ``metadata["sources"]`` the paths, and the first image's
    geometry (affine, spacing, NIfTI/DICOM header metadata), so masks written
    ``like=`` it land on the shared grid.

    Raises :class:`InputError` naming both files (shapes and spacings) when the grids
    differ in shape or their affines differ by more than 0.01 mm anywhere on the grid,
    and naming the sequence when one is constant or all NaN.
    """
    images = list(images)
    if not images:
        raise InputError("no images given; give one file per sequence.")
    for im in images:
        _check_one(im)
    ref = images[0]
    for im in images[1:]:
        if im.spatial_shape != ref.spatial_shape:
            raise InputError(
                f"{_describe(ref)} and {_describe(im)} are not on one grid (their shapes "
                "differ); resample the sequences to one grid (e.g. register them to the "
                "first with ANTs, FSL FLIRT or 3D Slicer) and try again.")
        if (ref.affine is None) != (im.affine is None):
            raise InputError(
                f"{_describe(ref)} and {_describe(im)}: only one of them has a position in "
                "space (an affine); give sequences of one format, resampled to one grid.")
        if ref.affine is not None:
            d = affine_distance_mm(ref.affine, im.affine, ref.spatial_shape)
            if d > AFFINE_TOLERANCE_MM:
                raise InputError(
                    f"{_describe(ref)} and {_describe(im)} are not on one grid (their "
                    f"affines place the grid up to {d:.3g} mm apart, more than "
                    f"{AFFINE_TOLERANCE_MM} mm); resample the sequences to one grid (e.g. "
                    "register them to the first with ANTs, FSL FLIRT or 3D Slicer) and try "
                    "again.")
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for im in images:
        for name, arr in _channels(im):
            base, k = name, 2
            while name in names:
                name, k = f"{base} ({k})", k + 1
            a = np.asarray(arr, dtype=np.float32)
            finite = np.isfinite(a)
            where = f"sequence {name!r} ({_label(im)})"
            if not finite.any():
                raise InputError(f"{where} is all NaN (or infinite); nothing can be read from "
                                 "it. Leave it out or re-export it.")
            vals = a[finite]
            if float(vals.max()) == float(vals.min()):
                raise InputError(f"{where} is constant (every voxel is {float(vals[0]):g}); "
                                 "it shows nothing. Leave it out or re-export it.")
            names.append(name)
            arrays.append(a)
    if len(arrays) > MAX_SEQUENCES:
        raise InputError(f"{len(arrays)} sequences ({', '.join(names)}); at most "
                         f"{MAX_SEQUENCES} can be segmented together.")
    data = np.ascontiguousarray(np.stack(arrays, axis=-1))
    meta = dict(ref.metadata)
    meta.pop("name", None)
    meta["sequences"] = names
    meta["sources"] = [str(im.source) for im in images]
    notes = [n for im in images for n in im.notes]
    return ImageData(data=data, affine=None if ref.affine is None else np.array(ref.affine),
                     spacing=tuple(ref.spacing), rgb=False, source=ref.source,
                     format=ref.format, metadata=meta, notes=notes)


def read_sequences(paths, *, sequences=None) -> ImageData:
    """Read every path (:func:`napari_cuts.io.read_image`) and stack them
    (:func:`stack_sequences`); ``sequences`` is passed to the reader (4D NIfTI)."""
    from .io import read_image

    return stack_sequences([read_image(p, sequences=sequences) for p in paths])


__all__ = ["stack_sequences", "read_sequences", "affine_distance_mm", "AFFINE_TOLERANCE_MM"]
