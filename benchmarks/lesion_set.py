"""A reproducible 2D MRI lesion set (issue 13): synthetic lesions painted into real MRI
slices, written in the NIfTI layout that ``napari-cuts evaluate --data DIR`` reads
(``case.nii.gz`` + ``case_seg.nii.gz``, one 2D image and its lesion mask per case).

    python benchmarks/lesion_set.py OUT [--n 20] [--seed 13] [--data ../shared/data]

Sources (read from the shared data folder, never copied into the repository):

- the MNI ICBM152 2009a T1 template (``mni152/``): axial slices through the brain,
  cropped to the head; lesions of radius 4-25 px inside the brain;
- Medical Segmentation Decathlon hippocampus crops (``msd_hippocampus/``, real T1
  MPRAGE with scanner noise): the middle slice of a case, lesions of radius 4-9 px
  (the crops are only 35-60 px wide). ``msd_brain_tumour`` was not used: its slices hold
  real, unlabelled gliomas, which a painted lesion's mask would not include.

Each case gets one lesion (the mask is the evaluation's ground truth):

- shape: a smoothed random blob (a disc whose radius varies with the angle by a few
  random harmonics, then Gaussian-smoothed and thresholded);
- contrast: ``delta`` times the standard deviation of the tissue in a ring around the
  lesion, brighter or darker; about a third of the cases are *subtle*, +0.1 to +0.3 SD,
  and always textured;
- texture: ``smooth`` (none), ``speckle`` (fine noise, ~1 px), ``ridged`` (ridges of
  band-passed noise at ~3 px) or ``mottled`` (coarse blobs, ~5 px), with an amplitude of
  0.4-1.0 SD: a spatial frequency unlike the tissue around it;
- a soft edge (the intensity change is blended with a 1 px Gaussian ramp); the mask is
  the blob itself.

Everything comes from one ``numpy.random.default_rng(seed)``, so the same seed and
sources give the same files (float32 images, uint8 masks). ``lesions.json`` lists every
lesion's parameters and ``README.txt`` says how the set was made and the licences.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
MNI = "mni152/mni152_2009a_t1_1mm.nii.gz"
HIPPO = "msd_hippocampus/imagesTr"
TEXTURES = ("smooth", "speckle", "ridged", "mottled")


class LesionSetError(Exception):
    """A missing or unreadable source: one clear line, no traceback."""


# --------------------------------------------------------------------------- shapes


def blob(shape, centre, radius, rng) -> np.ndarray:
    """A smoothed random blob (bool) of mean radius ``radius`` at ``centre``."""
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    dy, dx = yy - centre[0], xx - centre[1]
    theta = np.arctan2(dy, dx)
    r = np.ones_like(theta)
    for k in range(2, 6):
        r += rng.uniform(0.0, 0.28 / np.sqrt(k)) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    inside = (np.hypot(dy, dx) <= radius * r).astype(np.float64)
    return gaussian_filter(inside, max(0.8, radius / 6)) > 0.5


def texture(kind: str, shape, rng) -> np.ndarray:
    """Zero-mean, unit-SD noise of the given kind (``smooth``: zeros)."""
    from scipy.ndimage import gaussian_filter

    if kind == "smooth":
        return np.zeros(shape)
    white = rng.standard_normal(shape)
    if kind == "speckle":
        t = gaussian_filter(white, 0.6)
    elif kind == "ridged":
        band = gaussian_filter(white, 1.5) - gaussian_filter(white, 3.0)
        t = 1.0 - 2.0 * np.abs(band / (band.std() + 1e-12))
    elif kind == "mottled":
        t = gaussian_filter(white, 2.5)
    else:
        raise ValueError(kind)
    t = t - t.mean()
    return t / (t.std() + 1e-12)


# --------------------------------------------------------------------------- sources


def _read(path: Path) -> np.ndarray:
    from napari_cuts import io

    if not path.exists():
        raise LesionSetError(f"{path} not found: give --data the shared data folder "
                             "(with mni152/ and msd_hippocampus/).")
    return np.asarray(io.read_image(path).data, np.float32)


def _mni_slices(data: Path, n: int):
    """n axial slices (z, image cropped to the head, brain mask) spread through the brain."""
    vol = _read(data / MNI)                       # (Z, Y, X), uint8 range
    head = vol > 0.15 * vol.max()
    area = head.reshape(head.shape[0], -1).sum(axis=1)
    zs = np.nonzero(area > 0.5 * area.max())[0]     # slices with a good part of the brain
    lo, hi = int(zs.min()), int(zs.max())
    picks = np.linspace(lo + 0.1 * (hi - lo), lo + 0.9 * (hi - lo), n).round().astype(int)
    ys, xs = np.nonzero(head.any(axis=0))
    y0, y1 = max(0, ys.min() - 4), min(vol.shape[1], ys.max() + 5)
    x0, x1 = max(0, xs.min() - 4), min(vol.shape[2], xs.max() + 5)
    for z in picks:
        im = vol[z, y0:y1, x0:x1]
        yield f"mni_z{z:03d}", f"{MNI} axial slice z={z} (array index), crop y {y0}:{y1} x {x0}:{x1}", im


def _hippo_slices(data: Path, n: int):
    files = sorted((data / HIPPO).glob("hippocampus_*.nii.gz"))
    if len(files) < n:
        raise LesionSetError(f"{data / HIPPO}: {len(files)} hippocampus case(s), need {n}.")
    for f in files[:n]:
        vol = _read(f)
        z = vol.shape[0] // 2
        yield f"hippo_{f.name.split('.')[0].split('_')[-1]}_z{z:03d}", f"{HIPPO}/{f.name} slice {z}", vol[z]


# --------------------------------------------------------------------------- painting


def paint(image: np.ndarray, rng, *, r_range, subtle: bool, tissue: np.ndarray) -> tuple:
    """Paint one lesion into a copy of ``image``; returns (image, mask, params)."""
    from scipy.ndimage import binary_dilation, binary_erosion, gaussian_filter

    radius = float(rng.uniform(*r_range))
    # centre: tissue far enough inside that the whole blob lies in it
    inner = binary_erosion(tissue, iterations=int(np.ceil(radius * 1.35)) + 1)
    if not inner.any():
        inner = binary_erosion(tissue, iterations=max(1, int(radius)))
    cand = np.argwhere(inner)
    if not len(cand):
        raise LesionSetError("no room for a lesion in this slice")
    centre = tuple(int(v) for v in cand[rng.integers(len(cand))])
    mask = blob(image.shape, centre, radius, rng) & tissue
    ring = binary_dilation(mask, iterations=max(3, int(radius // 2))) & ~mask & tissue
    sd = float(image[ring].std()) if ring.sum() > 8 else float(image[tissue].std())
    sd = max(sd, 1e-3 * float(np.ptp(image[tissue])) + 1e-6)
    if subtle:
        delta = float(rng.uniform(0.1, 0.3))
        kind = str(rng.choice(TEXTURES[1:]))
    else:
        delta = float(rng.uniform(0.8, 2.5)) * (1 if rng.random() < 0.6 else -1)
        kind = str(rng.choice(TEXTURES))
    amp = 0.0 if kind == "smooth" else float(rng.uniform(0.4, 1.0))
    alpha = np.clip(gaussian_filter(mask.astype(np.float64), 1.0) * 1.0, 0, 1)
    alpha = np.where(mask, np.maximum(alpha, 0.5), alpha)
    change = sd * (delta + amp * texture(kind, image.shape, rng))
    out = (image + alpha * change).astype(np.float32)
    lo, hi = float(image.min()), float(image.max())
    out = np.clip(out, lo, hi + abs(delta) * sd * 2)
    params = {"centre_yx": list(centre), "radius_px": round(radius, 2),
              "area_px": int(mask.sum()), "contrast_sd": round(delta, 3),
              "texture": kind, "texture_sd": round(amp, 3), "ring_sd": round(sd, 3),
              "subtle": bool(subtle)}
    return out, mask, params


def build(out: Path, *, n: int = 20, seed: int = 13, data: Path = DEFAULT_DATA) -> list[dict]:
    """Write the set into the new (or empty) folder ``out``; returns the lesion records.
    Written into ``out.partial`` and renamed at the end: never a half-written set."""
    if n < 2:
        raise LesionSetError("--n must be at least 2 (MNI and hippocampus cases).")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise LesionSetError(f"{out} exists and is not empty; give a new folder.")
    rng = np.random.default_rng(seed)
    n_hippo = max(1, round(n * 0.3))
    n_mni = n - n_hippo
    sources = list(_mni_slices(Path(data), n_mni)) + list(_hippo_slices(Path(data), n_hippo))
    subtle_flags = np.zeros(n, bool)
    subtle_flags[rng.permutation(n)[: max(1, n // 3)]] = True
    final, out = out, out.with_name(out.name + ".partial")   # renamed when complete
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        records = _write(out, sources, subtle_flags, rng, seed, n)
    except BaseException:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        raise
    if final.exists():
        final.rmdir()        # empty (checked above)
    out.rename(final)
    return records


def _write(out: Path, sources, subtle_flags, rng, seed: int, n: int) -> list[dict]:
    import nibabel as nib

    from napari_cuts import io

    records = []
    for k, (case, where, im) in enumerate(sources):
        hippo = case.startswith("hippo")
        tissue = im > (np.percentile(im, 30) if hippo else 0.3 * im.max())
        if hippo:  # the crops are small: keep the lesion away from the border
            border = np.zeros_like(tissue)
            border[3:-3, 3:-3] = True
            tissue &= border
            r_max = max(4.5, min(9.0, min(im.shape) / 5))
            r_range = (4.0, r_max)
        else:
            r_range = (4.0, 25.0)
        img, mask, params = paint(im, rng, r_range=r_range, subtle=bool(subtle_flags[k]),
                                  tissue=tissue)
        # (Y, X) -> NIfTI (X, Y, 1): napari_cuts.io.read_image gives (Y, X) back
        nib.save(nib.Nifti1Image(img.T[..., None].astype(np.float32), np.eye(4)),
                 str(out / f"{case}.nii.gz"))
        nib.save(nib.Nifti1Image(mask.T[..., None].astype(np.uint8), np.eye(4)),
                 str(out / f"{case}_seg.nii.gz"))
        back = io.read_image(out / f"{case}_seg.nii.gz").data
        if not np.array_equal(np.asarray(back) > 0, mask):
            raise LesionSetError(f"{case}: the mask does not read back in place")
        records.append({"case": case, "source": where, "shape": list(im.shape), **params})
    (out / "lesions.json").write_text(json.dumps({"seed": seed, "n": n, "cases": records},
                                                 indent=1))
    (out / "README.txt").write_text(readme(seed, n, records))
    return records


def readme(seed: int, n: int, records: list[dict]) -> str:
    subtle = sum(r["subtle"] for r in records)
    radii = [r["radius_px"] for r in records]
    return f"""Synthetic MRI lesion set (napari-cuts issue 13)
===============================================

Made by benchmarks/lesion_set.py of napari-cuts (seed {seed}, {n} cases):
    python benchmarks/lesion_set.py OUT --n {n} --seed {seed}
Layout: CASE.nii.gz (2D float32 image) + CASE_seg.nii.gz (uint8 lesion mask), as
`napari-cuts evaluate --data OUT` reads it; lesions.json lists each lesion's
parameters (centre, radius, area, contrast in SD of the surrounding tissue, texture).

Each case is one real MRI slice with ONE painted lesion; the mask is the lesion only
(the evaluation's ground truth). Lesions: smoothed random blobs of radius
{min(radii):.1f}-{max(radii):.1f} px; contrast delta x SD of a ring of tissue around the lesion,
brighter or darker (0.8-2.5 SD), or subtle (+0.1-0.3 SD, {subtle} cases) and then always
textured; texture smooth / speckle (~1 px) / ridged (band-passed ridges, ~3 px) /
mottled (~5 px) at 0.4-1.0 SD; a 1 px soft edge. The images are synthetic
derivatives: the lesions are not real pathology.

Sources and licences
--------------------
mni_* cases: axial slices of the MNI ICBM152 2009a T1 template (1 mm), cropped to the
head. Licence notice (keep it with any copy):
  Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal
  Neurological Institute, McGill University. Permission to use, copy, modify, and
  distribute this software and its documentation for any purpose and without fee is
  hereby granted, provided that the above copyright notice appear in all copies. The
  authors and McGill University make no representations about the suitability of this
  software for any purpose. It is provided "as is" without express or implied warranty.

hippo_* cases: middle slices of Medical Segmentation Decathlon Task04 (hippocampus)
training images (Vanderbilt University Medical Center). Licence CC BY-SA 4.0: these
derived files are under CC BY-SA 4.0 too. Attribution: Antonelli et al., "The Medical
Segmentation Decathlon", Nature Communications 13, 4128 (2022); Simpson et al.,
arXiv:1902.09063 (2019).
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="a new (or empty) output folder")
    ap.add_argument("--n", type=int, default=20, help="number of cases (default 20)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the shared data folder")
    args = ap.parse_args(argv)
    try:
        recs = build(Path(args.out), n=args.n, seed=args.seed, data=Path(args.data))
    except LesionSetError as exc:
        print(f"lesion_set: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(recs)} cases to {args.out} "
          f"({sum(r['subtle'] for r in recs)} subtle; radii "
          f"{min(r['radius_px'] for r in recs):.1f}-{max(r['radius_px'] for r in recs):.1f} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
