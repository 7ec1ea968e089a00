"""DICOM images: one file, a multi-frame file, or a folder of one or more series.

A DICOM file may be a SEG, and a folder may hold SEG files: those are read by
:mod:`.dicom_seg`, where :mod:`.readers` sends them (:func:`read_dicom_folder` says
which SEG files of a folder to read).
Every image read here remembers where its slices came from (``metadata
["dicom_files"]``, ``metadata["sop_instance_uids"]`` in array slice order, and
``metadata["dicom_frame_order"]`` for a multi-frame file), so that a mask drawn on
it can be written as a DICOM SEG that references the source instances.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CutsError, ReadError
from ._base import (
    DICOM_EXTS, FORMAT, RAS_FROM_LPS, SUPPORTED_EXTENSIONS, ImageData, check_size,
    clean_float, extension, has_dicm_magic, native, spacing_of,
)
from ._dicom_common import (
    dcmread, dicom_meta, fg, floats, is_seg, orientation, pixel_spacing_of, positive,
    slice_geometry,
)


def rescale(arr: np.ndarray, slope, intercept) -> np.ndarray:
    s = clean_float(slope)
    b = clean_float(intercept)
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


def pixels(ds, p: Path) -> np.ndarray:
    """Decoded pixels of a dataset: (R, C), (R, C, S), (F, R, C) or (F, R, C, S)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ReadError(f"{p}: DICOM file without pixel data (e.g. a report or a "
                        "structure set); open an image file or series.")
    rows = int(ds.get("Rows", 0) or 0)
    cols = int(ds.get("Columns", 0) or 0)
    frames = int(clean_float(ds.get("NumberOfFrames", 1)) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    if rows < 1 or cols < 1 or frames < 1 or samples < 1:
        raise ReadError(f"{p}: DICOM header gives an image of {rows}x{cols} pixels; the "
                        "file is corrupt.")
    check_size(float(rows) * cols * frames * samples * max(bits, 8) / 8, p, "pixel data")
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
    return native(arr)


def frames_of(ds, arr: np.ndarray) -> tuple[np.ndarray, bool]:
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


def build_volume(
    slices: list[np.ndarray], positions: list[np.ndarray | None], *, p: Path, rgb: bool,
    orient, pixel_spacing, thickness: float | None, notes: list[str], meta: dict,
    order_by: str, quiet: bool = False,
) -> ImageData:
    """Stack already-sorted slices (R, C) into an ImageData with its affine.

    ``quiet``: a plain 2D picture in DICOM (no geometry tags): no notes about them."""
    if rgb and len(slices) > 1:
        notes.append(f"{p.name}: {len(slices)} colour frames; using the first.")
        slices, positions = slices[:1], positions[:1]
        for key in ("dicom_files", "sop_instance_uids", "dicom_frame_order"):
            if key in meta:
                meta[key] = meta[key][:1]
    if any(s.dtype.kind == "f" for s in slices):
        dt = np.float32
    else:
        dt = np.result_type(*[s.dtype for s in slices])
    data = np.stack([s.astype(dt, copy=False) for s in slices]) if len(slices) > 1 else slices[0]
    affine, step, orient = slice_geometry(
        positions, orient, pixel_spacing, thickness, name=p.name, notes=notes,
        order_by=order_by, quiet=quiet,
    )
    origin = np.linalg.inv(RAS_FROM_LPS) @ affine[:, 3]
    if str(meta.get("photometric", "")).upper() == "MONOCHROME1":
        notes.append(
            f"{p.name}: MONOCHROME1 (high values display dark on the scanner); the "
            "values are kept as stored, so the image looks inverted here."
        )
    meta.update(
        n_slices=len(slices),
        slice_order=order_by,
        orientation_patient=[float(v) for v in np.concatenate(orient[:2])],
        position_first=[float(v) for v in origin[:3]],
        pixel_spacing=[float(v) for v in pixel_spacing],
        slice_spacing=float(np.linalg.norm(step)),
        dicom_affine_lps=(RAS_FROM_LPS @ affine).tolist(),
    )
    if data.ndim - (1 if rgb else 0) == 2:
        spacing = (float(pixel_spacing[0]), float(pixel_spacing[1]))
    else:
        spacing = spacing_of(affine, 3)
    return ImageData(
        data=data, affine=affine, spacing=spacing, rgb=bool(rgb), source=str(p),
        format="dicom", metadata=meta, notes=notes,
    )


def read_dicom_file(p: Path, ds=None) -> list[ImageData]:
    """One DICOM image file: a single image or a multi-frame volume (``ds``: the file's
    dataset, with its pixels, when the caller has read it). A DICOM SEG is read by
    :func:`napari_cuts.io.dicom_seg.read_seg` instead (:func:`napari_cuts.io.read_image`
    sends it there)."""
    notes: list[str] = []
    if ds is None:
        ds = dcmread(p, header_only=False)
    if is_seg(ds):
        raise ReadError(f"{p} is a DICOM SEG, not an image: open it with "
                        "napari_cuts.io.read_image (it reads a SEG as labels).")
    if "Rows" not in ds and "PixelData" not in ds:
        raise ReadError(
            f"{p}: not a DICOM image (no pixel data). Open a DICOM image file or a "
            "folder holding a series."
        )
    arr = pixels(ds, p)
    frames, rgb = frames_of(ds, arr)
    n = frames.shape[0]
    orient = orientation(fg(ds, "PlaneOrientationSequence", "ImageOrientationPatient"))
    ps = pixel_spacing_of(
        fg(ds, "PixelMeasuresSequence", "PixelSpacing") or ds.get("ImagerPixelSpacing"),
        p, notes,
    )
    thickness = positive(fg(ds, "PixelMeasuresSequence", "SpacingBetweenSlices"), None) or \
        positive(fg(ds, "PixelMeasuresSequence", "SliceThickness"), None)
    positions: list[np.ndarray | None] = []
    slices: list[np.ndarray] = []
    gfov = floats(ds.get("GridFrameOffsetVector"), n) if n > 1 else None
    ipp0 = floats(fg(ds, "PlanePositionSequence", "ImagePositionPatient", 0), 3)
    dose_scale = clean_float(ds.get("DoseGridScaling")) if "RescaleSlope" not in ds else None
    for f in range(n):
        ipp = floats(fg(ds, "PlanePositionSequence", "ImagePositionPatient", f), 3)
        if gfov is not None and ipp0 is not None and orient is not None:
            ipp = list(np.asarray(ipp0) + gfov[f] * orient[2])
        positions.append(None if ipp is None else np.asarray(ipp, float))
        slope = fg(ds, "PixelValueTransformationSequence", "RescaleSlope", f)
        icpt = fg(ds, "PixelValueTransformationSequence", "RescaleIntercept", f)
        if slope is None and dose_scale:
            slope = dose_scale
        slices.append(frames[f] if rgb else rescale(frames[f], slope, icpt))
    order_by = "file"
    idx = list(range(n))
    if n > 1 and orient is not None and all(q is not None for q in positions):
        keys = [float(np.dot(q, orient[2])) for q in positions]
        idx = sorted(range(n), key=lambda i: keys[i])
        if idx != list(range(n)):
            slices = [slices[i] for i in idx]
            positions = [positions[i] for i in idx]
        order_by = "position"
    meta = dicom_meta(ds)
    meta["n_frames"] = n
    meta["dicom_files"] = [str(p.resolve())]
    uid = str(ds.get("SOPInstanceUID", "") or "")
    meta["sop_instance_uids"] = [uid] if n == 1 else [uid] * n
    if n > 1:
        meta["dicom_frame_order"] = [int(i) for i in idx]  # array slice k = frame idx[k]
    quiet = (n == 1 or rgb) and ipp0 is None and orient is None
    if quiet:
        notes[:] = [t for t in notes if "PixelSpacing" not in t]
    return [build_volume(
        slices, positions, p=p, rgb=rgb, orient=orient, pixel_spacing=ps,
        thickness=thickness, notes=notes, meta=meta, order_by=order_by, quiet=quiet,
    )]


def looks_like_dicom_folder(folder: Path, limit: int = 200) -> bool:
    if folder.name.lower().endswith((".zarr", ".n5")):
        return False
    seen = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if f.startswith("."):
                continue
            fp = Path(root) / f
            if extension(fp) in DICOM_EXTS or (
                extension(fp) not in FORMAT and has_dicm_magic(fp)
            ):
                return True
            seen += 1
            if seen >= limit:
                return False
    return False


def dicom_candidates(folder: Path) -> tuple[list[Path], int]:
    out: list[Path] = []
    total = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith(".") or f.upper() == "DICOMDIR":
                continue
            total += 1
            fp = Path(root) / f
            ext = extension(fp)
            if ext in DICOM_EXTS or (ext not in FORMAT and has_dicm_magic(fp)):
                out.append(fp)
    return out, total


def read_dicom_folder(folder: Path, *, all_series: bool) -> tuple[list[ImageData], list[Path]]:
    """The image series of a folder, largest first (only the largest unless
    ``all_series``), and the DICOM SEG files of the folder to read as labels after them
    (every one with ``all_series``, else the first one when the folder holds no image;
    otherwise none, and a note names them)."""
    files, total = dicom_candidates(folder)
    headers = []
    segs: list[tuple[Path, object]] = []
    bad: list[str] = []
    for fp in files:
        try:
            ds = dcmread(fp, header_only=True)
            if "Rows" not in ds or "Columns" not in ds:
                continue
            if is_seg(ds):
                segs.append((fp, ds))
                continue
            headers.append((fp, ds))
        except Exception:  # noqa: BLE001 - skip unreadable files, say so below
            bad.append(fp.name)
    if not headers and not segs:
        what = f"{total} file(s), none of them a readable DICOM image" if total else "no files"
        raise ReadError(
            f"{folder}: no DICOM images found in this folder ({what}). Open an image "
            f"file ({', '.join(SUPPORTED_EXTENSIONS)}) or a folder holding a DICOM series."
        )
    groups: dict[tuple, list] = {}
    for fp, ds in headers:
        frames = int(clean_float(ds.get("NumberOfFrames", 1)) or 1)
        iop = floats(ds.get("ImageOrientationPatient"), 6)
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
        frames = int(clean_float(ds.get("NumberOfFrames", 1)) or 1)
        return (len(g) * frames * int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0), len(g))

    ordered = sorted(groups.values(), key=size, reverse=True)
    common: list[str] = []
    if bad:
        common.append(f"{folder.name}: skipped {len(bad)} unreadable file(s) (e.g. {bad[0]}).")
    chosen = ordered if all_series else ordered[:1]
    results = []
    for gi, group in enumerate(chosen):
        img = read_series(folder, group)
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
    seg_files = [fp for fp, _ in segs]
    if segs and (all_series or not results):
        return results, seg_files if all_series else seg_files[:1]
    if segs:
        results[0].notes.append(
            f"{folder.name} also holds {len(segs)} DICOM SEG file(s) (e.g. {seg_files[0].name}); "
            "napari_cuts.io.read_all (and napari) open them as labels."
        )
    return results, []


def read_series(folder: Path, group: list) -> ImageData:
    """Read a group of DICOM files of one series and geometry into one volume."""
    if len(group) == 1:
        fp, _ = group[0]
        img = read_dicom_file(fp)[0]
        img.metadata["files"] = [fp.name]
        return img
    notes: list[str] = []
    _, ds0 = group[0]
    orient = orientation(ds0.get("ImageOrientationPatient"))
    positions = [floats(ds.get("ImagePositionPatient"), 3) for _, ds in group]
    if orient is not None and all(q is not None for q in positions):
        keys = [float(np.dot(q, orient[2])) for q in positions]
        order_by = "position"
    else:
        keys = []
        for i, (fp, ds) in enumerate(group):
            inst = clean_float(ds.get("InstanceNumber"))
            keys.append(inst if inst is not None else float(i))
        order_by = "InstanceNumber"
    idx = sorted(range(len(group)),
                 key=lambda i: (keys[i], clean_float(group[i][1].get("InstanceNumber")) or 0.0))
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
    slices, pos, names, paths, uids = [], [], [], [], []
    rgb = False
    for i in kept:
        fp, ds_h = group[i]
        try:
            ds = dcmread(fp, header_only=False)
            arr = pixels(ds, fp)
        except CutsError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ReadError(
                f"{fp}: could not read this slice of the series in {folder} "
                f"({type(exc).__name__}: {str(exc)[:150]}); it may be corrupt. Remove or "
                "re-copy it."
            ) from exc
        frames, rgb = frames_of(ds, arr)
        if rgb:
            slices.append(frames[0])
        else:
            slices.append(rescale(frames[0], ds.get("RescaleSlope"), ds.get("RescaleIntercept")))
        pos.append(None if positions[i] is None else np.asarray(positions[i], float))
        names.append(fp.name)
        paths.append(str(fp.resolve()))
        uids.append(str(ds_h.get("SOPInstanceUID", "") or ""))
    ps = pixel_spacing_of(ds0.get("PixelSpacing") or ds0.get("ImagerPixelSpacing"), folder, notes)
    thickness = positive(ds0.get("SpacingBetweenSlices"), None) or positive(
        ds0.get("SliceThickness"), None
    )
    meta = dicom_meta(ds0)
    meta["files"] = names
    meta["dicom_files"] = paths
    meta["sop_instance_uids"] = uids
    return build_volume(
        slices, pos, p=folder, rgb=rgb, orient=orient, pixel_spacing=ps,
        thickness=thickness, notes=notes, meta=meta, order_by=order_by,
    )

