"""DICOM Segmentation (SEG): reading any tool's SEG as labels on the source grid,
and writing masks / label maps drawn on a DICOM series as a SEG (highdicom).

Reading
-------
The frames' ``PlanePositionSequence`` / ``PlaneOrientationSequence`` / pixel
measures give the grid, by the same rule the DICOM image reader uses for the
source series (:func:`napari_cuts.io._dicom_common.slice_geometry`: slices sorted along
the normal, origin the first slice, array ``(slice, row, column)``), so a SEG of
a series lies exactly on that series' layer in napari: same shape, scale,
translate and affine. A SEG that omits empty frames (other tools do) is filled
back onto a regular grid where the referenced instances say slices are missing.

Segments that never overlap become one label map, value = segment number. When
segments overlap (a lesion inside an organ), one array cannot hold both, so
:func:`napari_cuts.io.read_all` (and the napari reader) give one labels image per
segment (value = its segment number, named by its label), the larger segments first
(napari stacks later layers on top, so a smaller segment is never under a larger
one): each stays visible and distinct. :func:`napari_cuts.io.read_image` gives one composite map, larger
segments painted first so that smaller ones stay on top, with a note naming the
overlap; ``metadata["segments"]`` lists every segment.

Writing
-------
:func:`write_seg` (through ``write_mask`` / ``write_labels`` / ``write_segments``
with a ``.dcm`` path): a BINARY Segmentation that references the source series and
each source instance, one frame per source slice and segment (empty frames kept, so
the SEG carries the full source grid), each frame mapped to its own source instance
and position whatever the slice order, orientation or gaps of the series.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np

from ..errors import CutsError, InputError, ReadError, WriteError
from ..fileutil import atomic_path
from ._base import ImageData, check_size, clean_float, smallest_uint, spacing_of, stem
from ._dicom_common import (
    dcmread, dicom_meta, fg, floats, orientation, pixel_spacing_of, positive,
    slice_geometry,
)

MASK_LABEL = "CUTS mask"
ALGORITHM_NAME = "napari-cuts"
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")


# --------------------------------------------------------------------------- reading


def _segments(ds, p: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for item in ds.get("SegmentSequence", None) or []:
        num = clean_float(item.get("SegmentNumber"))
        if num is None or num < 0 or num != int(num):
            raise ReadError(f"{p}: DICOM SEG segment with an invalid SegmentNumber; the file is corrupt.")
        prop = item.get("SegmentedPropertyTypeCodeSequence")
        out[int(num)] = {
            "number": int(num),
            "label": str(item.get("SegmentLabel", "") or f"segment {int(num)}"),
            "algorithm_type": str(item.get("SegmentAlgorithmType", "") or ""),
            "algorithm_name": str(item.get("SegmentAlgorithmName", "") or ""),
            "property_type": str(prop[0].get("CodeMeaning", "")) if prop else "",
        }
    return out


def _frame_segment(ds, f: int) -> int | None:
    v = fg(ds, "SegmentIdentificationSequence", "ReferencedSegmentNumber", f)
    return None if v is None else int(v)


def _frame_source_uid(ds, f: int) -> str | None:
    try:
        item = ds.PerFrameFunctionalGroupsSequence[f]
        src = item.DerivationImageSequence[0].SourceImageSequence[0]
        return str(src.ReferencedSOPInstanceUID)
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def _referenced_instances(ds) -> list[str]:
    uids: list[str] = []
    for series in ds.get("ReferencedSeriesSequence", None) or []:
        for inst in series.get("ReferencedInstanceSequence", None) or []:
            uid = inst.get("ReferencedSOPInstanceUID")
            if uid:
                uids.append(str(uid))
    return uids


def _check_pixel_bytes(ds, p: Path, n_frames: int, rows: int, cols: int, seg_type: str) -> None:
    if "PixelData" not in ds:
        raise ReadError(f"{p}: DICOM SEG without pixel data; the file is truncated or corrupt.")
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    compressed = ts not in ("", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
    if compressed:
        return
    bits = int(ds.get("BitsAllocated", 1) or 1)
    need = math.ceil(n_frames * rows * cols * bits / 8)
    have = len(ds.PixelData)
    if have < need:
        raise ReadError(
            f"{p}: DICOM SEG pixel data is truncated ({have} bytes; {n_frames} frame(s) of "
            f"{rows} x {cols} at {bits} bit need {need}). Re-copy or re-export the file."
        )


def _frames(ds, n_frames: int, rows: int, cols: int):
    """The decoded frames one at a time (memory: one frame). pydicom's per-frame
    iterator misreads 1-bit frames whose pixel count is not a multiple of 8 (frames
    then start mid-byte): those are decoded whole."""
    from pydicom.pixels import iter_pixels

    bits = int(ds.get("BitsAllocated", 1) or 1)
    if bits == 1 and (rows * cols) % 8:
        yield from np.asarray(ds.pixel_array).reshape(n_frames, rows, cols)
        return
    for f, frame in enumerate(iter_pixels(ds)):
        if f >= n_frames:
            return
        yield np.asarray(frame).reshape(rows, cols)


def read_seg(p: Path, ds=None, *, all_layers: bool = False) -> list[ImageData]:
    """A DICOM SEG as labels on its grid; see the module docstring."""
    try:
        return _read_seg(p, ds, all_layers=all_layers)
    except CutsError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed element: one clear line
        msg = " ".join(str(exc).split())[:160]
        raise ReadError(
            f"{p}: could not read this DICOM SEG ({type(exc).__name__}: {msg}); it may be "
            "corrupt or truncated. Re-export or re-copy it."
        ) from None


def _read_seg(p: Path, ds, *, all_layers: bool) -> list[ImageData]:
    if ds is None or "PixelData" not in ds:
        ds = dcmread(p, header_only=False)
    notes: list[str] = []
    rows = int(ds.get("Rows", 0) or 0)
    cols = int(ds.get("Columns", 0) or 0)
    n_frames = int(clean_float(ds.get("NumberOfFrames", 1)) or 0)
    seg_type = str(ds.get("SegmentationType", "BINARY") or "BINARY").upper()
    if rows < 1 or cols < 1 or n_frames < 1:
        raise ReadError(f"{p}: DICOM SEG of {n_frames} frame(s) of {rows} x {cols} pixels; "
                        "the file is corrupt.")
    if seg_type not in ("BINARY", "FRACTIONAL", "LABELMAP"):
        raise ReadError(f"{p}: DICOM SEG of unknown SegmentationType {seg_type!r}.")
    check_size(float(n_frames) * rows * cols, p, "segmentation frames")
    _check_pixel_bytes(ds, p, n_frames, rows, cols, seg_type)
    segments = _segments(ds, p)
    if not segments and seg_type != "LABELMAP":
        raise ReadError(f"{p}: DICOM SEG without a SegmentSequence; the file is corrupt.")
    pf = ds.get("PerFrameFunctionalGroupsSequence", None) or []
    if len(pf) not in (0, n_frames):
        raise ReadError(f"{p}: DICOM SEG with {n_frames} frames but {len(pf)} per-frame "
                        "descriptions; the file is corrupt.")

    orient = orientation(fg(ds, "PlaneOrientationSequence", "ImageOrientationPatient", 0))
    ps = pixel_spacing_of(fg(ds, "PixelMeasuresSequence", "PixelSpacing", 0), p, notes)
    thickness = positive(fg(ds, "PixelMeasuresSequence", "SpacingBetweenSlices", 0), None) or \
        positive(fg(ds, "PixelMeasuresSequence", "SliceThickness", 0), None)
    positions = [floats(fg(ds, "PlanePositionSequence", "ImagePositionPatient", f), 3)
                 for f in range(n_frames)]
    frame_seg = [_frame_segment(ds, f) for f in range(n_frames)]
    if seg_type != "LABELMAP":
        if any(s is None for s in frame_seg):
            raise ReadError(f"{p}: DICOM SEG frame without a ReferencedSegmentNumber; the file "
                            "is corrupt.")
        unknown = sorted({s for s in frame_seg if s not in segments})
        if unknown:
            raise ReadError(f"{p}: DICOM SEG frames refer to segment(s) {unknown} that the "
                            "SegmentSequence does not describe; the file is corrupt.")

    # slices: distinct plane positions along the normal, ascending (the image reader's order)
    have_pos = orient is not None and all(q is not None for q in positions)
    if have_pos:
        normal = orient[2]
        keys = np.array([float(np.dot(q, normal)) for q in positions])
        order = np.argsort(keys, kind="stable")
        slice_keys: list[float] = []
        slice_pos: list[np.ndarray] = []
        frame_slice = np.empty(n_frames, int)
        for f in order:
            if not slice_keys or abs(keys[f] - slice_keys[-1]) > 1e-3:
                slice_keys.append(float(keys[f]))
                slice_pos.append(np.asarray(positions[f], float))
            frame_slice[f] = len(slice_keys) - 1
        slice_pos, frame_slice = _fill_omitted(ds, slice_keys, slice_pos, frame_slice, normal,
                                               p, notes)
        order_by = "position"
    else:
        # no geometry: frames of one segment in file order are the slices
        counts: dict = {}
        frame_slice = np.empty(n_frames, int)
        for f in range(n_frames):
            s = frame_seg[f]
            frame_slice[f] = counts.get(s, 0)
            counts[s] = frame_slice[f] + 1
        slice_pos = [None] * (int(frame_slice.max()) + 1)
        order_by = "file"
        notes.append(f"{p.name}: DICOM SEG without plane positions; frames stacked in file order.")
    n_slices = len(slice_pos)

    max_frac = float(ds.get("MaximumFractionalValue", 255) or 255)
    wide = max(segments or [0]) > 255 or (seg_type == "LABELMAP" and int(ds.get("BitsAllocated", 8) or 8) > 8)
    labels = np.zeros((n_slices, rows, cols), np.uint16 if wide else np.uint8)
    counts_vox: dict[int, int] = {s: 0 for s in segments}
    overlap = False
    src_uid_of_slice: list[str | None] = [None] * n_slices
    for f, frame in enumerate(_frames(ds, n_frames, rows, cols)):
        z = int(frame_slice[f])
        src_uid_of_slice[z] = src_uid_of_slice[z] or _frame_source_uid(ds, f)
        if seg_type == "LABELMAP":
            vals = np.unique(frame)
            for v in vals[vals > 0]:
                counts_vox[int(v)] = counts_vox.get(int(v), 0) + int(np.count_nonzero(frame == v))
            cur = labels[z]
            np.copyto(cur, frame.astype(labels.dtype), where=frame > 0)
            continue
        s = frame_seg[f]
        m = frame >= max_frac / 2 if seg_type == "FRACTIONAL" else frame > 0
        if not m.any():
            continue
        cur = labels[z]
        if not overlap and np.any(m & (cur != 0) & (cur != s)):
            overlap = True
        counts_vox[s] += int(np.count_nonzero(m & (cur != s)))
        cur[m] = s
    if seg_type == "LABELMAP":
        for v in counts_vox:
            segments.setdefault(v, {"number": v, "label": f"segment {v}", "algorithm_type": "",
                                    "algorithm_name": "", "property_type": ""})

    affine, step, orient_used = slice_geometry(
        slice_pos, orient, ps, thickness, name=p.name, notes=notes, order_by=order_by,
        quiet=not have_pos,
    )
    meta = dicom_meta(ds)
    meta.update(
        n_slices=n_slices, n_frames=n_frames, slice_order=order_by,
        segmentation_type=seg_type,
        segments=[dict(segments[s], voxels=int(counts_vox.get(s, 0))) for s in sorted(segments)],
        overlapping=bool(overlap),
        referenced_series_uids=sorted({str(x.get("SeriesInstanceUID")) for x in
                                       ds.get("ReferencedSeriesSequence", None) or []
                                       if x.get("SeriesInstanceUID")}),
        referenced_sop_instance_uids=list(src_uid_of_slice),
        orientation_patient=[float(v) for v in np.concatenate(orient_used[:2])],
        pixel_spacing=[float(v) for v in ps],
        slice_spacing=float(np.linalg.norm(step)),
        name=stem(p),
    )
    two_d = n_slices == 1
    spacing = (float(ps[0]), float(ps[1])) if two_d else spacing_of(affine, 3)

    def image(data: np.ndarray, name: str, extra_notes: list[str], extra_meta: dict) -> ImageData:
        md = dict(meta, **extra_meta, name=name)
        return ImageData(
            data=data[0] if two_d else data, affine=affine, spacing=spacing, rgb=False,
            source=str(p), format="dicom_seg", metadata=md, notes=notes + extra_notes,
            kind="labels",
        )

    if not overlap:
        dt = smallest_uint(max([*segments, int(labels.max())]))
        return [image(labels.astype(dt, copy=False), stem(p), [], {})]

    # overlapping segments: decode again, one mask per segment
    masks = {s: np.zeros((n_slices, rows, cols), bool) for s in segments}
    for f, frame in enumerate(_frames(ds, n_frames, rows, cols)):
        m = frame
        m = m >= max_frac / 2 if seg_type == "FRACTIONAL" else m > 0
        masks[frame_seg[f]][int(frame_slice[f])] |= m
    sizes = {s: int(masks[s].sum()) for s in masks}
    for s in meta["segments"]:
        s["voxels"] = sizes[s["number"]]
    names = ", ".join(f"{segments[s]['label']!r}" for s in sorted(segments))
    dt = smallest_uint(max(segments))
    if all_layers:
        # larger segments first: napari draws later layers on top, so a lesion inside
        # an organ stays visible over it (ties: segment number)
        out = []
        for s in sorted(segments, key=lambda s: (-sizes[s], s)):
            label = segments[s]["label"]
            out.append(image(
                (masks[s] * s).astype(dt), f"{stem(p)} {label}",
                [f"{p.name}: segments {names} overlap; one labels layer per segment "
                 f"(this one: {label!r}, value {s})."],
                {"segment_number": s, "segment_label": label},
            ))
        return out
    composite = np.zeros((n_slices, rows, cols), dt)
    for s in sorted(segments, key=lambda s: -sizes[s]):
        composite[masks[s]] = s
    return [image(composite, stem(p), [
        f"{p.name}: segments {names} overlap; smaller segments are painted over larger ones "
        "here. napari_cuts.io.read_all (and napari) give one labels layer per segment."
    ], {})]


def _fill_omitted(ds, slice_keys, slice_pos, frame_slice, normal, p: Path, notes: list[str]):
    """Other tools omit empty frames: where the SEG references more source instances
    than it has slices, put the missing slices back where the gaps are whole
    multiples of the smallest one (a regular source grid)."""
    n_ref = len(set(_referenced_instances(ds)))
    n = len(slice_keys)
    if n < 2 or n_ref <= n:
        return slice_pos, frame_slice
    gaps = np.diff(slice_keys)
    base = float(gaps.min())
    if base <= 1e-6:
        return slice_pos, frame_slice
    mult = gaps / base
    steps = np.round(mult).astype(int)
    if np.any(np.abs(mult - steps) > 0.02) or steps.sum() + 1 > n_ref:
        return slice_pos, frame_slice
    new_index = np.concatenate([[0], np.cumsum(steps)])
    filled: list[np.ndarray] = []
    for i in range(n - 1):
        a, b = slice_pos[i], slice_pos[i + 1]
        for j in range(steps[i]):
            filled.append(a + (b - a) * j / steps[i])
    filled.append(slice_pos[-1])
    added = len(filled) - n
    if added:
        notes.append(f"{p.name}: the SEG omits {added} empty slice(s) between its frames; "
                     "they were put back on the regular grid.")
    if len(filled) < n_ref:
        notes.append(
            f"{p.name}: the SEG references {n_ref} source slices but covers {len(filled)}; "
            "the labels cover the segmented slices only (they still lie in place on the source)."
        )
    return filled, new_index[frame_slice]


# --------------------------------------------------------------------------- writing


_TYPE2_FILL = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
               "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


def source_headers(like: ImageData | None, what: str, path: Path) -> list:
    """The source DICOM datasets of ``like`` in array slice order (one dataset for a
    multi-frame source): the headers of the files in ``metadata["dicom_files"]``,
    checked against ``metadata["sop_instance_uids"]``."""
    suggestion = (f"save it as {stem(path)}.nii.gz instead (NIfTI keeps the geometry), or "
                  "draw it on an image opened from DICOM")
    if like is None:
        raise WriteError(f"{path}: a .dcm {what} is a DICOM SEG, which must reference the DICOM "
                         f"series it was drawn on, and no source image was given; {suggestion}.")
    if like.format != "dicom":
        src = f"a {like.format} image" if like.format else "an image without a DICOM source"
        raise WriteError(f"{path}: a .dcm {what} is a DICOM SEG, which must reference a DICOM "
                         f"series, but it was drawn on {src} ({like.source}); {suggestion}.")
    meta = like.metadata
    files = list(meta.get("dicom_files") or [])
    uids = list(meta.get("sop_instance_uids") or [])
    n_frames = int(meta.get("n_frames", 1) or 1)
    if not files:
        raise WriteError(f"{path}: the source image ({like.source}) does not say which DICOM "
                         f"files it came from; reopen the series, or {suggestion}.")
    headers = []
    for i, f in enumerate(files if n_frames == 1 else files[:1]):
        try:
            ds = dcmread(Path(f), header_only=True)
        except Exception as exc:  # noqa: BLE001
            raise WriteError(
                f"{path}: cannot read the source DICOM file {f} ({type(exc).__name__}); "
                f"the DICOM SEG must reference it. Keep the series in place, or {suggestion}."
            ) from None
        if i < len(uids) and uids[i] and str(ds.get("SOPInstanceUID", "")) != uids[i]:
            raise WriteError(f"{path}: the source file {f} is no longer the instance the "
                             f"image was read from (SOPInstanceUID changed); reopen the series.")
        headers.append(ds)
    return headers


def _complete(headers: list, notes: list[str]) -> list:
    """Copies of the source headers with the attributes highdicom needs present
    (type-2 patient/study attributes empty when absent; a Frame of Reference UID
    derived from the series when the source has none)."""
    from pydicom.uid import generate_uid

    out = []
    for ds in headers:
        for key in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not ds.get(key):
                raise WriteError(f"the source DICOM has no {key}; a DICOM SEG cannot reference it.")
        c = copy.deepcopy(ds)
        for key in _TYPE2_FILL:
            if key not in c:
                setattr(c, key, "")
        if not c.get("FrameOfReferenceUID"):
            c.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(c.StudyInstanceUID),
                                                               str(c.SeriesInstanceUID), "FoR"])
            if not notes:
                notes.append("source without FrameOfReferenceUID: one derived from its series")
        out.append(c)
    return out


def write_seg(
    path, masks, names, *, like: ImageData | None, algorithm_type: str = "SEMIAUTOMATIC",
    what: str = "mask", series_description: str | None = None,
) -> Path:
    """Write masks ``(Z, Y, X)`` (or ``(Y, X)`` for a 2D source) drawn on the DICOM
    image ``like`` as one BINARY DICOM SEG, one segment per mask (they may overlap),
    named by ``names``. Atomic. :class:`WriteError` without a DICOM source."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__

    p = Path(path)
    headers = source_headers(like, what, p)
    algorithm_type = str(algorithm_type).upper()
    if algorithm_type not in ALGORITHM_TYPES:
        raise InputError(f"algorithm_type {algorithm_type!r}: use one of {', '.join(ALGORITHM_TYPES)}.")
    masks = [np.asarray(m) for m in masks]
    names = [str(n) for n in names]
    if not masks or len(names) != len(masks):
        raise InputError(f"give one name per mask ({len(masks)} mask(s), {len(names)} name(s)).")
    shape = like.spatial_shape
    for i, m in enumerate(masks):
        if m.shape != shape:
            raise InputError(
                f"{what} {names[i]!r} has shape {m.shape} but the DICOM source "
                f"{like.source} is {shape}; give a {what} on the same grid."
            )
    stack = np.stack([m.reshape((1,) + m.shape) if m.ndim == 2 else m for m in masks], axis=-1) > 0
    n_frames = int(like.metadata.get("n_frames", 1) or 1)
    if n_frames > 1:  # one multi-frame source: the SEG frames follow its frame order
        order = list(like.metadata.get("dicom_frame_order") or range(n_frames))
        src = np.zeros_like(stack)
        src[order] = stack
        stack = src
    elif len(headers) != stack.shape[0]:
        raise WriteError(f"{p}: the source has {len(headers)} DICOM instance(s) for "
                         f"{stack.shape[0]} slice(s); reopen the series.")
    notes: list[str] = []
    sources = _complete(headers, notes)
    algo = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, version=str(__version__), family=codes.cid7162.ArtificialIntelligence,
    )
    descs = [
        hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=(name or MASK_LABEL)[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=algorithm_type, algorithm_identification=algo,
        )
        for i, name in enumerate(names)
    ]
    pixel = stack[..., 0] if stack.shape[-1] == 1 else stack
    series_number = int(clean_float(sources[0].get("SeriesNumber")) or 0) % 100000 + 9000
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixel, segmentation_type="BINARY",
            segment_descriptions=descs, series_instance_uid=hd.UID(),
            series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="napari-cuts", manufacturer_model_name="napari-cuts",
            software_versions=str(__version__), device_serial_number="napari-cuts",
            omit_empty_frames=False, content_label="CUTS",
            content_description=(series_description or "CUTS segmentation")[:64],
            series_description=(series_description or "CUTS segmentation")[:64],
        )
    except CutsError:
        raise
    except Exception as exc:  # noqa: BLE001 - highdicom refusing the source
        msg = " ".join(str(exc).split())[:200]
        raise WriteError(f"{p}: cannot build a DICOM SEG on this source ({type(exc).__name__}: "
                         f"{msg}); save it as {stem(p)}.nii.gz instead.") from None
    if p.is_dir():
        raise WriteError(f"{p} is a folder; give a file name to write to.")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"Cannot write {p}: cannot create the folder {p.parent} "
                         f"({exc.strerror or exc}). Choose a writable folder.") from None
    if "ContentCreatorName" not in seg:
        seg.ContentCreatorName = ""  # type 2: present, empty (dcmqi warns when absent)
    with atomic_path(p) as tmp:
        seg.save_as(tmp)
    return p

