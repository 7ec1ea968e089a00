"""The labelled folders that ``napari-cuts evaluate`` reads, and which of their cases
it scores.

Folder layouts scored in 2D (:func:`load_dataset`)
--------------------------------------------------
- **Retina layout** (like ``shared/data/retina``): ``image_with_GA/imageN.png`` with
  ``label_with_GA/labelN.npy`` (0/1 masks of the same height and width). Images are
  read by :func:`napari_cuts.io.read_image` and scaled to [0, 1] by their dtype
  (uint8 / 255).
- **NIfTI layout**: ``case.nii.gz`` (or ``.nii``) with ``case_seg.nii.gz`` beside it.
  Foreground is ``mask > 0`` (multi-label masks are merged). Intensities are scaled
  per volume to [0, 1] between the 0.5th and 99.5th percentiles. A 2D image is one
  sample. For a 3D volume (first axis = slices, as :func:`napari_cuts.io.read_image`
  gives it) the samples are the slice with the largest mask area plus up to
  :data:`SLICE_NEIGHBOURS` slices on each side that also contain the mask: the slices
  a reader would look at, a bounded number per case, never empty-mask slices.

Folders of volumes (Decathlon, NIfTI cases with one file per sequence) are read by
:mod:`napari_cuts.evaluation.volumes`; this module holds the NIfTI case discovery
(:func:`nifti_cases`, :func:`decathlon_pairs`) and the case selection
(:func:`select_cases`, :func:`read_case_list`) that both use.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError, ReadError
from ..images import check_image

#: For 3D volumes scored as slices: slices on each side of the largest-mask slice (if
#: they hold mask).
SLICE_NEIGHBOURS = 2
#: ``split``: "dev" = the first half of the sorted case names (rounded up), "report" =
#: the rest, "all" = every case.
SPLITS = ("all", "dev", "report")
#: The picture files of the retina layout.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class Sample:
    """One evaluation image: ``image`` float32 ``(H, W, C)`` in [0, 1], ``mask`` bool ``(H, W)``."""

    name: str
    image: np.ndarray
    mask: np.ndarray


@dataclass
class Dataset:
    layout: str  # "retina" or "nifti"
    samples: list
    notes: list


@dataclass
class NiftiCase:
    """One case of a NIfTI + ``*_seg`` folder: ``images`` one file (a single image,
    maybe 4D) or one file per sequence (``sequences`` their suffixes, sorted)."""

    name: str
    images: list
    seg: Path
    sequences: Optional[list] = None


# --------------------------------------------------------------------------- scaling

def to_unit(arr: np.ndarray) -> np.ndarray:
    """Scale an image to float32 [0, 1]: uint8 / 255, other dtypes min-max unless already in [0, 1]."""
    a = np.asarray(arr)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if 0.0 <= lo and hi <= 1.0:
        return a
    return ((a - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def robust_unit(vol: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] between the 0.5th and 99.5th percentiles (min-max when they
    coincide, zeros for a constant array), clipped."""
    v = np.asarray(vol, dtype=np.float32)
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.zeros_like(v)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- file names

def case_name(path: Path) -> str:
    """The case a NIfTI file names: its file name up to ``.nii``."""
    return path.name.split(".nii")[0]


def is_nifti(path: Path) -> bool:
    n = path.name.lower()
    return (n.endswith(".nii.gz") or n.endswith(".nii")) and not n.startswith(".")


def nifti_stem(path: Path) -> str:
    """The file name without ``.nii`` / ``.nii.gz``."""
    n = path.name
    for ext in (".nii.gz", ".nii"):
        if n.lower().endswith(ext):
            return n[: -len(ext)]
    return n


def is_seg(path: Path) -> bool:
    return nifti_stem(path).endswith("_seg")


def _numeric_key(name: str):
    m = re.search(r"(\d+)", name)
    return (int(m.group(1)) if m else math.inf, name)


def nifti_pairs(root: Path) -> list[tuple[Path, Path]]:
    """``(case.nii[.gz], case_seg.nii[.gz])`` pairs of a folder, sorted by mask name."""
    pairs = []
    for seg in sorted(Path(root).glob("*_seg.nii*")):
        base = seg.name[: seg.name.index("_seg.nii")]
        for ext in (".nii.gz", ".nii"):
            img = Path(root) / f"{base}{ext}"
            if img.exists():
                pairs.append((img, seg))
                break
    return pairs


def nifti_cases(root) -> tuple[list, list]:
    """The cases of a folder of NIfTI images with ``<case>_seg.nii.gz`` masks, sorted by
    name, and notes on files left out. Returns ``([NiftiCase], [note])``.

    Every mask ``<case>_seg.nii[.gz]`` names a case. Its image is ``<case>.nii[.gz]``
    when that file exists (one file; a 4D file brings its own sequences); otherwise its
    sequences are the files ``<case>_<seq>.nii[.gz]``, one channel each, ordered by
    ``<seq>`` (sorted), so every case stacks them the same way. A file belongs to the
    LONGEST case name it starts with: ``case_t1.nii.gz`` is a sequence of case ``case``
    when only ``case_seg.nii.gz`` exists, and a single-file case named ``case_t1`` when
    ``case_t1_seg.nii.gz`` exists. Files of a case that has its own
    ``<case>.nii.gz``, and files that no mask claims, are left out with a note."""
    root = Path(root)
    files = sorted((p for p in root.iterdir() if p.is_file() and is_nifti(p)),
                   key=lambda p: p.name)
    segs = {nifti_stem(p)[: -len("_seg")]: p for p in files if is_seg(p)}
    single = {}
    for base in segs:
        for ext in (".nii.gz", ".nii"):
            if (root / f"{base}{ext}").is_file():
                single[base] = root / f"{base}{ext}"
                break
    claimed = {p.name for p in single.values()}
    seq_files: dict = {base: {} for base in segs}
    notes = []
    by_length = sorted(segs, key=len, reverse=True)
    for p in files:
        if is_seg(p) or p.name in claimed:
            continue
        stem = nifti_stem(p)
        owner = next((b for b in by_length if stem.startswith(b + "_") and len(stem) > len(b) + 1),
                     None)
        if owner is None:
            notes.append(f"{p.name}: no mask names it (expected {stem}_seg.nii.gz, or "
                         "<case>_seg.nii.gz for a sequence <case>_<seq>.nii.gz); left out.")
            continue
        if owner in single:
            notes.append(f"{p.name}: case {owner} has its own image {single[owner].name}, "
                         "which is used; this file is left out.")
            continue
        seq = stem[len(owner) + 1:]
        if seq in seq_files[owner]:
            raise InputError(f"{seq_files[owner][seq].name} and {p.name} are the same sequence "
                             f"{seq!r} of case {owner}; keep one of them.")
        seq_files[owner][seq] = p
    cases = []
    for base in sorted(segs):
        if base in single:
            cases.append(NiftiCase(base, [single[base]], segs[base]))
        elif seq_files[base]:
            names = sorted(seq_files[base])
            cases.append(NiftiCase(base, [seq_files[base][s] for s in names], segs[base], names))
        else:
            notes.append(f"{segs[base].name}: no image {base}.nii.gz and no sequence "
                         f"{base}_<seq>.nii.gz beside it; skipped.")
    return cases, notes


def decathlon_pairs(root: Path) -> tuple[list, list]:
    """(image, label) pairs of ``imagesTr/`` and ``labelsTr/`` (same file names), sorted
    by name, and notes; macOS ``._*`` files (the Decathlon tarballs ship them) are
    ignored."""
    img_dir, lab_dir = Path(root) / "imagesTr", Path(root) / "labelsTr"
    pairs, notes = [], []
    for f in sorted((p for p in img_dir.iterdir() if is_nifti(p)), key=lambda p: p.name):
        lab = lab_dir / f.name
        if not lab.exists():
            notes.append(f"{f.name}: no labelsTr/{f.name}; skipped.")
            continue
        pairs.append((f, lab))
    return pairs, notes


# --------------------------------------------------------------------------- 2D layouts

def _read_picture(path: Path) -> np.ndarray:
    """A retina-layout picture as float32 ``(H, W, C)`` in [0, 1] (RGBA -> RGB)."""
    from ..io import read_image

    src = read_image(path)
    img = np.asarray(src.data)
    if src.ndim_spatial != 2:
        raise InputError(f"{path} holds a stack of shape {img.shape}; the retina layout "
                         "takes one 2D picture per file.")
    if img.ndim == 2:
        img = img[..., None]
    return to_unit(img)


def _load_retina(img_dir: Path, lab_dir: Path, limit) -> Dataset:
    notes = []
    files = sorted([p for p in img_dir.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES
                    and p.name.startswith("image")], key=lambda p: _numeric_key(p.stem))
    samples = []
    for f in files:
        ident = f.stem[len("image"):]
        lab = lab_dir / f"label{ident}.npy"
        if not lab.exists():
            notes.append(f"{f.name}: no {lab.name}; skipped.")
            continue
        if limit is not None and len(samples) >= limit:
            break
        img = _read_picture(f)
        try:
            mask = np.load(lab, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            raise ReadError(f"cannot read the mask {lab}: {exc}; check the file.") from None
        mask = np.asarray(mask)
        if mask.ndim == 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.shape != img.shape[:2]:
            raise InputError(f"{lab} has shape {mask.shape} but {f.name} is "
                             f"{img.shape[:2]}; masks must match their images.")
        mask = mask > 0
        if not mask.any():
            notes.append(f"{f.name}: empty mask; skipped (no foreground to score).")
            continue
        samples.append(Sample(f"image{ident}", check_image(img, f.name), mask))
    return Dataset("retina", samples, notes)


def _load_nifti(pairs, limit) -> Dataset:
    from ..io import read_image

    notes = []
    samples = []
    for img_path, seg_path in pairs:
        if limit is not None and len(samples) >= limit:
            break
        src = read_image(img_path)
        data, rgb = np.asarray(src.data), bool(src.rgb)
        seg = np.asarray(read_image(seg_path).data) > 0
        case = case_name(img_path)
        spatial = data.shape[:-1] if rgb else data.shape
        if seg.shape != spatial:
            raise InputError(f"{seg_path.name} has shape {seg.shape} but {img_path.name} has "
                             f"{spatial}; the mask must match the image voxel for voxel.")
        vol = data.astype(np.float32)
        vol = robust_unit(vol) if not rgb else to_unit(vol)
        if seg.ndim == 2:
            picks = [None]
        elif seg.ndim == 3:
            area = seg.reshape(seg.shape[0], -1).sum(axis=1)
            if area.max() == 0:
                notes.append(f"{case}: empty mask; skipped.")
                continue
            top = int(np.argmax(area))
            picks = [z for z in range(top - SLICE_NEIGHBOURS, top + SLICE_NEIGHBOURS + 1)
                     if 0 <= z < seg.shape[0] and area[z] > 0]
        else:
            raise InputError(f"{img_path.name} has shape {data.shape}; expected a 2D image or "
                             "a 3D volume.")
        for z in picks:
            if limit is not None and len(samples) >= limit:
                break
            im = vol if z is None else vol[z]
            m = seg if z is None else seg[z]
            if not m.any():
                notes.append(f"{case}: empty mask; skipped.")
                continue
            name = case if z is None else f"{case}_z{z:03d}"
            try:
                im = check_image(im, name)
            except InputError as exc:
                notes.append(f"{name}: {exc} Skipped.")
                continue
            samples.append(Sample(name, im, m))
    return Dataset("nifti", samples, notes)


def load_dataset(data_dir, *, limit: Optional[int] = None) -> Dataset:
    """Read a labelled folder (retina or NIfTI layout, see the module doc).

    Raises :class:`ReadError` for a missing folder and :class:`InputError` for a folder
    in neither layout or without any usable image.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ReadError(f"the data folder {root} does not exist; give --data a folder.")
    if limit is not None and int(limit) < 1:
        raise InputError(f"limit must be at least 1 (got {limit}).")
    img_dir, lab_dir = root / "image_with_GA", root / "label_with_GA"
    if img_dir.is_dir() and lab_dir.is_dir():
        ds = _load_retina(img_dir, lab_dir, limit)
    else:
        pairs = nifti_pairs(root)
        if not pairs and any(c.sequences for c in nifti_cases(root)[0]):
            raise InputError(
                f"{root}: cases with one file per sequence (case_<seq>.nii.gz) are scored "
                "in 3D only (not as slices with --slices, not with 2D masks); score them "
                "without --slices, or stack each case's sequences into one file.")
        if not pairs:
            raise InputError(
                f"{root} is in neither evaluation layout: expected image_with_GA/imageN.png "
                "with label_with_GA/labelN.npy (like shared/data/retina), or NIfTI images "
                "with masks beside them (case.nii.gz + case_seg.nii.gz)."
            )
        ds = _load_nifti(pairs, limit)
    if not ds.samples:
        raise InputError(f"{root}: no image with a non-empty mask to evaluate "
                         f"({'; '.join(ds.notes[:3]) or 'nothing found'}).")
    chans = {s.image.shape[-1] for s in ds.samples}
    if len(chans) > 1:
        raise InputError(f"{root} mixes images with {sorted(chans)} channels; one encoder "
                         "is trained per set, so give all grey or all colour images.")
    return ds


# --------------------------------------------------------------------------- case selection

def read_case_list(path) -> list[str]:
    """Case names from a text file: one a line (file names with ``.nii.gz`` are fine),
    blank lines and ``#`` comments ignored."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReadError(f"cannot read the case list {p}: {exc.strerror or exc}.") from None
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    if not out:
        raise InputError(f"the case list {p} names no case.")
    return out


def select_cases(names: Sequence[str], *, split: str = "all",
                 cases: Optional[Sequence[str]] = None,
                 limit: Optional[int] = None) -> list[str]:
    """The cases to evaluate, in sorted order: ``split`` first (``"dev"``: the first
    ``ceil(n / 2)`` sorted names, ``"report"``: the others, ``"all"``), then ``cases``
    (names, with or without ``.nii.gz``), then the first ``limit``."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)} (got {split!r}).")
    names = sorted(names)
    half = math.ceil(len(names) / 2)
    if split == "dev":
        names = names[:half]
    elif split == "report":
        names = names[half:]
    if cases is not None:
        wanted = [str(c).split(".nii")[0] for c in cases]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise InputError(f"case(s) {', '.join(missing[:5])} not found"
                             + (f" in the {split} split" if split != "all" else "")
                             + f"; the folder has {', '.join(sorted(names)[:5])}"
                             + (" ..." if len(names) > 5 else "") + ".")
        keep = set(wanted)
        names = [n for n in names if n in keep]
    if limit is not None:
        if int(limit) < 1:
            raise InputError(f"limit must be at least 1 (got {limit}).")
        names = names[: int(limit)]
    return names
