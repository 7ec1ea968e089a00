"""PNG / JPEG / TIFF pictures, and a folder of PNG/TIFF files as one stack.

16-bit PNG: Pillow (and so imageio's default PNG plugin) truncates 16-bit colour
PNGs (RGB, grey + alpha, RGBA) to 8 bits. Measured on synthetic files with known
pixel values (every row filter, interlaced and not; issue 14): ``imagecodecs``
(libpng) decodes 16-bit grey, grey + alpha, RGB, RGBA and palette PNGs exactly and
reads a 2048 x 2048 16-bit RGB PNG in 0.2 s; pypng is exact too but takes 3.5-5 s
(pure Python); the hand-written decoder this module used to carry took 2.2-3.2 s
and did not read interlaced files; imageio 2.38 / Pillow 13 return uint8 for the
colour ones. So 16-bit PNGs go through imagecodecs (Gohlke's codecs, the sister
of tifffile), 8-bit ones through Pillow.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from ..errors import CutsError, ReadError
from ._base import STACK_EXTS, ImageData, check_size, extension, native


def rgb_from(arr: np.ndarray, notes: list[str], what: str) -> np.ndarray:
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
    raise ReadError(f"{what}: {c} channels per pixel; give a grey, RGB or RGBA image.")


def picture(
    arr: np.ndarray, p: Path, fmt: str, notes: list[str], meta: dict, rgb: bool | None = None
) -> ImageData:
    """``rgb=None``: channels last decide (PIL arrays); else the caller knows."""
    arr = native(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if rgb is None:
        if arr.ndim == 3 and arr.shape[-1] <= 4:
            arr = rgb_from(arr, notes, p.name)
        rgb = arr.ndim == 3 and arr.shape[-1] == 3
    if arr.ndim - rgb not in (2, 3) or min(arr.shape[:2]) < 1:
        raise ReadError(f"{p}: image of shape {arr.shape} is not a 2D picture or a stack.")
    spatial = arr.ndim - rgb
    return ImageData(
        data=arr, affine=None, spacing=(1.0,) * spatial, rgb=bool(rgb), source=str(p),
        format=fmt, metadata=meta, notes=notes,
    )


def png_header(raw: bytes) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit depth, colour type, interlace) of a PNG, else None."""
    if raw[:8] != b"\x89PNG\r\n\x1a\n" or raw[12:16] != b"IHDR" or len(raw) < 33:
        return None
    w, h, depth, ctype, _c, _f, interlace = struct.unpack(">IIBBBBB", raw[16:29])
    return w, h, depth, ctype, interlace


def decode_png16(raw: bytes, p: Path) -> np.ndarray:
    """A 16-bit PNG as (H, W) or (H, W, C) uint16, through imagecodecs (libpng)."""
    w, h, _depth, ctype, _i = png_header(raw)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
    if channels is None:
        raise ReadError(f"{p}: unexpected PNG colour type {ctype} at 16 bits; the file is corrupt.")
    check_size(float(w) * h * channels * 2, p, "an image")
    try:
        import imagecodecs
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ReadError(
            f"{p}: a 16-bit PNG needs the imagecodecs package (Pillow keeps only 8 bits "
            "of colour): `pip install imagecodecs`, or save the image as a 16-bit TIFF."
        ) from exc
    arr = np.asarray(imagecodecs.png_decode(raw))
    if arr.dtype != np.uint16 or arr.shape[:2] != (h, w):
        raise ReadError(f"{p}: decoded a {arr.dtype} array of shape {arr.shape} from a "
                        f"{w} x {h} 16-bit PNG; the file is corrupt. Re-export it.")
    return arr


def read_picture(p: Path, fmt: str) -> ImageData:
    import io as _bytesio

    from PIL import Image

    notes: list[str] = []
    raw = p.read_bytes()
    hdr = png_header(raw) if fmt == "png" else None
    if hdr is not None and hdr[2] == 16:
        return picture(decode_png16(raw, p), p, fmt, notes, {"bit_depth": 16})
    with Image.open(_bytesio.BytesIO(raw)) as im:
        im.load()
        check_size(float(im.width) * im.height * 4, p, "an image")
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
    return picture(arr, p, fmt, notes, {"mode": mode})


def read_tiff(p: Path) -> ImageData:
    import tifffile

    notes: list[str] = []
    try:
        with tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            axes = series.axes
            page = series.pages[0] if len(series.pages) else tif.pages[0]
            shape = series.shape
            check_size(float(np.prod(shape, dtype=float)) * series.dtype.itemsize, p, "an image")
            arr = series.asarray()
            photometric = getattr(page, "photometric", None)
            colormap = getattr(page, "colormap", None)
    except CutsError:
        raise
    except Exception as exc:  # noqa: BLE001 - fall back to Pillow (e.g. LZW/JPEG codecs)
        try:
            return read_picture(p, "tiff")
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
        arr = rgb_from(arr, notes, p.name)
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
    return picture(arr, p, "tiff", notes, {"axes": axes}, rgb=bool(rgb))


def read_one(p: Path, fmt: str) -> ImageData:
    return read_tiff(p) if fmt == "tiff" else read_picture(p, fmt)


# --------------------------------------------------------------------------- stacks


def natural_key(name: str) -> list:
    """``img2.png`` before ``img10.png``: digit runs compare as numbers."""
    return [(0, int(t), t) if t.isdigit() else (1, 0, t.lower())
            for t in re.split(r"(\d+)", name) if t]


def stack_files(folder: Path) -> list[Path]:
    """The PNG/TIFF files directly in ``folder`` (not hidden), in natural name order."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    files = [f for f in entries if not f.name.startswith(".") and f.is_file()
             and extension(f) in STACK_EXTS]
    return sorted(files, key=lambda f: natural_key(f.name))


def read_stack(folder: Path) -> ImageData:
    """A folder of same-size PNG/TIFF pictures as ``(N, H, W)`` or ``(N, H, W, 3)``,
    sorted naturally by name (``2.png`` before ``10.png``)."""
    files = stack_files(folder)
    if not files:
        raise ReadError(
            f"{folder}: no DICOM images and no PNG/TIFF pictures in this folder. Open an "
            "image file, a folder holding a DICOM series, or a folder of PNG/TIFF files."
        )
    notes: list[str] = []
    first = None
    frames: list[np.ndarray] = []
    for f in files:
        try:
            img = read_one(f, "tiff" if extension(f) in (".tif", ".tiff") else "png")
        except CutsError as exc:
            raise ReadError(f"{folder}: cannot stack {f.name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a library failure on one file
            msg = " ".join(str(exc).split())[:160]
            raise ReadError(
                f"{folder}: cannot read {f.name} ({type(exc).__name__}: {msg}); it may be "
                f"corrupt. Move it out of the folder, or re-export it."
            ) from None
        if img.ndim_spatial != 2:
            raise ReadError(
                f"{folder}: {f.name} is itself a stack of shape {img.data.shape}; a folder "
                "stack takes one 2D picture per file. Move it out, or open it alone."
            )
        if first is None:
            first = (f, img)
            check_size(float(img.data.nbytes) * len(files), folder, "a stack")
        elif img.data.shape != first[1].data.shape:
            f0, i0 = first
            what = lambda d: f"{d.shape[1]} x {d.shape[0]}" + (" RGB" if d.ndim == 3 else " grey")  # noqa: E731
            raise ReadError(
                f"{folder}: {f.name} is {what(img.data)} but {f0.name} (the first file) is "
                f"{what(i0.data)}; a folder opens as a stack only when every picture has the "
                f"same size and colour. Move {f.name} out of the folder, or resize it."
            )
        if not frames:
            notes.extend(img.notes)  # e.g. "alpha dropped": said once, for the first file
        frames.append(img.data)
    dtype = np.result_type(*{a.dtype for a in frames})
    if any(a.dtype != dtype for a in frames):
        notes.append(f"{folder.name}: pictures of different bit depths; stacked as {dtype}.")
    data = np.stack([a.astype(dtype, copy=False) for a in frames])
    rgb = data.ndim == 4
    fmts = {"tiff" if extension(f) in (".tif", ".tiff") else "png" for f in files}
    meta = {"files": [f.name for f in files], "n_slices": len(files), "name": folder.name,
            "stack_formats": sorted(fmts)}
    return ImageData(
        data=data, affine=None, spacing=(1.0, 1.0, 1.0), rgb=rgb, source=str(folder),
        format="png" if fmts == {"png"} else "tiff", metadata=meta, notes=notes,
    )
