"""What the DICOM image reader (:mod:`.dicom`) and the DICOM SEG reader and writer
(:mod:`.dicom_seg`) share: reading a dataset, telling a SEG apart, parsing the numeric
attributes (functional groups included), and the one geometry rule, so that a SEG lies
exactly on its source series (:func:`slice_geometry`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ._base import RAS_FROM_LPS, clean_float

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


def pixel_spacing_of(value, p: Path, notes: list[str]) -> tuple[float, float]:
    vals = floats(value, 2)
    if vals is None or vals[0] <= 0 or vals[1] <= 0:
        if value is not None:
            notes.append(f"{p.name}: invalid PixelSpacing {value!r}; using 1 mm.")
        else:
            notes.append(f"{p.name}: no PixelSpacing; using 1 mm.")
        return (1.0, 1.0)
    return (vals[0], vals[1])


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
