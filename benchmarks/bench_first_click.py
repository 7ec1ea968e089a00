"""Time to the first click: wall time of ``napari-cuts segment IMAGE --out DIR`` with
default settings, each run in a fresh Python process.

    napari-cuts bench first-click [--quick] [--device cuda] [--results-md benchmarks/RESULTS.md]

Five inputs (shapes as the command reads them, (Z, Y, X) for volumes):

- ``fundus``: ``sample_data/fundus.png`` (512 x 512 RGB); no ground truth;
- ``hippocampus``: the ``msd_hippocampus`` case whose file shape is closest to
  35 x 50 x 40 (ground truth ``labelsTr/<case> > 0``); skipped without the shared data;
- ``oblique``: the bundled MNI T1 resampled onto 58 slices of 3 mm (176 x 206 at 1 mm in
  plane), slices tilted 15 and 10 degrees, each the mean of a 3 mm slab, with noise and a
  bias field; its ventricle pseudo ground truth resampled nearest;
- ``glioma``: a grid stand-in of a BraTS T2 volume (240 x 240 x 155 at 1 mm in the file):
  the MNI T1 padded and cropped onto that grid, noise inside the head, zero outside
  (its contrast is the T1's, not a T2's);
- ``mni``: ``sample_data/mri_volume.nii.gz`` (197 x 233 x 189, 1 mm) itself.

Stand-ins are written to a temporary folder from a fixed seed (identical bytes every
time). Per input: the median wall time of 3 runs (``quick``: 1 run, fundus and
hippocampus only), the process's peak RSS, the median of every ``seconds_*`` stage of
``run.json`` (``steps`` and ``device`` copied when present), and where a ground truth
exists, the Dice of one positive click at its innermost voxel
(:func:`napari_cuts.evaluation.clicks.first_click`,
:func:`napari_cuts.segment_from_prompts`) and the best level's label-hint Dice
(:func:`napari_cuts.evaluation.best_level`, an oracle). ``identical_runs``: every array
of the runs' ``hierarchy.npz`` equal. ``met``: median seconds and max peak within the
input's target; ``all_met``: every row met (a skipped or failed row is not).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLE = REPO / "src" / "napari_cuts" / "sample_data"
sys.path.insert(0, str(HERE))
from _segment_process import run_segment  # noqa: E402
from oblique_volume import rotation  # noqa: E402

RUNS = 3
#: (seconds, MB or None) per input.
TARGETS = {"fundus": (10.0, None), "hippocampus": (15.0, None), "oblique": (45.0, None),
           "glioma": (60.0, 3072.0), "mni": (60.0, 3072.0)}
QUICK_ROWS = ("fundus", "hippocampus")
#: The hippocampus case is the one whose file (nibabel) shape is closest to this.
HIPPOCAMPUS_SHAPE = (35, 50, 40)
#: File (nibabel i, j, k) shapes and voxel sizes of the stand-ins.
OBLIQUE_SHAPE, OBLIQUE_ZOOMS = (176, 206, 58), (1.0, 1.0, 3.0)
GLIOMA_SHAPE = (240, 240, 155)
SEED = 0


def shared_data() -> Path:
    return Path(os.environ.get("NAPARI_CUTS_DATA", REPO.parent / "shared" / "data"))


# ------------------------------------------------------------------------ inputs

def hippocampus_case(data: Path | None = None):
    """``(name, image, labels, file shape)`` of the case closest to
    :data:`HIPPOCAMPUS_SHAPE` (ties: the first by name), or None without the data."""
    import nibabel as nib

    root = (data or shared_data()) / "msd_hippocampus"
    best = None
    for img in sorted((root / "imagesTr").glob("*.nii.gz")):
        lab = root / "labelsTr" / img.name
        if img.name.startswith(".") or not lab.is_file():
            continue
        shape = tuple(int(v) for v in nib.load(img).shape[:3])
        d = sum((a - b) ** 2 for a, b in zip(shape, HIPPOCAMPUS_SHAPE))
        if best is None or d < best[0]:
            best = (d, img.name[:-len(".nii.gz")], img, lab, shape)
    return None if best is None else best[1:]


def _mni():
    import nibabel as nib

    img = nib.load(SAMPLE / "mri_volume.nii.gz")
    seg = nib.load(SAMPLE / "mri_volume_seg.nii.gz")
    vol = np.asarray(img.dataobj, dtype=np.float32)
    lab = np.asarray(seg.dataobj)
    return img.affine, vol, lab


def _head_box(vol: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first and last voxel index of the head (above 10 % of the maximum)."""
    idx = np.argwhere(vol > 0.1 * float(vol.max()))
    return idx.min(0), idx.max(0)


def _save_pair(out: Path, name: str, img: np.ndarray, lab: np.ndarray, aff: np.ndarray):
    import nibabel as nib

    out.mkdir(parents=True, exist_ok=True)
    p_img, p_seg = out / f"{name}.nii.gz", out / f"{name}_seg.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), p_img)
    nib.save(nib.Nifti1Image(lab.astype(np.uint8), aff), p_seg)
    return p_img, p_seg


def make_oblique(out: Path, seed: int = SEED) -> tuple[Path, Path]:
    """``oblique.nii.gz`` / ``oblique_seg.nii.gz`` in ``out``: the MNI resampled onto
    :data:`OBLIQUE_SHAPE` voxels of :data:`OBLIQUE_ZOOMS` mm (file order), the grid
    rotated by :func:`oblique_volume.rotation` (15, 10) degrees about the head's centre;
    each thick voxel the mean of 1 mm samples across its slab (linear), the ground truth
    the slab centre's label (nearest); Rician-like noise (3 % of the maximum) and a
    +-20 % bias field as in :func:`oblique_volume.make_oblique`."""
    from scipy import ndimage

    aff_in, vol, lab = _mni()
    lo, hi = _head_box(vol)
    rot = rotation(15.0, 10.0)
    zooms = np.asarray(OBLIQUE_ZOOMS, float)
    m = rot @ np.diag(zooms)                          # out index -> MNI index (linear)
    c_out = (np.asarray(OBLIQUE_SHAPE, float) - 1) / 2
    offset = (lo + hi) / 2.0 - m @ c_out
    thick = int(np.argmax(zooms))
    n_slab = int(round(zooms[thick]))
    samples = []
    for d in np.arange(n_slab) - (n_slab - 1) / 2.0:  # 1 mm samples across the slab
        shift = np.zeros(3)
        shift[thick] = d
        samples.append(ndimage.affine_transform(vol, m, offset=offset + rot @ shift,
                                                output_shape=OBLIQUE_SHAPE, order=1,
                                                mode="constant", cval=0.0))
    slab = np.mean(samples, axis=0)
    gt = ndimage.affine_transform(lab, m, offset=offset, output_shape=OBLIQUE_SHAPE, order=0,
                                  mode="constant", cval=0)
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.linspace(0, 1, n) for n in OBLIQUE_SHAPE], indexing="ij")
    bias = 1.0 + 0.2 * (np.cos(np.pi * ii) * np.cos(0.8 * np.pi * jj + 0.3)
                        * np.cos(0.6 * np.pi * kk))
    sigma = 0.03 * float(vol.max())
    noisy = np.sqrt((slab * bias + rng.normal(0, sigma, OBLIQUE_SHAPE)) ** 2
                    + rng.normal(0, sigma, OBLIQUE_SHAPE) ** 2)
    aff = np.eye(4)
    aff[:3, :3] = aff_in[:3, :3] @ m
    aff[:3, 3] = aff_in[:3, :3] @ offset + aff_in[:3, 3]
    return _save_pair(out, "oblique", noisy.astype(np.float32), gt, aff)


def make_glioma(out: Path, seed: int = SEED) -> tuple[Path, Path]:
    """``glioma.nii.gz`` / ``glioma_seg.nii.gz`` in ``out``: the MNI (1 mm) padded with
    zeros or cropped to :data:`GLIOMA_SHAPE` (file order), centred on the head's box;
    Rician-like noise (2 % of the maximum) inside the head, zero outside, int16 as BraTS
    ships; the ventricle ground truth on the same grid."""
    aff_in, vol, lab = _mni()
    lo, hi = _head_box(vol)
    start = []                                        # MNI index of the output's voxel 0
    for n_in, n_out, a, b in zip(vol.shape, GLIOMA_SHAPE, lo, hi):
        s = int(round((a + b + 1) / 2.0 - n_out / 2.0))
        start.append(min(max(s, 0), n_in - n_out) if n_out <= n_in else s)
    src = tuple(slice(max(s, 0), min(s + n, n_in))
                for s, n, n_in in zip(start, GLIOMA_SHAPE, vol.shape))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
    img = np.zeros(GLIOMA_SHAPE, np.float32)
    gt = np.zeros(GLIOMA_SHAPE, np.uint8)
    img[dst], gt[dst] = vol[src], lab[src]
    rng = np.random.default_rng(seed)
    sigma = 0.02 * float(vol.max())
    noisy = np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2
                    + rng.normal(0, sigma, img.shape) ** 2)
    noisy[img <= 0] = 0.0
    aff = aff_in.copy()
    aff[:3, 3] = aff_in[:3, :3] @ np.asarray(start, float) + aff_in[:3, 3]
    return _save_pair(out, "glioma", np.rint(noisy * 4).astype(np.int16), gt, aff)


def inputs(tmp: Path, names) -> dict:
    """``{name: {"image", "gt" (path or None), "about", ...} or {"skipped": why}}``."""
    out = {}
    for name in names:
        if name == "fundus":
            p = SAMPLE / "fundus.png"
            out[name] = ({"image": p, "gt": None, "about": "sample_data/fundus.png"}
                         if p.is_file() else {"skipped": f"{p} not found"})
        elif name == "hippocampus":
            case = hippocampus_case()
            out[name] = ({"skipped": f"no msd_hippocampus case in {shared_data()}"} if case is None
                         else {"image": case[1], "gt": case[2], "case": case[0],
                               "file_shape": list(case[3]),
                               "about": f"msd_hippocampus/imagesTr/{case[1].name}"})
        elif name == "oblique":
            img, seg = make_oblique(tmp / "inputs")
            out[name] = {"image": img, "gt": seg, "about": "stand-in: MNI, 3 mm oblique slab, "
                         "noise and bias (seed 0)"}
        elif name == "glioma":
            img, seg = make_glioma(tmp / "inputs")
            out[name] = {"image": img, "gt": seg, "about": "stand-in: MNI on the BraTS grid, "
                         "noise inside the head (seed 0)"}
        elif name == "mni":
            out[name] = {"image": SAMPLE / "mri_volume.nii.gz",
                         "gt": SAMPLE / "mri_volume_seg.nii.gz",
                         "about": "sample_data/mri_volume.nii.gz"}
    return out


# ------------------------------------------------------------------------ checks

def differing_keys(a, b) -> list[str]:
    """The arrays of two ``.npz`` files that are not equal (``np.array_equal``), or that
    only one of them holds; empty when the files hold the same arrays."""
    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        keys = sorted(set(za.files) | set(zb.files))
        return [k for k in keys if k not in za.files or k not in zb.files
                or not np.array_equal(za[k], zb[k])]


def quality(folder: Path, gt_path: Path) -> dict:
    """Dice of one positive click at the innermost ground-truth voxel, and the best
    level's label-hint Dice, on a ``segment`` output folder."""
    from napari_cuts import read_image, segment_from_prompts
    from napari_cuts.evaluation import best_level
    from napari_cuts.evaluation.clicks import first_click
    from napari_cuts.metrics import dice
    from napari_cuts.session import load_hierarchy

    src = read_image(gt_path)
    gt = np.asarray(src.data) > 0
    point, _ = first_click(gt, src.spacing)
    click = dice(segment_from_prompts(folder, [point]), gt)
    _, level, best = best_level(load_hierarchy(folder / "hierarchy.npz"), gt)
    return {"point": list(point), "click_dice": float(click), "best_level_dice": float(best),
            "best_level": int(level)}


def _median(values):
    return None if not values else float(np.median(values))


def measure(name: str, spec: dict, tmp: Path, n: int, device: str) -> dict:
    """One row: ``n`` runs of the command on ``spec["image"]`` (module doc)."""
    target_s, target_mb = TARGETS[name]
    row = {k: v for k, v in spec.items() if k not in ("image", "gt")}
    row.update({"target_seconds": target_s, "target_mb": target_mb, "met": False})
    if "skipped" in spec:
        return row
    walls, peaks, summaries, quals, folders = [], [], [], [], []
    for r in range(n):
        out = tmp / name / f"run{r}"
        args = ["segment", str(spec["image"]), "--out", str(out)]
        if device != "auto":
            args += ["--device", device]
        job = run_segment(args, out)
        if "error" in job:
            row["error"] = job["error"]
            break
        walls.append(job["wall"])
        peaks.append(job["peak_mb"])
        summaries.append(job["summary"])
        folders.append(out)
        if spec["gt"] is not None:
            try:
                quals.append(quality(out, Path(spec["gt"])))
            except Exception as exc:  # noqa: BLE001 - a failed score is reported, not fatal
                quals.append({"error": f"{type(exc).__name__}: {exc}"})
    if summaries:
        s0 = summaries[0]
        row["shape"] = s0.get("shape")
        row["spacing"] = (s0.get("geometry") or {}).get("spacing")
        row["seconds"] = {"median": _median(walls), "runs": [round(w, 2) for w in walls]}
        row["peak_mb"] = {"median": _median(peaks), "max": max(peaks)}
        keys = sorted({k for s in summaries for k in s if k.startswith("seconds_")})
        row["stages"] = {k: _median([s[k] for s in summaries if isinstance(s.get(k), (int, float))])
                         for k in keys}
        for k in ("steps", "device"):
            if any(k in s for s in summaries):
                vals = [s.get(k) for s in summaries]
                row[k] = vals[0] if all(v == vals[0] for v in vals) else vals
        row["quality"] = None if not quals else {
            "runs": quals,
            "click_dice": _median([q["click_dice"] for q in quals if "error" not in q]),
            "best_level_dice": _median([q["best_level_dice"] for q in quals if "error" not in q])}
        diffs = sorted({k for f in folders[1:]
                        for k in differing_keys(folders[0] / "hierarchy.npz", f / "hierarchy.npz")})
        row["identical_runs"] = None if len(folders) < 2 else not diffs
        if diffs:
            row["differing_arrays"] = diffs
        row["met"] = ("error" not in row and row["seconds"]["median"] <= target_s
                      and (target_mb is None or row["peak_mb"]["max"] <= target_mb))
    shutil.rmtree(tmp / name, ignore_errors=True)
    return row


def run(quick: bool = False, device: str = "auto") -> dict:
    """The benchmark (module doc): ``{"device", "runs", "rows": {name: row}, "all_met"}``."""
    n = 1 if quick else RUNS
    names = QUICK_ROWS if quick else tuple(TARGETS)
    with tempfile.TemporaryDirectory(prefix="napari_cuts_bench_first_click_") as t:
        tmp = Path(t)
        specs = inputs(tmp, names)
        rows = {name: measure(name, specs[name], tmp, n, device) for name in names}
    return {"device": device, "runs": n, "quick": bool(quick), "rows": rows,
            "all_met": all(r["met"] for r in rows.values())}


if __name__ == "__main__":
    dev = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "auto"
    print(json.dumps(run(quick="--quick" in sys.argv, device=dev), indent=2))
