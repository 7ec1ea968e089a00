"""What every format module shares: :class:`ImageData`, path and size checks, the
label colour table, and the geometry helpers of the axis convention below.

Axis and affine convention
--------------------------
Every array the readers return is indexed like napari shows it:

* pictures: ``(H, W)`` or ``(H, W, 3)`` RGB, ``affine`` is ``None``, spacing 1.0;
  a folder of pictures: ``(N, H, W)`` or ``(N, H, W, 3)``;
* volumes: ``(Z, Y, X)``; 2D medical slices ``(Y, X)``.

``ImageData.affine`` is a 4x4 matrix that maps the *array* index ``(z, y, x, 1)``
to world coordinates ``(x, y, z, 1)`` in millimetres in **RAS+** (the NIfTI /
nibabel world: +x right, +y anterior, +z superior). For a 2D array ``(Y, X)`` the
index is ``(0, y, x, 1)``: a 2D image is one slice at z = 0.

For NIfTI the array is the nibabel voxel array transposed, ``data = vox.T``
(voxel ``(i, j, k)`` -> array ``(k, j, i)``), and the affine is the header affine
with its first three columns reversed: ``affine = nifti_affine[:, [2, 1, 0, 3]]``.
The NIfTI writer applies exactly the inverse (transpose back, reverse the columns
back), and when given ``like=`` a NIfTI source it copies the source's raw qform /
sform fields, so a mask written on the source's grid has bit-identical header
geometry and overlays exactly in ITK-SNAP, 3D Slicer or nibabel.

For DICOM (images and DICOM SEG alike) the array is ``(slice, row, column)`` with
slices sorted along the slice normal (``ImageOrientationPatient`` row x column
direction) by the projection of ``ImagePositionPatient``. The LPS affine of DICOM
PS3.3 C.7.6.2.1.1 is built with columns ``(slice step, row step = PixelSpacing[0] *
column direction cosines, column step = PixelSpacing[1] * row direction cosines)``
and origin the first slice's position, then converted to RAS by negating the first
two world rows (``diag(-1, -1, 1, 1) @ lps``), as nibabel and dicom2nifti do.
Transposed to ``(column, row, slice)`` this is dicom2nifti's NIfTI grid.

``ImageData.spacing`` is the norm of the affine's column for each spatial array
axis, and ``layer_kwargs()`` gives napari ``scale = spacing`` and
``translate = R.T @ origin`` (R: the unit column directions), which is exact for
axis-aligned data and a rigid rotation of world for oblique data; the full affine
is in the layer metadata (``metadata["affine"]``) for exporters.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, ReadError

#: File name endings the readers take (lower case; DICOM and picture folders too).
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".nii.gz", ".nii", ".dcm", ".dicom", ".ima", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
)
#: File name endings the writers take (``.dcm``: DICOM SEG, needs a DICOM source).
WRITE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".png", ".dcm")

FORMAT = {
    ".nii.gz": "nifti", ".nii": "nifti", ".dcm": "dicom", ".dicom": "dicom",
    ".ima": "dicom", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
    ".tif": "tiff", ".tiff": "tiff",
}
DICOM_EXTS = (".dcm", ".dicom", ".ima")
#: Picture files that a folder may hold to open as a stack.
STACK_EXTS = (".png", ".tif", ".tiff")
#: Refuse to decode anything bigger than this (a corrupt header can claim terabytes).
MAX_ARRAY_BYTES = 8 * 1024**3
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class ImageData:
    """An image (or a label map) read from disk, with its geometry.

    ``data``: ``(H, W)``, ``(H, W, 3)`` RGB, ``(N, H, W[, 3])`` picture stack, or
    ``(Z, Y, X)`` volume. ``affine``: 4x4, array index ``(z, y, x, 1)`` (``(0, y, x,
    1)`` for 2D) -> world RAS mm; ``None`` for plain pictures. ``spacing``: mm per
    spatial array axis. ``kind``: ``"image"``, or ``"labels"`` for a segmentation
    (a DICOM SEG): integer ids, 0 = background, shown as a napari Labels layer.
    """

    data: np.ndarray
    affine: np.ndarray | None
    spacing: tuple[float, ...]
    rgb: bool
    source: str
    format: str
    metadata: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    kind: str = "image"

    @property
    def sequences(self) -> list[str] | None:
        """The channel names of a multi-sequence image (``data`` ``(Z, Y, X, C)`` or
        ``(Y, X, C)``, one co-registered MRI sequence per channel), else ``None``."""
        seq = self.metadata.get("sequences")
        return list(seq) if seq else None

    @property
    def ndim_spatial(self) -> int:
        """2 for pictures and slices, 3 for volumes and stacks (the last axis of an RGB
        picture or of a multi-sequence image is not spatial)."""
        return self.data.ndim - (1 if self.rgb or self.sequences else 0)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape[: self.ndim_spatial])

    @property
    def name(self) -> str:
        return self.metadata.get("name") or stem(Path(self.source))

    @property
    def is_labels(self) -> bool:
        return self.kind == "labels"

    @property
    def layer_type(self) -> str:
        """The napari layer type: ``"image"`` or ``"labels"``."""
        return "labels" if self.is_labels else "image"

    def layer_kwargs(self) -> dict:
        """napari layer keyword arguments: name, scale, translate, metadata (and rgb
        for an Image layer; a Labels layer takes no ``rgb``).

        ``metadata`` holds this image's ``metadata`` plus ``affine`` (4x4 list or
        None), ``source``, ``format``, ``spacing``, ``shape``, ``notes`` and ``kind``.
        """
        n = self.ndim_spatial
        if self.affine is None:
            scale = tuple(float(s) for s in self.spacing)
            translate = tuple(0.0 for _ in range(n))
        else:
            axes = [0, 1, 2][-n:]
            cols = self.affine[:3, axes]
            norms = np.linalg.norm(cols, axis=0)
            norms[norms == 0] = 1.0
            rot = cols / norms
            scale = tuple(float(s) for s in self.spacing)
            translate = tuple(float(t) for t in rot.T @ self.affine[:3, 3])
        meta = dict(self.metadata)
        meta.update(
            affine=None if self.affine is None else np.asarray(self.affine, float).tolist(),
            source=self.source,
            format=self.format,
            spacing=[float(s) for s in self.spacing],
            shape=[int(s) for s in self.data.shape],
            notes=list(self.notes),
            kind=self.kind,
        )
        kw = {"name": self.name, "scale": scale, "translate": translate, "metadata": meta}
        if not self.is_labels:
            kw["rgb"] = bool(self.rgb)
        return kw


# --------------------------------------------------------------------------- paths


def stem(path: Path) -> str:
    name = path.name
    low = name.lower()
    for ext in sorted(set(FORMAT) | {".json"}, key=len, reverse=True):
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return path.stem or name


def extension(path: Path) -> str:
    low = path.name.lower()
    for ext in sorted(FORMAT, key=len, reverse=True):
        if low.endswith(ext):
            return ext
    return path.suffix.lower()


def as_path(path) -> Path:
    if isinstance(path, (list, tuple)) and len(path) == 1:
        path = path[0]
    try:
        return Path(os.fspath(path)).expanduser()
    except TypeError as exc:
        raise ReadError(
            f"Cannot read {path!r}: expected a file or folder path (str or Path)."
        ) from exc


def has_dicm_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def supported_list() -> str:
    return ", ".join(SUPPORTED_EXTENSIONS) + ", a DICOM folder, or a folder of PNG/TIFF files"


# --------------------------------------------------------------------------- arrays


def check_size(nbytes: float, path: Path, what: str) -> None:
    if not math.isfinite(nbytes) or nbytes > MAX_ARRAY_BYTES:
        raise ReadError(
            f"{path}: the header claims {what} of {nbytes / 1024**3:.3g} GiB, more than "
            f"the {MAX_ARRAY_BYTES / 1024**3:.0f} GiB this reader accepts; the file is "
            "probably corrupt. Re-export it, or crop it first."
        )


def native(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.byteorder not in ("=", "|") and arr.dtype.byteorder != (
        "<" if np.little_endian else ">"
    ):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def clean_float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def smallest_uint(hi: float) -> type:
    for dt in (np.uint8, np.uint16, np.uint32):
        if hi <= np.iinfo(dt).max:
            return dt
    raise InputError(f"label values up to {hi:g}; at most 2**32 - 1 are supported.")


# --------------------------------------------------------------------------- geometry


def spacing_of(affine: np.ndarray, ndim_spatial: int) -> tuple[float, ...]:
    axes = [0, 1, 2][-ndim_spatial:]
    return tuple(float(v) for v in np.linalg.norm(affine[:3, axes], axis=0))


def valid_affine(affine) -> bool:
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        return False
    norms = np.linalg.norm(a[:3, :3], axis=0)
    if np.any(norms <= 1e-9):
        return False
    with np.errstate(all="ignore"):
        det = np.linalg.det(a[:3, :3] / norms)
    return bool(np.isfinite(det) and abs(det) > 1e-6)


def affine_from_spacing(spacing, ndim: int) -> np.ndarray:
    sp = [float(s) for s in spacing]
    if len(sp) == 2:
        sp = [1.0] + sp
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"spacing {tuple(spacing)} must be {ndim} positive numbers (mm).")
    a = np.zeros((4, 4))
    a[0, 2], a[1, 1], a[2, 0], a[3, 3] = sp[2], sp[1], sp[0], 1.0
    return a


def label_colours(n: int) -> np.ndarray:
    """A fixed colour table ``(n + 1, 3)`` uint8: id 0 black, ids spread in hue."""
    ids = np.arange(n + 1, dtype=np.float64)
    h = (ids * 0.6180339887498949) % 1.0
    s = np.where(ids % 3 == 0, 0.55, np.where(ids % 3 == 1, 0.8, 0.95))
    v = np.where(ids % 2 == 0, 0.8, 0.98)
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    pp, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, pp, pp, t, v])
    g = np.choose(i, [t, v, v, q, pp, pp])
    b = np.choose(i, [pp, pp, t, v, v, q])
    rgb = np.round(np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)
    rgb[0] = 0
    return rgb
