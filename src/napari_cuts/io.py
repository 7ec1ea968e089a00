"""Reading medical and ordinary images, and writing masks and label maps.

Used by the CLI, the pipeline and the napari reader/writer contributions alike.
No napari, no Qt.

Formats
-------
Read: PNG / JPEG / TIFF (grey or RGB, 8 or 16 bit; RGBA -> RGB, palette -> RGB),
NIfTI ``.nii`` / ``.nii.gz`` (2D, 3D; 4D+ -> the first volume), DICOM (one file,
a multi-frame file, or a folder holding one or more series).
Write: NIfTI ``.nii`` / ``.nii.gz`` and PNG, atomically.

Axis and affine convention
--------------------------
Every array returned here is indexed like napari shows it:

* pictures: ``(H, W)`` or ``(H, W, 3)`` RGB, ``affine`` is ``None``, spacing 1.0;
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

For DICOM the array is ``(slice, row, column)`` with slices sorted along the slice
normal (``ImageOrientationPatient`` row x column direction) by the projection of
``ImagePositionPatient``. The LPS affine of DICOM PS3.3 C.7.6.2.1.1 is built with
columns ``(slice step, row step = PixelSpacing[0] * column direction cosines,
column step = PixelSpacing[1] * row direction cosines)`` and origin the first
slice's position, then converted to RAS by negating the first two world rows
(``diag(-1, -1, 1, 1) @ lps``), as nibabel and dicom2nifti do. Transposed to
``(column, row, slice)`` this is dicom2nifti's NIfTI grid.

``ImageData.spacing`` is the norm of the affine's column for each spatial array
axis, and ``layer_kwargs()`` gives napari ``scale = spacing`` and
``translate = R.T @ origin`` (R: the unit column directions), which is exact for
axis-aligned data and a rigid rotation of world for oblique data; the full affine
is in the layer metadata (``metadata["affine"]``) for exporters.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import math
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CutsError, InputError, ReadError, WriteError
from .fileutil import atomic_path, jsonable

__all__ = [
    "ImageData",
    "read_image",
    "read_all",
    "write_mask",
    "write_labels",
    "is_supported",
    "label_colours",
    "SUPPORTED_EXTENSIONS",
    "WRITE_EXTENSIONS",
]

#: File name endings the readers take (lower case; DICOM folders are taken too).
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".nii.gz", ".nii", ".dcm", ".dicom", ".ima", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
)
#: File name endings the writers take.
WRITE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".png")

_FORMAT = {
    ".nii.gz": "nifti", ".nii": "nifti", ".dcm": "dicom", ".dicom": "dicom",
    ".ima": "dicom", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
    ".tif": "tiff", ".tiff": "tiff",
}
_DICOM_EXTS = (".dcm", ".dicom", ".ima")
#: Refuse to decode anything bigger than this (a corrupt header can claim terabytes).
MAX_ARRAY_BYTES = 8 * 1024**3
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NIFTI_GEOMETRY_FIELDS = (
    "pixdim", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
    "qoffset_z", "srow_x", "srow_y", "srow_z", "qform_code", "sform_code", "xyzt_units",
)


# --------------------------------------------------------------------------- ImageData


@dataclass
class ImageData:
    """An image read from disk, with its geometry.

    ``data``: ``(H, W)``, ``(H, W, 3)`` RGB, or ``(Z, Y, X)`` volume.
    ``affine``: 4x4, array index ``(z, y, x, 1)`` (``(0, y, x, 1)`` for 2D) -> world
    RAS mm; ``None`` for plain pictures. ``spacing``: mm per spatial array axis.
    """

    data: np.ndarray
    affine: np.ndarray | None
    spacing: tuple[float, ...]
    rgb: bool
    source: str
    format: str
    metadata: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ndim_spatial(self) -> int:
        """2 for pictures and slices, 3 for volumes."""
        return self.data.ndim - (1 if self.rgb else 0)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape[: self.ndim_spatial])

    @property
    def name(self) -> str:
        return self.metadata.get("name") or _stem(Path(self.source))

    def layer_kwargs(self) -> dict:
        """napari Image layer keyword arguments: name, scale, translate, metadata, rgb.

        ``metadata`` holds this image's ``metadata`` plus ``affine`` (4x4 list or
        None), ``source``, ``format``, ``spacing``, ``shape`` and ``notes``.
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
        )
        return {
            "name": self.name,
            "scale": scale,
            "translate": translate,
            "metadata": meta,
            "rgb": bool(self.rgb),
        }


# --------------------------------------------------------------------------- helpers


def _stem(path: Path) -> str:
    name = path.name
    low = name.lower()
    for ext in sorted(set(_FORMAT) | {".json"}, key=len, reverse=True):
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return path.stem or name


def _extension(path: Path) -> str:
    low = path.name.lower()
    for ext in sorted(_FORMAT, key=len, reverse=True):
        if low.endswith(ext):
            return ext
    return path.suffix.lower()


def _as_path(path) -> Path:
    if isinstance(path, (list, tuple)) and len(path) == 1:
        path = path[0]
    try:
        return Path(os.fspath(path)).expanduser()
    except TypeError as exc:
        raise ReadError(
            f"Cannot read {path!r}: expected a file or folder path (str or Path)."
        ) from exc


def _has_dicm_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _supported_list() -> str:
    return ", ".join(SUPPORTED_EXTENSIONS) + ", or a DICOM folder"


def _check_size(nbytes: float, path: Path, what: str) -> None:
    if not math.isfinite(nbytes) or nbytes > MAX_ARRAY_BYTES:
        raise ReadError(
            f"{path}: the header claims {what} of {nbytes / 1024**3:.3g} GiB, more than "
            f"the {MAX_ARRAY_BYTES / 1024**3:.0f} GiB this reader accepts; the file is "
            "probably corrupt. Re-export it, or crop it first."
        )


def _native(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.byteorder not in ("=", "|") and arr.dtype.byteorder != (
        "<" if np.little_endian else ">"
    ):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def _spacing_of(affine: np.ndarray, ndim_spatial: int) -> tuple[float, ...]:
    axes = [0, 1, 2][-ndim_spatial:]
    return tuple(float(v) for v in np.linalg.norm(affine[:3, axes], axis=0))


def _valid_affine(affine) -> bool:
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        return False
    norms = np.linalg.norm(a[:3, :3], axis=0)
    if np.any(norms <= 1e-9):
        return False
    with np.errstate(all="ignore"):
        det = np.linalg.det(a[:3, :3] / norms)
    return bool(np.isfinite(det) and abs(det) > 1e-6)


def _clean_float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# --------------------------------------------------------------------------- public read


def is_supported(path) -> bool:
    """True for a path the readers take: a supported extension, a DICOM file without
    one (``DICM`` magic), or a folder that holds DICOM files. Never raises."""
    try:
        p = _as_path(path)
        if p.is_dir():
            return _looks_like_dicom_folder(p)
        ext = _extension(p)
        if ext in SUPPORTED_EXTENSIONS or ext in _DICOM_EXTS:
            return True
        return p.is_file() and _has_dicm_magic(p)
    except Exception:  # noqa: BLE001 - a yes/no question never raises
        return False


def read_image(path) -> ImageData:
    """Read one image: a picture, a NIfTI file, a DICOM file, or a DICOM folder
    (its largest series; the others are named in ``notes``).

    Raises :class:`ReadError` (and nothing else) naming the file and what to do.
    """
    return _read(path, all_series=False)[0]


def read_all(path) -> list[ImageData]:
    """Every series in a DICOM folder, largest first; a one-element list otherwise."""
    return _read(path, all_series=True)


def _read(path, *, all_series: bool) -> list[ImageData]:
    p = _as_path(path)
    try:
        if not p.exists():
            raise ReadError(f"{p}: no such file or folder. Check the path and its spelling.")
        if p.is_dir():
            if p.name.lower().endswith(SUPPORTED_EXTENSIONS):
                raise ReadError(f"{p} is a folder, not a file. Give the image file inside it.")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _read_dicom_folder(p, all_series=all_series)
        ext = _extension(p)
        fmt = _FORMAT.get(ext)
        if fmt is None:
            if _has_dicm_magic(p):
                fmt = "dicom"
            else:
                raise ReadError(
                    f"{p}: unsupported file type {ext or '(no extension)'!r}. "
                    f"Convert it to one of {_supported_list()}."
                )
        if p.stat().st_size == 0:
            raise ReadError(f"{p} is empty (0 bytes). Re-export or re-copy the file.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "nifti":
                return [_read_nifti(p)]
            if fmt == "dicom":
                return [_read_dicom_file(p)]
            if fmt == "tiff":
                return [_read_tiff(p)]
            return [_read_picture(p, fmt)]
    except CutsError:
        raise
    except Exception as exc:  # noqa: BLE001 - wrap every library failure
        kind = _FORMAT.get(_extension(p), "image")
        raise ReadError(
            f"{p}: could not read this {kind} file ({type(exc).__name__}: "
            f"{str(exc)[:200]}). It may be corrupt, truncated or not really a "
            f"{kind} file; re-export or re-copy it."
        ) from exc


# --------------------------------------------------------------------------- pictures


def _rgb_from(arr: np.ndarray, notes: list[str], what: str) -> np.ndarray:
    """(H, W, C) -> (H, W) grey or (H, W, 3) RGB."""
    c = arr.shape[-1]
    if c == 1:
        return arr[..., 0]
    if c == 2:
        notes.append(f"{what}: grey + alpha image; the alpha channel was dropped.")
        return arr[..., 0]
    if c == 4:
        notes.append(f"{what}: RGBA image; the alpha channel was dropped.")
        return arr[..., :3]
    if c == 3:
        return arr
    raise ReadError(
        f"{what}: {c} channels per pixel; give a grey, RGB or RGBA image."
    )


def _picture(
    arr: np.ndarray, p: Path, fmt: str, notes: list[str], meta: dict, rgb: bool | None = None
) -> ImageData:
    """``rgb=None``: channels last decide (PIL arrays); else the caller knows."""
    arr = _native(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if rgb is None:
        if arr.ndim == 3 and arr.shape[-1] <= 4:
            arr = _rgb_from(arr, notes, p.name)
        rgb = arr.ndim == 3 and arr.shape[-1] == 3
    if arr.ndim - rgb not in (2, 3) or min(arr.shape[:2]) < 1:
        raise ReadError(f"{p}: image of shape {arr.shape} is not a 2D picture or a stack.")
    spatial = arr.ndim - rgb
    return ImageData(
        data=arr, affine=None, spacing=(1.0,) * spatial, rgb=bool(rgb), source=str(p),
        format=fmt, metadata=meta, notes=notes,
    )


def _png_header(raw: bytes) -> tuple[int, int, int, int, int] | None:
    if raw[:8] != b"\x89PNG\r\n\x1a\n" or raw[12:16] != b"IHDR" or len(raw) < 33:
        return None
    w, h, depth, ctype, _c, _f, interlace = struct.unpack(">IIBBBBB", raw[16:29])
    return w, h, depth, ctype, interlace


def _decode_png16(raw: bytes, p: Path) -> np.ndarray:
    """Decode a 16-bit colour PNG (Pillow truncates those to 8 bits)."""
    w, h, depth, ctype, interlace = _png_header(raw)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
    if channels is None or depth != 16:
        raise ReadError(f"{p}: unexpected PNG colour type {ctype}/{depth} bit.")
    if interlace:
        raise ReadError(
            f"{p}: interlaced 16-bit colour PNGs are not supported; save it without "
            "interlacing or as a 16-bit TIFF."
        )
    _check_size(float(w) * h * channels * 2, p, "an image")
    pos, idat = 8, []
    while pos + 8 <= len(raw):
        (length,) = struct.unpack(">I", raw[pos: pos + 4])
        ctype_chunk = raw[pos + 4: pos + 8]
        if ctype_chunk == b"IDAT":
            idat.append(raw[pos + 8: pos + 8 + length])
        elif ctype_chunk == b"IEND":
            break
        pos += 12 + length
    data = zlib.decompress(b"".join(idat))
    bpp = 2 * channels
    stride = w * bpp
    if len(data) < h * (stride + 1):
        raise ReadError(f"{p}: PNG image data is truncated; re-export the file.")
    rows = np.frombuffer(data, np.uint8, count=h * (stride + 1)).reshape(h, stride + 1)
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.int64)
    for y in range(h):
        ft = int(rows[y, 0])
        line = rows[y, 1:].astype(np.int64)
        if ft == 0:
            cur = line
        elif ft == 1:
            cur = np.empty_like(line)
            for k in range(bpp):
                cur[k::bpp] = np.cumsum(line[k::bpp]) % 256
        elif ft == 2:
            cur = (line + prev) % 256
        elif ft in (3, 4):
            lb, pb = line.tolist(), prev.tolist()
            cb = [0] * stride
            for i in range(stride):
                a = cb[i - bpp] if i >= bpp else 0
                b = pb[i]
                if ft == 3:
                    pred = (a + b) >> 1
                else:
                    c = pb[i - bpp] if i >= bpp else 0
                    q = a + b - c
                    pa, pq, pc = abs(q - a), abs(q - b), abs(q - c)
                    pred = a if (pa <= pq and pa <= pc) else (b if pq <= pc else c)
                cb[i] = (lb[i] + pred) & 255
            cur = np.asarray(cb, np.int64)
        else:
            raise ReadError(f"{p}: PNG row {y} has an unknown filter {ft}; the file is corrupt.")
        out[y] = cur
        prev = cur
    return out.view(">u2").reshape(h, w, channels).astype(np.uint16)


def _read_picture(p: Path, fmt: str) -> ImageData:
    from PIL import Image

    notes: list[str] = []
    raw = p.read_bytes()
    hdr = _png_header(raw) if fmt == "png" else None
    if hdr is not None and hdr[2] == 16 and hdr[3] in (2, 4, 6):
        arr = _decode_png16(raw, p)
        return _picture(arr, p, fmt, notes, {"bit_depth": 16})
    import io as _io

    with Image.open(_io.BytesIO(raw)) as im:
        im.load()
        _check_size(float(im.width) * im.height * 4, p, "an image")
        mode = im.mode
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > 1:
            notes.append(f"{p.name}: {n_frames} frames; using the first.")
        if mode in ("P", "PA"):
            has_alpha = mode == "PA" or "transparency" in im.info
            im = im.convert("RGBA" if has_alpha else "RGB")
            notes.append(f"{p.name}: palette image converted to RGB.")
        elif mode == "1":
            im = im.convert("L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
            im = im.convert("RGB")
        elif mode == "La":
            im = im.convert("LA")
        arr = np.asarray(im)
    if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)
    meta = {"mode": mode}
    return _picture(arr, p, fmt, notes, meta)


def _read_tiff(p: Path) -> ImageData:
    import tifffile

    notes: list[str] = []
    try:
        with tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            axes = series.axes
            page = series.pages[0] if len(series.pages) else tif.pages[0]
            shape = series.shape
            _check_size(float(np.prod(shape, dtype=float)) * series.dtype.itemsize, p, "an image")
            arr = series.asarray()
            photometric = getattr(page, "photometric", None)
            colormap = getattr(page, "colormap", None)
    except CutsError:
        raise
    except Exception as exc:  # noqa: BLE001 - fall back to Pillow (e.g. LZW/JPEG codecs)
        try:
            return _read_picture(p, "tiff")
        except CutsError:
            raise ReadError(
                f"{p}: could not read this TIFF ({type(exc).__name__}: {str(exc)[:200]}). "
                "It may be corrupt or use an unsupported compression; re-save it "
                "uncompressed or as PNG."
            ) from exc
    arr = np.asarray(arr)
    axes = str(axes)
    # palette TIFF -> RGB
    if photometric is not None and int(photometric) == 3 and colormap is not None:
        cmap = np.asarray(colormap)
        if cmap.max() > 255:  # 16-bit TIFF colour map: the high byte
            cmap = cmap.astype(np.uint16) >> 8
        cmap = cmap.astype(np.uint8)
        idx = np.clip(arr.astype(np.int64), 0, cmap.shape[1] - 1)
        arr = np.moveaxis(cmap[:, idx], 0, -1)
        axes = axes + "S"
        notes.append(f"{p.name}: palette image converted to RGB.")
    if len(axes) != arr.ndim:
        axes = "Q" * (arr.ndim - 2) + "YX"
    if "S" in axes and axes[-1] != "S":
        i = axes.index("S")
        arr = np.moveaxis(arr, i, -1)
        axes = axes[:i] + axes[i + 1:] + "S"
    if axes.endswith("S"):
        arr = _rgb_from(arr, notes, p.name)
        if arr.ndim < len(axes):
            axes = axes[:-1]
    rgb = axes.endswith("S") and arr.shape[-1] == 3
    max_spatial = 2 if rgb else 3
    dropped = []
    while arr.ndim - rgb > max_spatial:
        dropped.append(f"{axes[0]}={arr.shape[0]}")
        arr = arr[0]
        axes = axes[1:]
    if dropped:
        notes.append(f"{p.name}: extra dimensions ({', '.join(dropped)}); using the first of each.")
    while arr.ndim - rgb == 3 and arr.shape[0] == 1:
        arr = arr[0]
        axes = axes[1:]
    return _picture(arr, p, "tiff", notes, {"axes": axes}, rgb=bool(rgb))


# --------------------------------------------------------------------------- NIfTI


def _read_nifti(p: Path) -> ImageData:
    import nibabel as nib

    notes: list[str] = []
    gz = _extension(p) == ".nii.gz"
    if gz:
        with open(p, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                raise ReadError(
                    f"{p}: not a gzip file although it ends in .nii.gz. Rename it to "
                    ".nii if it is uncompressed, or re-export it."
                )
    import logging

    from nibabel.imageglobals import logger as nib_logger

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
    _check_size(nbytes, p, "an array")
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
    vox = _native(vox)
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
    if not _valid_affine(nifti_affine):
        zooms = [abs(_clean_float(z) or 1.0) or 1.0 for z in (list(hdr.get_zooms()) + [1, 1, 1])[:3]]
        nifti_affine = np.diag(zooms + [1.0])
        notes.append(
            f"{p.name}: the header's affine is missing or invalid; using the voxel sizes "
            f"{tuple(zooms)} mm without orientation."
        )
    affine = nifti_affine[:, [2, 1, 0, 3]]
    n_sp = data.ndim - (1 if rgb else 0)
    geometry = {}
    for key in _NIFTI_GEOMETRY_FIELDS:
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
        data=data, affine=affine, spacing=_spacing_of(affine, n_sp), rgb=bool(rgb),
        source=str(p), format="nifti", metadata=meta, notes=notes,
    )


# --------------------------------------------------------------------------- DICOM


def _dcmread(path: Path, *, header_only: bool):
    import pydicom

    return pydicom.dcmread(str(path), force=True, stop_before_pixels=header_only)


def _floats(value, n: int) -> list[float] | None:
    if value is None:
        return None
    try:
        vals = [float(v) for v in (value if not isinstance(value, (str, bytes)) else [value])]
    except (TypeError, ValueError):
        return None
    if len(vals) != n or not all(math.isfinite(v) for v in vals):
        return None
    return vals


def _positive(value, default: float | None) -> float | None:
    f = _clean_float(value)
    if f is None or f <= 0:
        return default
    return f


def _orientation(iop) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(row direction, column direction, normal) unit vectors, or None if invalid."""
    vals = _floats(iop, 6)
    if vals is None:
        return None
    row = np.asarray(vals[:3])
    col = np.asarray(vals[3:])
    if np.linalg.norm(row) < 1e-3 or np.linalg.norm(col) < 1e-3:
        return None
    row = row / np.linalg.norm(row)
    col = col / np.linalg.norm(col)
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 1e-3:
        return None
    return row, col, normal / np.linalg.norm(normal)


def _fg(ds, seq: str, attr: str, frame: int | None = None):
    """Look ``attr`` up in a functional group (per-frame, then shared), then top level."""
    try:
        if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
            pf = ds.PerFrameFunctionalGroupsSequence
            if frame < len(pf) and seq in pf[frame] and len(pf[frame][seq].value):
                item = pf[frame][seq].value[0]
                if attr in item:
                    return item[attr].value
        if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
            sh = ds.SharedFunctionalGroupsSequence[0]
            if seq in sh and len(sh[seq].value):
                item = sh[seq].value[0]
                if attr in item:
                    return item[attr].value
    except Exception:  # noqa: BLE001 - malformed sequences fall through to the top level
        pass
    if attr in ds:
        return ds[attr].value
    return None


def _rescale(arr: np.ndarray, slope, intercept) -> np.ndarray:
    s = _clean_float(slope)
    b = _clean_float(intercept)
    s = 1.0 if s is None or s == 0 else s
    b = 0.0 if b is None else b
    if s == 1.0 and b == 0.0:
        return arr
    if arr.dtype.kind in "ui" and s.is_integer() and b.is_integer():
        out = arr.astype(np.int64) * int(s) + int(b)
        for dt in (np.int16, np.int32):
            info = np.iinfo(dt)
            if out.size == 0 or (out.min() >= info.min and out.max() <= info.max):
                return out.astype(dt)
        return out.astype(np.float64)
    return (arr.astype(np.float64) * s + b).astype(np.float32)


def _pixels(ds, p: Path) -> np.ndarray:
    """Decoded pixels of a dataset: (R, C), (R, C, S), (F, R, C) or (F, R, C, S)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ReadError(f"{p}: DICOM file without pixel data (e.g. a report or a "
                        "structure set); open an image file or series.")
    rows = int(ds.get("Rows", 0) or 0)
    cols = int(ds.get("Columns", 0) or 0)
    frames = int(_clean_float(ds.get("NumberOfFrames", 1)) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    if rows < 1 or cols < 1 or frames < 1 or samples < 1:
        raise ReadError(f"{p}: DICOM header gives an image of {rows}x{cols} pixels; the "
                        "file is corrupt.")
    _check_size(float(rows) * cols * frames * samples * max(bits, 8) / 8, p, "pixel data")
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", str(ts))
        raise ReadError(
            f"{p}: its pixel data is compressed as {name!r}, which needs an extra "
            "decoder: `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` (or "
            "`python-gdcm`), or convert the file to uncompressed DICOM "
            f"(e.g. `gdcmconv --raw`). ({str(exc)[:150]})"
        ) from exc
    arr = np.asarray(arr)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric in ("PALETTE COLOR",):
        from pydicom.pixels import apply_color_lut

        arr = np.asarray(apply_color_lut(arr, ds))
    return _native(arr)


def _frames_of(ds, arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """Split into (F, R, C[, 3]) and an RGB flag."""
    rgb = arr.ndim >= 3 and arr.shape[-1] in (3, 4) and (
        int(ds.get("SamplesPerPixel", 1) or 1) > 1
        or str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR"
    )
    if rgb and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == (3 if rgb else 2):
        arr = arr[None]
    if arr.ndim != (4 if rgb else 3):
        raise ReadError(f"unexpected decoded pixel array of shape {arr.shape}.")
    return arr, bool(rgb)


def _dicom_meta(ds) -> dict:
    def s(tag):
        v = ds.get(tag)
        return None if v is None else str(v)

    meta = {
        "series_uid": s("SeriesInstanceUID"),
        "study_uid": s("StudyInstanceUID"),
        "series_description": s("SeriesDescription"),
        "series_number": s("SeriesNumber"),
        "modality": s("Modality"),
        "photometric": s("PhotometricInterpretation"),
        "sop_class_uid": s("SOPClassUID"),
    }
    return {k: v for k, v in meta.items() if v not in (None, "")}


def _dicom_affine(
    orient, origin: np.ndarray, pixel_spacing: tuple[float, float], slice_vec: np.ndarray
) -> np.ndarray:
    """RAS affine mapping array index (slice, row, column) to world mm."""
    row_dir, col_dir, _normal = orient
    lps = np.eye(4)
    lps[:3, 0] = slice_vec
    lps[:3, 1] = col_dir * pixel_spacing[0]  # next row: along the column direction
    lps[:3, 2] = row_dir * pixel_spacing[1]  # next column: along the row direction
    lps[:3, 3] = origin
    return _RAS_FROM_LPS @ lps


def _build_volume(
    slices: list[np.ndarray],
    positions: list[np.ndarray | None],
    ds0,
    *,
    p: Path,
    rgb: bool,
    orient,
    pixel_spacing,
    thickness: float | None,
    notes: list[str],
    meta: dict,
    order_by: str,
    quiet: bool = False,
) -> ImageData:
    """Stack already-sorted slices (R, C) into an ImageData with its affine.

    ``quiet``: a plain 2D picture in DICOM (no geometry tags): no notes about them."""
    if rgb and len(slices) > 1:
        notes.append(f"{p.name}: {len(slices)} colour frames; using the first.")
        slices, positions = slices[:1], positions[:1]
    if any(s.dtype.kind == "f" for s in slices):
        dt = np.float32
    else:
        dt = np.result_type(*[s.dtype for s in slices])
    data = np.stack([s.astype(dt, copy=False) for s in slices]) if len(slices) > 1 else slices[0]
    n = len(slices)
    if orient is None:
        orient = (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0]))
        if not quiet:
            notes.append(
                f"{p.name}: no valid ImageOrientationPatient; the affine assumes an "
                "axial orientation."
            )
    have_pos = all(q is not None for q in positions)
    origin = positions[0] if have_pos else np.zeros(3)
    if not have_pos and not quiet:
        notes.append(f"{p.name}: no ImagePositionPatient; the volume is placed at the origin.")
    normal = orient[2]
    if n > 1 and have_pos:
        step = (positions[-1] - positions[0]) / (n - 1)
        gaps = np.diff([float(np.dot(q, normal)) for q in positions])
        if np.linalg.norm(step) < 1e-6:
            step = normal * (thickness or 1.0)
            notes.append(
                f"{p.name}: all {n} slices are at the same position (a time series?); "
                f"stacked in {order_by} order with {thickness or 1.0:g} mm spacing."
            )
        elif gaps.size and (gaps.max() - gaps.min()) > max(0.01 * abs(gaps.mean()), 1e-3):
            notes.append(
                f"{p.name}: uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm); "
                f"the affine uses the mean, {np.linalg.norm(step):.4g} mm."
            )
    else:
        step = normal * (thickness or 1.0)
    affine = _dicom_affine(orient, origin, pixel_spacing, step)
    if str(meta.get("photometric", "")).upper() == "MONOCHROME1":
        notes.append(
            f"{p.name}: MONOCHROME1 (high values display dark on the scanner); the "
            "values are kept as stored, so the image looks inverted here."
        )
    meta.update(
        n_slices=n,
        slice_order=order_by,
        orientation_patient=[float(v) for v in np.concatenate(orient[:2])],
        position_first=[float(v) for v in origin],
        pixel_spacing=[float(v) for v in pixel_spacing],
        slice_spacing=float(np.linalg.norm(step)),
        dicom_affine_lps=(_RAS_FROM_LPS @ affine).tolist(),
    )
    if data.ndim - (1 if rgb else 0) == 2:
        spacing = (float(pixel_spacing[0]), float(pixel_spacing[1]))
    else:
        spacing = _spacing_of(affine, 3)
    return ImageData(
        data=data, affine=affine, spacing=spacing, rgb=bool(rgb), source=str(p),
        format="dicom", metadata=meta, notes=notes,
    )


def _pixel_spacing(value, p: Path, notes: list[str]) -> tuple[float, float]:
    vals = _floats(value, 2)
    if vals is None or vals[0] <= 0 or vals[1] <= 0:
        if value is not None:
            notes.append(f"{p.name}: invalid PixelSpacing {value!r}; using 1 mm.")
        else:
            notes.append(f"{p.name}: no PixelSpacing; using 1 mm.")
        return (1.0, 1.0)
    return (vals[0], vals[1])


def _read_dicom_file(p: Path, ds=None) -> ImageData:
    """One DICOM file: a single image or a multi-frame volume."""
    notes: list[str] = []
    if ds is None:
        ds = _dcmread(p, header_only=False)
    if "Rows" not in ds and "PixelData" not in ds:
        raise ReadError(
            f"{p}: not a DICOM image (no pixel data). Open a DICOM image file or a "
            "folder holding a series."
        )
    arr = _pixels(ds, p)
    frames, rgb = _frames_of(ds, arr)
    n = frames.shape[0]
    orient = _orientation(_fg(ds, "PlaneOrientationSequence", "ImageOrientationPatient"))
    ps = _pixel_spacing(
        _fg(ds, "PixelMeasuresSequence", "PixelSpacing")
        or ds.get("ImagerPixelSpacing"),
        p, notes,
    )
    thickness = _positive(_fg(ds, "PixelMeasuresSequence", "SpacingBetweenSlices"), None) or \
        _positive(_fg(ds, "PixelMeasuresSequence", "SliceThickness"), None)
    positions: list[np.ndarray | None] = []
    slices: list[np.ndarray] = []
    gfov = _floats(ds.get("GridFrameOffsetVector"), n) if n > 1 else None
    ipp0 = _floats(_fg(ds, "PlanePositionSequence", "ImagePositionPatient", 0), 3)
    dose_scale = _clean_float(ds.get("DoseGridScaling")) if "RescaleSlope" not in ds else None
    for f in range(n):
        ipp = _floats(_fg(ds, "PlanePositionSequence", "ImagePositionPatient", f), 3)
        if gfov is not None and ipp0 is not None and orient is not None:
            ipp = list(np.asarray(ipp0) + gfov[f] * orient[2])
        positions.append(None if ipp is None else np.asarray(ipp, float))
        slope = _fg(ds, "PixelValueTransformationSequence", "RescaleSlope", f)
        icpt = _fg(ds, "PixelValueTransformationSequence", "RescaleIntercept", f)
        if slope is None and dose_scale:
            slope = dose_scale
        slices.append(frames[f] if rgb else _rescale(frames[f], slope, icpt))
    order_by = "file"
    if n > 1 and orient is not None and all(q is not None for q in positions):
        keys = [float(np.dot(q, orient[2])) for q in positions]
        idx = sorted(range(n), key=lambda i: keys[i])
        if idx != list(range(n)):
            slices = [slices[i] for i in idx]
            positions = [positions[i] for i in idx]
        order_by = "position"
    meta = _dicom_meta(ds)
    meta["n_frames"] = n
    quiet = (n == 1 or rgb) and ipp0 is None and orient is None
    if quiet:
        notes[:] = [t for t in notes if "PixelSpacing" not in t]
    return _build_volume(
        slices, positions, ds, p=p, rgb=rgb, orient=orient, pixel_spacing=ps,
        thickness=thickness, notes=notes, meta=meta, order_by=order_by, quiet=quiet,
    )


def _looks_like_dicom_folder(folder: Path, limit: int = 200) -> bool:
    if folder.name.lower().endswith((".zarr", ".n5")):
        return False
    seen = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if f.startswith("."):
                continue
            fp = Path(root) / f
            if _extension(fp) in _DICOM_EXTS or (
                _extension(fp) not in _FORMAT and _has_dicm_magic(fp)
            ):
                return True
            seen += 1
            if seen >= limit:
                return False
    return False


def _dicom_candidates(folder: Path) -> tuple[list[Path], int]:
    out: list[Path] = []
    total = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith(".") or f.upper() == "DICOMDIR":
                continue
            total += 1
            fp = Path(root) / f
            ext = _extension(fp)
            if ext in _DICOM_EXTS or (ext not in _FORMAT and _has_dicm_magic(fp)):
                out.append(fp)
    return out, total


def _read_dicom_folder(folder: Path, *, all_series: bool) -> list[ImageData]:
    files, total = _dicom_candidates(folder)
    headers = []
    bad: list[str] = []
    for fp in files:
        try:
            ds = _dcmread(fp, header_only=True)
            if "Rows" not in ds or "Columns" not in ds:
                continue
            headers.append((fp, ds))
        except Exception:  # noqa: BLE001 - skip unreadable files, say so below
            bad.append(fp.name)
    if not headers:
        what = f"{total} file(s), none of them a readable DICOM image" if total else "no files"
        raise ReadError(
            f"{folder}: no DICOM images found in this folder ({what}). Open an image "
            f"file ({', '.join(SUPPORTED_EXTENSIONS)}) or a folder holding a DICOM series."
        )
    groups: dict[tuple, list] = {}
    for fp, ds in headers:
        frames = int(_clean_float(ds.get("NumberOfFrames", 1)) or 1)
        iop = _floats(ds.get("ImageOrientationPatient"), 6)
        key = (
            str(ds.get("SeriesInstanceUID", "")),
            int(ds.get("Rows", 0) or 0),
            int(ds.get("Columns", 0) or 0),
            int(ds.get("SamplesPerPixel", 1) or 1),
            None if iop is None else tuple(round(v, 3) for v in iop),
            str(fp) if frames > 1 else "",
        )
        groups.setdefault(key, []).append((fp, ds))

    def size(g):
        fp, ds = g[0]
        frames = int(_clean_float(ds.get("NumberOfFrames", 1)) or 1)
        return (len(g) * frames * int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0), len(g))

    ordered = sorted(groups.values(), key=size, reverse=True)
    common: list[str] = []
    if bad:
        common.append(
            f"{folder.name}: skipped {len(bad)} unreadable file(s) (e.g. {bad[0]})."
        )
    chosen = ordered if all_series else ordered[:1]
    results = []
    for gi, group in enumerate(chosen):
        img = _read_series(folder, group)
        img.notes[:0] = common
        if len(ordered) > 1:
            desc = img.metadata.get("series_description") or img.metadata.get("series_number") or "?"
            img.metadata["name"] = f"{folder.name} {desc}".strip()
            if all_series:
                img.notes.append(
                    f"{folder.name}: series {gi + 1} of {len(ordered)}: {desc!r} "
                    f"({img.metadata.get('n_slices')} slice(s), UID "
                    f"{img.metadata.get('series_uid', '?')})."
                )
            else:
                others = [
                    str(g[0][1].get("SeriesDescription", "") or g[0][1].get("SeriesNumber", "") or "?")
                    for g in ordered[1:]
                ]
                img.notes.append(
                    f"{folder.name} holds {len(ordered)} image series; using the largest, "
                    f"{desc!r} ({img.metadata.get('n_slices')} slice(s), UID "
                    f"{img.metadata.get('series_uid', '?')}); others: {', '.join(others)}. "
                    "napari_cuts.io.read_all returns every series."
                )
        else:
            img.metadata["name"] = folder.name
        img.source = str(folder)
        results.append(img)
    return results


def _read_series(folder: Path, group: list) -> ImageData:
    """Read a group of DICOM files of one series and geometry into one volume."""
    if len(group) == 1:
        fp, _ = group[0]
        img = _read_dicom_file(fp)
        img.metadata["files"] = [fp.name]
        return img
    notes: list[str] = []
    _, ds0 = group[0]
    orient = _orientation(ds0.get("ImageOrientationPatient"))
    positions = [_floats(ds.get("ImagePositionPatient"), 3) for _, ds in group]
    if orient is not None and all(q is not None for q in positions):
        keys = [float(np.dot(q, orient[2])) for q in positions]
        order_by = "position"
    else:
        keys = []
        for i, (fp, ds) in enumerate(group):
            inst = _clean_float(ds.get("InstanceNumber"))
            keys.append(inst if inst is not None else float(i))
        order_by = "InstanceNumber"
    idx = sorted(range(len(group)), key=lambda i: (keys[i], _clean_float(group[i][1].get("InstanceNumber")) or 0.0))
    # drop duplicates at one position (several echoes / time points in one series)
    kept = []
    for i in idx:
        if order_by == "position" and kept and abs(keys[i] - keys[kept[-1]]) < 1e-4:
            continue
        kept.append(i)
    if len(kept) < len(idx):
        notes.append(
            f"{folder.name}: {len(idx) - len(kept)} slice(s) share a position with another "
            "(several echoes or time points?); using the first at each position."
        )
    slices, pos, names = [], [], []
    for i in kept:
        fp, _ = group[i]
        try:
            ds = _dcmread(fp, header_only=False)
            arr = _pixels(ds, fp)
        except CutsError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ReadError(
                f"{fp}: could not read this slice of the series in {folder} "
                f"({type(exc).__name__}: {str(exc)[:150]}); it may be corrupt. Remove or "
                "re-copy it."
            ) from exc
        frames, rgb = _frames_of(ds, arr)
        if rgb:
            slices.append(frames[0])
        else:
            slices.append(_rescale(frames[0], ds.get("RescaleSlope"), ds.get("RescaleIntercept")))
        pos.append(None if positions[i] is None else np.asarray(positions[i], float))
        names.append(fp.name)
    ps = _pixel_spacing(ds0.get("PixelSpacing") or ds0.get("ImagerPixelSpacing"), folder, notes)
    thickness = _positive(ds0.get("SpacingBetweenSlices"), None) or _positive(
        ds0.get("SliceThickness"), None
    )
    meta = _dicom_meta(ds0)
    meta["files"] = names
    return _build_volume(
        slices, pos, ds0, p=folder, rgb=rgb, orient=orient, pixel_spacing=ps,
        thickness=thickness, notes=notes, meta=meta, order_by=order_by,
    )


# --------------------------------------------------------------------------- writing


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


def _as_labels(arr, name: str) -> tuple[np.ndarray, bool]:
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


def _writer_ext(path: Path) -> str:
    ext = _extension(path)
    if ext not in WRITE_EXTENSIONS:
        raise WriteError(
            f"{path}: cannot write {ext or 'a file without extension'!r}; use one of "
            f"{', '.join(WRITE_EXTENSIONS)}."
        )
    return ext


def _atomic_write(path: Path, payload: bytes) -> None:
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
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())


def _affine_from_spacing(spacing, ndim: int) -> np.ndarray:
    sp = [float(s) for s in spacing]
    if len(sp) == 2:
        sp = [1.0] + sp
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"spacing {tuple(spacing)} must be {ndim} positive numbers (mm).")
    a = np.zeros((4, 4))
    a[0, 2], a[1, 1], a[2, 0], a[3, 3] = sp[2], sp[1], sp[0], 1.0
    return a


def _descrip(provenance: dict | None) -> bytes:
    from . import __version__

    parts = [f"napari-cuts {__version__}"]
    for key in ("method", "level", "seed"):
        if provenance and key in provenance:
            parts.append(f"{key}={provenance[key]}")
    text = " ".join(parts)
    return text.encode("ascii", "replace")[:80]


def _nifti_bytes(
    arr: np.ndarray, affine: np.ndarray, geometry: dict | None, descrip: bytes,
    gz: bool, code: int,
) -> bytes:
    import nibabel as nib

    vox = arr.T  # (Y, X) -> (X, Y); (Z, Y, X) -> (X, Y, Z): the inverse of the reader
    hdr = nib.Nifti1Header()
    if geometry is not None:
        shape = tuple(int(s) for s in geometry.get("shape", vox.shape))
        if shape != vox.shape and int(np.prod(shape)) == vox.size:
            vox = vox.reshape(shape)
        for key in _NIFTI_GEOMETRY_FIELDS:
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


def _png_bytes(arr: np.ndarray, *, binary: bool, colour: bool, name: str) -> bytes:
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




def _write(path, arr, *, like, affine, spacing, provenance, kind: str, colour: bool) -> Path:
    p = Path(os.fspath(path)).expanduser()
    ext = _writer_ext(p)
    labels, binary = _as_labels(arr, kind)
    if kind == "labels" and colour and ext == ".png":
        binary = False
    sidecar = None
    if provenance is not None:
        from . import __version__

        record = {
            "napari_cuts_version": __version__,
            "file": p.name,
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "kind": "mask" if binary else "labels",
            "shape": list(labels.shape),
            "dtype": str(labels.dtype),
        }
        if like is not None:
            record["source"] = like.source
        record.update(provenance)
        try:
            sidecar = json.dumps(record, indent=2, default=jsonable).encode()
        except (TypeError, ValueError) as exc:
            raise InputError(f"provenance cannot be saved as JSON: {exc}") from exc
    if ext == ".png":
        payload = _png_bytes(labels, binary=binary, colour=colour, name=kind)
    else:
        geometry = None
        code = 2
        if affine is not None:
            aff = np.asarray(affine, dtype=float)
            if aff.shape != (4, 4) or not _valid_affine(aff):
                raise InputError(f"affine must be a valid 4x4 matrix; got {aff.shape}.")
            if like is not None and like.affine is not None and np.array_equal(aff, like.affine):
                geometry = like.metadata.get("nifti_header")
        elif like is not None:
            if labels.shape != like.spatial_shape:
                raise InputError(
                    f"{kind} shape {labels.shape} does not match the source image "
                    f"{like.spatial_shape} ({like.source}); give a {kind} on the same grid "
                    "or pass affine= for its own grid."
                )
            if like.affine is not None:
                aff = np.asarray(like.affine, dtype=float)
                geometry = like.metadata.get("nifti_header")
                if like.format == "dicom":
                    code = 1
            else:
                aff = _affine_from_spacing(like.spacing, labels.ndim)
        elif spacing is not None:
            aff = _affine_from_spacing(spacing, labels.ndim)
        else:
            aff = _affine_from_spacing((1.0,) * labels.ndim, labels.ndim)
        if geometry is not None and labels.shape != like.spatial_shape:
            geometry = None
        payload = _nifti_bytes(
            labels, aff, geometry, _descrip(provenance), ext == ".nii.gz", code
        )
    _atomic_write(p, payload)
    if sidecar is not None:
        _atomic_write(p.with_name(_stem(p) + ".json"), sidecar)
    return p


def write_mask(
    path, mask, *, like: ImageData | None = None, affine=None, spacing=None,
    provenance: dict | None = None,
) -> Path:
    """Write a binary mask (or a label map) to ``.nii`` / ``.nii.gz`` / ``.png``.

    ``mask``: ``(H, W)`` or ``(Z, Y, X)``, bool / 0-1 (-> uint8) or integer labels
    (-> the smallest of uint8 / uint16 / uint32). NIfTI geometry, first found of:
    ``affine`` (4x4, array index -> RAS mm, the convention of this module), ``like``
    (the source image: its affine, and for a NIfTI source its exact qform/sform),
    ``spacing`` (mm per array axis), else 1 mm. PNG: 0/255 uint8 for a binary mask,
    colour-coded RGB for labels. ``provenance``: also writes ``<name>.json`` beside
    the file (version, time, source, and the dict's items) and a short NIfTI
    ``descrip``. Atomic; raises :class:`WriteError` naming the path, or
    :class:`InputError` for an unsuitable array.
    """
    return _write(path, mask, like=like, affine=affine, spacing=spacing,
                  provenance=provenance, kind="mask", colour=True)


def write_labels(
    path, labels, *, like: ImageData | None = None, affine=None, spacing=None,
    provenance: dict | None = None, colour: bool = True,
) -> Path:
    """Write a label map like :func:`write_mask`; a PNG is colour-coded RGB, or with
    ``colour=False`` the raw ids as 8- or 16-bit grey."""
    return _write(path, labels, like=like, affine=affine, spacing=spacing,
                  provenance=provenance, kind="labels", colour=colour)


def like_from_metadata(metadata: dict | None, shape) -> ImageData | None:
    """Rebuild a geometry-only :class:`ImageData` from napari layer metadata (as
    written by :meth:`ImageData.layer_kwargs`), for writers; None if it has no affine."""
    if not isinstance(metadata, dict) or metadata.get("affine") is None:
        return None
    aff = np.asarray(metadata["affine"], dtype=float)
    if aff.shape != (4, 4) or not _valid_affine(aff):
        return None
    shape = tuple(int(s) for s in shape)
    data = np.broadcast_to(np.zeros((), np.uint8), shape)
    return ImageData(
        data=data, affine=aff, spacing=_spacing_of(aff, len(shape)), rgb=False,
        source=str(metadata.get("source", "")), format=str(metadata.get("format", "")),
        metadata=dict(metadata),
    )
