"""DICOM images: one file, a multi-frame file, or a folder of one or more series.

A folder may also hold DICOM SEG files (:mod:`.dicom_seg`): they open as labels.
Every image read here remembers where its slices came from (``metadata
["dicom_files"]``, ``metadata["sop_instance_uids"]`` in array slice order, and
``metadata["dicom_frame_order"]`` for a multi-frame file), so that a mask drawn on
it can be written as a DICOM SEG that references the source instances.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..errors import CutsError, ReadError
from ._base import (
    DICOM_EXTS, FORMAT, RAS_FROM_LPS, SUPPORTED_EXTENSIONS, ImageData, check_size,
    clean_float, extension, has_dicm_magic, native, spacing_of,
)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def dcmread(path: Path, *, header_only: bool):
    import pydicom

    return pydicom.dcmread(str(path), force=True, stop_before_pixels=header_only)


def is_seg(ds) -> bool:
    """A DICOM Segmentation (by SOP class, or Modality SEG)."""
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS or str(ds.get("Modality", "")).upper() == "SEG"


def floats(value, n: int) -> list[float] | None:
    if value is None:
        return None
    try:
        vals = [float(v) for v in (value if not isinstance(value, (str, bytes)) else [value])]
    except (TypeError, ValueError):
        return None
    if len(vals) != n or not all(math.isfinite(v) for v in vals):
        return None
    return vals


def positive(value, default: float | None) -> float | None:
    f = clean_float(value)
    if f is None or f <= 0:
        return default
    return f


def orientation(iop) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(row direction, column direction, normal) unit vectors, or None if invalid."""
    vals = floats(iop, 6)
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


def fg(ds, seq: str, attr: str, frame: int | None = None):
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


def dicom_meta(ds) -> dict:
    def s(tag):
        v = ds.get(tag)
        return None if v is None else str(v)

    meta = {
        "series_uid": s("SeriesInstanceUID"),
        "study_uid": s("StudyInstanceUID"),
        "frame_of_reference_uid": s("FrameOfReferenceUID"),
        "series_description": s("SeriesDescription"),
        "series_number": s("SeriesNumber"),
        "modality": s("Modality"),
        "photometric": s("PhotometricInterpretation"),
        "sop_class_uid": s("SOPClassUID"),
    }
    return {k: v for k, v in meta.items() if v not in (None, "")}


def dicom_affine(
    orient, origin: np.ndarray, pixel_spacing: tuple[float, float], slice_vec: np.ndarray
) -> np.ndarray:
    """RAS affine mapping array index (slice, row, column) to world mm."""
    row_dir, col_dir, _normal = orient
    lps = np.eye(4)
    lps[:3, 0] = slice_vec
    lps[:3, 1] = col_dir * pixel_spacing[0]  # next row: along the column direction
    lps[:3, 2] = row_dir * pixel_spacing[1]  # next column: along the row direction
    lps[:3, 3] = origin
    return RAS_FROM_LPS @ lps


def slice_geometry(
    positions: list, orient, pixel_spacing, thickness: float | None, *, name: str,
    notes: list[str], order_by: str, quiet: bool = False,
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(RAS affine, slice step (LPS), orientation) of sorted slices at ``positions``.

    The one rule that DICOM images and DICOM SEGs share, so that a SEG lies exactly
    on its source: origin = the first slice's position, slice step = (last - first) /
    (n - 1) (the mean, noted when the gaps are uneven, e.g. missing slices)."""
    n = len(positions)
    if orient is None:
        orient = (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0]))
        if not quiet:
            notes.append(f"{name}: no valid ImageOrientationPatient; the affine assumes an "
                         "axial orientation.")
    have_pos = n > 0 and all(q is not None for q in positions)
    origin = positions[0] if have_pos else np.zeros(3)
    if not have_pos and not quiet:
        notes.append(f"{name}: no ImagePositionPatient; the volume is placed at the origin.")
    normal = orient[2]
    if n > 1 and have_pos:
        step = (positions[-1] - positions[0]) / (n - 1)
        gaps = np.diff([float(np.dot(q, normal)) for q in positions])
        if np.linalg.norm(step) < 1e-6:
            step = normal * (thickness or 1.0)
            notes.append(
                f"{name}: all {n} slices are at the same position (a time series?); "
                f"stacked in {order_by} order with {thickness or 1.0:g} mm spacing."
            )
        elif gaps.size and (gaps.max() - gaps.min()) > max(0.01 * abs(gaps.mean()), 1e-3):
            notes.append(
                f"{name}: uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm); "
                f"the affine uses the mean, {np.linalg.norm(step):.4g} mm."
            )
    else:
        step = normal * (thickness or 1.0)
    return dicom_affine(orient, origin, pixel_spacing, step), step, orient


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


def pixel_spacing_of(value, p: Path, notes: list[str]) -> tuple[float, float]:
    vals = floats(value, 2)
    if vals is None or vals[0] <= 0 or vals[1] <= 0:
        if value is not None:
            notes.append(f"{p.name}: invalid PixelSpacing {value!r}; using 1 mm.")
        else:
            notes.append(f"{p.name}: no PixelSpacing; using 1 mm.")
        return (1.0, 1.0)
    return (vals[0], vals[1])


def read_dicom_file(p: Path, ds=None, *, all_layers: bool = False) -> list[ImageData]:
    """One DICOM file: a single image, a multi-frame volume, or a DICOM SEG."""
    notes: list[str] = []
    if ds is None:
        ds = dcmread(p, header_only=False)
    if is_seg(ds):
        from .dicom_seg import read_seg

        return read_seg(p, ds, all_layers=all_layers)
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


def read_dicom_folder(folder: Path, *, all_series: bool) -> list[ImageData]:
    """The image series of a folder, largest first (only the largest unless
    ``all_series``), then its DICOM SEGs (as labels)."""
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
    if segs and (all_series or not results):
        from .dicom_seg import read_seg

        for fp, _ in segs if all_series else segs[:1]:
            results.extend(read_seg(fp, None, all_layers=all_series))
    elif segs:
        results[0].notes.append(
            f"{folder.name} also holds {len(segs)} DICOM SEG file(s) (e.g. {segs[0][0].name}); "
            "napari_cuts.io.read_all (and napari) open them as labels."
        )
    return results


def read_series(folder: Path, group: list) -> ImageData:
    """Read a group of DICOM files of one series and geometry into one volume."""
    if len(group) == 1:
        fp, ds_h = group[0]
        img = read_dicom_file(fp)[0]
        img.metadata["files"] = [fp.name]
        if int(img.metadata.get("n_frames", 1)) == 1:
            img._dicom_headers = [ds_h]  # header-only, for DICOM SEG export
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
    slices, pos, names, paths, uids, hdrs = [], [], [], [], [], []
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
        hdrs.append(ds_h)
    ps = pixel_spacing_of(ds0.get("PixelSpacing") or ds0.get("ImagerPixelSpacing"), folder, notes)
    thickness = positive(ds0.get("SpacingBetweenSlices"), None) or positive(
        ds0.get("SliceThickness"), None
    )
    meta = dicom_meta(ds0)
    meta["files"] = names
    meta["dicom_files"] = paths
    meta["sop_instance_uids"] = uids
    img = build_volume(
        slices, pos, p=folder, rgb=rgb, orient=orient, pixel_spacing=ps,
        thickness=thickness, notes=notes, meta=meta, order_by=order_by,
    )
    img._dicom_headers = hdrs[: img.spatial_shape[0] if img.ndim_spatial == 3 else 1]
    return img
