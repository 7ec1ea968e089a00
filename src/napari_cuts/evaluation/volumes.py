"""Folders of volumes that ``napari-cuts evaluate`` scores in 3D (:func:`load_volumes`).

Layouts
-------
- **Decathlon**: ``imagesTr/`` and ``labelsTr/`` with the same file names. A 4D image
  is several sequences (channels last), named by ``dataset.json`` ``"modality"`` when
  it lists them.
- **NIfTI cases** (:func:`napari_cuts.evaluation.datasets.nifti_cases`):
  ``case.nii.gz`` with ``case_seg.nii.gz``, or ``case_<seq>.nii.gz`` files
  (``case_t1``, ``case_flair`` ...) with ``case_seg.nii.gz``: ONE case, one channel
  per sequence, sorted by ``<seq>`` (the same names in every case; the files and the
  mask on one grid: same shape, affines within 0.01 mm). A file belongs to the
  longest case name that has a ``_seg`` mask; ``case.nii.gz``, when present, is the
  case's one image (other ``case_*`` files are then left out, with a note).

Images and masks are read by :func:`napari_cuts.io.read_image` (one sequence per file
stacked by :func:`napari_cuts.sequences.stack_sequences`). Intensities are scaled per
channel to [0, 1] between the 0.5th and 99.5th percentiles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError, ReadError
from .datasets import NiftiCase, case_name, decathlon_pairs, nifti_cases, robust_unit, select_cases

#: The names the NIfTI reader gives channels its header does not name.
_DEFAULT_HEADER_NAME = re.compile(r"^sequence \d+$")


@dataclass
class Volume:
    """One evaluation volume: ``image`` float32 ``(Z, Y, X)`` (or ``(Z, Y, X, C)``) in
    [0, 1] (0.5th-99.5th percentile per channel), ``mask`` bool ``(Z, Y, X)``,
    ``spacing`` (sz, sy, sx) in mm; ``sequences`` the channel names when the case has
    several sequences (``None`` for one grey volume)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    spacing: tuple
    sequences: Optional[list] = None


@dataclass
class VolumeSet:
    layout: str  # "decathlon" or "nifti"
    volumes: list
    notes: list
    label_values: Optional[list]  # None: every non-zero label
    cases_found: list  # every case name of the folder, sorted
    split: str = "all"
    #: The channel names shared by every volume (one per channel; ``["0"]`` .. for
    #: channels without names) and where they came from: "files" (``case_<seq>``
    #: suffixes), "dataset.json" (the Decathlon ``modality``), "header" (the NIfTI
    #: descrip / intent_name) or "index".
    sequences: Optional[list] = None
    sequence_source: Optional[str] = None


def decathlon_modalities(root) -> Optional[list]:
    """The channel names of a Decathlon folder from its ``dataset.json`` ``"modality"``
    (``{"0": "FLAIR", "1": "T1w", ...}``), in channel order; None when the file, the
    key or a channel index 0 .. n-1 is missing, or the file is not JSON."""
    import json

    p = Path(root) / "dataset.json"
    try:
        mod = json.loads(p.read_text(encoding="utf-8")).get("modality")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(mod, dict) or not mod:
        return None
    try:
        by_index = {int(k): str(v).strip() for k, v in mod.items()}
    except (TypeError, ValueError):
        return None
    if sorted(by_index) != list(range(len(by_index))) or not all(by_index.values()):
        return None
    return [by_index[i] for i in range(len(by_index))]


def sequence_key(name: str) -> str:
    """A sequence name as it appears in row names (``seq_<key>_best``): runs of other
    characters than letters and digits become ``_``."""
    return re.sub(r"[^0-9A-Za-z]+", "_", str(name)).strip("_")


def sequence_keys(names: Sequence[str]) -> list[str]:
    """:func:`sequence_key` of every name; the channel index where a key would be empty
    or repeat (``T1`` and ``T1 `` ...)."""
    keys = [sequence_key(n) for n in names]
    if any(not k for k in keys) or len(set(keys)) != len(keys):
        keys = [k if k and keys.count(k) == 1 else str(i) for i, k in enumerate(keys)]
    if len(set(keys)) != len(keys):
        keys = [str(i) for i in range(len(keys))]
    return keys


def _spatial_ndim(path: Path) -> int:
    """The number of spatial axes longer than 1 of a NIfTI file, from its header alone
    (the data are not read)."""
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception as exc:  # noqa: BLE001
        raise ReadError(f"cannot read {path}: {exc}; check the file.") from None
    return sum(1 for s in shape[:3] if s > 1)


def volume_layout(data_dir) -> Optional[str]:
    """``"decathlon"`` (``imagesTr/`` + ``labelsTr/``), ``"nifti"`` (NIfTI images, or
    one file per sequence, with ``*_seg.nii.gz`` masks, at least one of them 3D) or None
    (a 2D folder, or neither)."""
    root = Path(data_dir)
    if not root.is_dir():
        return None
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        return "decathlon"
    if (root / "image_with_GA").is_dir():
        return None
    cases, _ = nifti_cases(root)
    if any(_spatial_ndim(c.seg) >= 3 for c in cases):
        return "nifti"
    return None


def _read_case_image(paths: list, names: Optional[list]):
    """``(data (Z, Y, X[, C]), spacing, channel names or None, where the names came from,
    the image's affine or None)`` of one case: one file, or one file per sequence stacked
    on a last axis by :func:`napari_cuts.sequences.stack_sequences` (which checks one
    grid: same shape, affines within 0.01 mm, and names both files when not)."""
    from ..io import read_image

    if names is None:
        src = read_image(paths[0])
        data = np.asarray(src.data)
        seq = src.sequences
        source = None
        if seq is not None:
            source = "header"
            if all(_DEFAULT_HEADER_NAME.match(s) for s in seq):  # the reader's own names
                seq, source = [str(i) for i in range(len(seq))], "index"
        return data, tuple(float(v) for v in src.spacing), seq, source, src.affine
    from ..sequences import stack_sequences

    images = []
    for p, name in zip(paths, names):
        im = read_image(p)
        if im.sequences or im.rgb or im.ndim_spatial != 3:
            what = (f"holds {len(im.sequences)} sequences" if im.sequences else
                    "is an RGB picture" if im.rgb else f"is {im.ndim_spatial}D")
            raise InputError(f"{Path(p).name} (sequence {name!r}) {what}; each "
                             "<case>_<seq>.nii.gz must be one grey 3D volume.")
        images.append(im)
    st = stack_sequences(images)
    return (np.asarray(st.data), tuple(float(v) for v in st.spacing), list(names), "files",
            st.affine)


def structure_mask(seg, label_values=None) -> np.ndarray:
    """The ground truth of a label volume: the union of ``label_values`` (compared after
    rounding, so labels stored as float 1.0000001 count as 1), or every non-zero label
    when ``label_values`` is None. Returns bool of ``seg``'s shape."""
    r = np.rint(np.asarray(seg, dtype=np.float64))
    if label_values is None:
        return r != 0
    vals = np.rint(np.asarray(list(label_values), dtype=np.float64))
    return np.isin(r, vals)


def _unit_channels(vol: np.ndarray) -> np.ndarray:
    if vol.ndim == 3:
        return robust_unit(vol)
    return np.stack([robust_unit(vol[..., c]) for c in range(vol.shape[-1])], axis=-1)


def _found_cases(root: Path, layout: str) -> tuple[list, list, Optional[list]]:
    """``([NiftiCase], notes, Decathlon modality names or None)`` of a folder of volumes."""
    if layout == "decathlon":
        pairs, notes = decathlon_pairs(root)
        return [NiftiCase(case_name(img), [img], lab) for img, lab in pairs], notes, \
            decathlon_modalities(root)
    found, notes = nifti_cases(root)
    return found, notes, None


def load_volumes(data_dir, *, labels: Optional[Sequence[float]] = None, split: str = "all",
                 cases: Optional[Sequence[str]] = None,
                 limit: Optional[int] = None) -> VolumeSet:
    """Read a folder of volumes (Decathlon or NIfTI + ``*_seg.nii.gz``) for 3D scoring.

    NIfTI cases are those of :func:`~napari_cuts.evaluation.datasets.nifti_cases`:
    ``case.nii.gz`` (one file), or ``case_<seq>.nii.gz`` files, one channel each
    (sorted by ``<seq>``), on one grid (same shape, affines within 0.01 mm; the mask
    too), else an :class:`InputError` naming both files. A 4D image is several
    sequences (channels last). Channel names: the file suffixes, the Decathlon
    ``dataset.json`` ``"modality"``, the NIfTI header, or the channel index
    (``VolumeSet.sequences``, ``sequence_source``).

    Ground truth: :func:`structure_mask` of the label volume with ``labels``. Cases
    with an empty structure, 2D images and images that do not match their masks are
    skipped with a note (a mismatch is an error). Raises :class:`InputError` when no
    case is left, or when the cases differ in their sequences."""
    from ..io import read_image

    root = Path(data_dir)
    if not root.is_dir():
        raise ReadError(f"the data folder {root} does not exist; give --data a folder.")
    layout = volume_layout(root)
    if layout is None:
        raise InputError(f"{root} holds no volumes: expected imagesTr/ and labelsTr/ (the "
                         "Decathlon layout) or NIfTI volumes with case_seg.nii.gz masks "
                         "(case.nii.gz, or one case_<seq>.nii.gz per sequence).")
    found, notes, modalities = _found_cases(root, layout)
    by_name = {c.name: c for c in found}
    if not by_name:
        raise InputError(f"{root}: no image with a label volume found.")
    names = select_cases(list(by_name), split=split, cases=cases, limit=limit)
    label_values = None if labels is None else [int(round(float(v))) for v in labels]
    vols = []
    sources = {}
    for name in names:
        case = by_name[name]
        data, sp, seq_names, seq_source, affine = _read_case_image(case.images, case.sequences)
        img_label = (case.images[0].name if len(case.images) == 1 else
                     f"{case.images[0].name} .. {case.images[-1].name}")
        seg_src = read_image(case.seg)
        seg = np.squeeze(np.asarray(seg_src.data))
        if seg.ndim != 3:
            notes.append(f"{name}: a {seg.ndim}D mask; only volumes are scored in 3D, skipped.")
            continue
        data = np.asarray(data, dtype=np.float32)
        if data.ndim == 4 and seq_names is None and data.shape[1:] == seg.shape \
                and data.shape[-1] != seg.shape[-1]:
            data = np.moveaxis(data, 0, -1)  # channels first (a sequence axis) -> last
        spatial = data.shape[:3]
        if spatial != seg.shape or data.ndim not in (3, 4):
            raise InputError(f"{case.seg.name} has shape {seg.shape} but {img_label} has "
                             f"{data.shape}; the mask must match the image voxel for voxel.")
        if case.sequences is not None and affine is not None and seg_src.affine is not None:
            from ..sequences import AFFINE_TOLERANCE_MM, affine_distance_mm

            d = affine_distance_mm(affine, seg_src.affine, spatial)
            if d > AFFINE_TOLERANCE_MM:
                raise InputError(
                    f"{case.seg.name} and {case.images[0].name} are not on one grid (their "
                    f"affines place the grid up to {d:.3g} mm apart, more than "
                    f"{AFFINE_TOLERANCE_MM} mm); resample the mask to the sequences' grid "
                    "and try again.")
        if not np.all(np.isfinite(data)):
            notes.append(f"{name}: NaN or infinite voxels; skipped.")
            continue
        mask = structure_mask(seg, label_values)
        if not mask.any():
            notes.append(f"{name}: the structure (labels "
                         f"{label_values if label_values is not None else 'non-zero'}) is "
                         "empty; skipped.")
            continue
        n_ch = 1 if data.ndim == 3 else data.shape[-1]
        if seq_names is not None and len(seq_names) != n_ch:
            seq_names, seq_source = None, None
        if layout == "decathlon" and modalities is not None and len(modalities) == n_ch \
                and n_ch > 1:
            seq_names, seq_source = list(modalities), "dataset.json"
        if seq_names is None and n_ch > 1:
            seq_names, seq_source = [str(i) for i in range(n_ch)], "index"
        sources[name] = seq_source
        vols.append(Volume(name, _unit_channels(data), mask, tuple(sp[:3]), seq_names))
    if not vols:
        raise InputError(f"{root}: no volume with a non-empty structure to evaluate "
                         f"({'; '.join(notes[:3]) or 'nothing found'}).")
    chans = {1 if v.image.ndim == 3 else v.image.shape[-1] for v in vols}
    if len(chans) > 1:
        counts = ", ".join(f"{v.name}: {1 if v.image.ndim == 3 else v.image.shape[-1]}"
                           for v in vols[:6])
        raise InputError(f"{root} mixes volumes with {sorted(chans)} channels ({counts}); one "
                         "encoder is trained per set, so give every case the same sequences.")
    seq, seq_source = _set_sequences(vols, sources, notes)
    return VolumeSet(layout, vols, notes, label_values, sorted(by_name), split, seq, seq_source)


def _set_sequences(vols: list, sources: dict, notes: list) -> tuple:
    """The channel names shared by ``vols`` (and their source). Names read from files
    must agree case by case (else an :class:`InputError` naming two cases); names from
    the headers that disagree become channel indexes, with a note."""
    n_ch = 1 if vols[0].image.ndim == 3 else vols[0].image.shape[-1]
    ref = vols[0]
    for v in vols[1:]:
        if v.sequences == ref.sequences:
            continue
        if "files" in (sources.get(v.name), sources.get(ref.name)):
            def show(x):
                return ", ".join(x.sequences) if x.sequences else "one file"
            raise InputError(
                f"case {v.name} has the sequences {show(v)} but {ref.name} has {show(ref)}; "
                f"every case needs the same sequences (<case>_<seq>.nii.gz, the same <seq> "
                "names), so that one encoder reads the same channel the same way.")
        if n_ch > 1:
            notes.append(f"the cases name their {n_ch} channels differently ({ref.name}: "
                         f"{', '.join(ref.sequences or [])}; {v.name}: "
                         f"{', '.join(v.sequences or [])}); channels are named by index.")
            idx = [str(i) for i in range(n_ch)]
            for w in vols:
                w.sequences = list(idx)
            return idx, "index"
    if ref.sequences is None:
        return None, None
    return list(ref.sequences), sources.get(ref.name)
