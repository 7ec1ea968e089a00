"""``napari-cuts evaluate``: segmentation quality measured the way the CUTS paper does.

:func:`run_evaluation` reads a labelled folder, runs the classical baselines and the
CUTS variants, scores every binary mask against the ground truth with
:mod:`napari_cuts.metrics`, and writes ``results.json``, ``results.md``,
``per_image.csv``, ``dice.png`` and ``examples.png``.

Folder layouts
--------------
- **Retina layout** (like ``shared/data/retina``): ``image_with_GA/imageN.png`` with
  ``label_with_GA/labelN.npy`` (0/1 masks of the same height and width). Images are
  scaled to [0, 1] by their dtype (uint8 / 255).
- **Volumes of several sequences** (scored in 3D, :func:`load_volumes`):
  ``case_<seq>.nii.gz`` files (``case_t1``, ``case_flair`` ...) with ``case_seg.nii.gz``
  are ONE case, one channel per sequence, sorted by ``<seq>`` (the same names in every
  case; the files and the mask on one grid: same shape, affines within 0.01 mm). A file
  belongs to the longest case name that has a ``_seg`` mask: ``case_t1.nii.gz`` is the
  sequence ``t1`` of case ``case`` when only ``case_seg.nii.gz`` exists, and the
  single-file case ``case_t1`` when ``case_t1_seg.nii.gz`` exists; ``case.nii.gz``, when
  present, is the case's one image (other ``case_*`` files are then left out, with a
  note). A 4D image (Decathlon ``imagesTr``) is several sequences too, named by
  ``dataset.json`` ``"modality"`` when it lists them.
- **NIfTI layout**: ``case.nii.gz`` (or ``.nii``) with ``case_seg.nii.gz`` beside it.
  Foreground is ``mask > 0`` (multi-label masks are merged). Intensities are scaled
  per volume to [0, 1] between the 0.5th and 99.5th percentiles. A 2D image is one
  sample. For a 3D volume (first axis = slices, as :func:`napari_cuts.io.read_image`
  gives it) the samples are the slice with the largest mask area plus up to
  :data:`SLICE_NEIGHBOURS` slices on each side that also contain the mask: the slices
  a reader would look at, a bounded number per case, never empty-mask slices.

Methods
-------
Binarisation: ``random`` is scored as drawn (two labels, label 1 = foreground,
without the label hint, as the paper's official code does); the other baselines and
``cuts_kmeans``/``cuts_persistent`` take the *label hint* (the cluster most frequent
under the ground truth, :func:`napari_cuts.selection.label_hint`).

- ``random``, ``watershed``, ``felzenszwalb`` (scale 1500, the setting behind the
  paper's table), ``felzenszwalb_s200`` (scale 200, sigma 1, min_size 10, the
  official repository's later setting; an extra row), ``slic`` (10 segments): see
  :mod:`napari_cuts.baselines`. Only ``random`` depends on the seed; the others are
  computed once and count for every seed.
- CUTS: for each seed one encoder is trained on all the images of the set (the paper
  trains per dataset) for ``seconds`` of wall time (default
  :data:`DEFAULT_SECONDS`) or ``epochs``; each image is embedded and condensed
  (:func:`napari_cuts.pipeline.segment_image`).

  - ``cuts_kmeans``: spectral k-means (k = 10) of the embeddings + label hint.
  - ``cuts_persistent``: the persistent-structures map + label hint.
  - ``cuts_best``: the hierarchy level whose label-hint mask has the best Dice, per
    image (an oracle, as in the paper). All metrics are those of that one mask; the
    paper's code took the best level *separately for each metric*, which makes its
    "best" Hausdorff/SSIM/ERGAS/RMSE slightly more optimistic than ours.
  - ``cuts_click``: no label hint; one click at the mask's innermost point (largest
    distance to the background, the middle of a plateau of equal depth,
    :func:`napari_cuts.selection.innermost_point`: where a clinician would click),
    answered by the tool's own rule (:func:`one_click`): the part of the clicked
    cluster connected to the click
    (:data:`CLICK_CONNECTED`); with ``ablation`` also ``cuts_click_whole``, the whole
    cluster.
  - ``cuts_click_refined``: the one-click structure and up to :data:`REFINE_STEPS`
    grow / shrink steps along its lineage; the best Dice is kept (:func:`refine_click`).
  - With ``ablation`` (``--ablation``): ``image_only_best`` / ``image_only_click`` on a
    hierarchy of the image channels alone (``segment_image(use_embeddings=False)``) and
    ``embedding_only_best`` / ``embedding_only_click`` on the unit embeddings alone
    (``image_weight=0``); the same oracle and the same click rule as the CUTS rows.
    On volumes of two or more sequences also ``seq_<name>_best`` / ``seq_<name>_click``
    for each sequence alone: its own encoder trained on that one channel (the same
    budget), the same condensation, oracle and click (``run_evaluation_3d``).

Statistics: for each method and seed, the mean and standard error (``std(ddof=1) /
sqrt(n)``, NaNs ignored) over images; reported values are the means of these over
seeds (``*_seed_sd`` is the spread of the per-seed means). Hausdorff/HD95 of an
empty prediction is the image diagonal (the paper's convention); ``n_empty`` counts
empty predictions (mean over seeds).
"""

from __future__ import annotations

import csv
import io as _io
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import __version__
from .baselines import BASELINES
from .errors import InputError, ReadError
from .hierarchy import CLICK_CONNECTED
from .images import Cancel, Progress, check_cancel, check_image, report
from .metrics import METRIC_KEYS, all_metrics
from .metrics import dice as dice_score
from .selection import innermost_point, label_hint, select_cluster

#: The rows that ``ablation=True`` (``--ablation``) adds, in 2D and in 3D: the same
#: condensation and click on the image channels alone (``image_only_*``, no network)
#: and on the unit embeddings alone (``embedding_only_*``, the image left out).
ABLATION_METHODS = ("cuts_click_whole", "image_only_best", "image_only_click",
                    "embedding_only_best", "embedding_only_click")
#: Every method, in table order (the paper's rows first, then the extras, then the
#: ablation rows).
METHODS = ("random", "watershed", "felzenszwalb", "felzenszwalb_s200", "slic",
           "cuts_kmeans", "cuts_persistent", "cuts_best", "cuts_click",
           "cuts_click_refined", *ABLATION_METHODS)
CUTS_METHODS = ("cuts_kmeans", "cuts_persistent", "cuts_best", "cuts_click",
                "cuts_click_refined", *ABLATION_METHODS)
#: The features each row family condenses: keyword arguments of
#: :func:`napari_cuts.pipeline.segment_image` / ``segment_volume``.
VARIANTS = {
    "cuts": {},                                    # embeddings joined to the image
    "image_only": {"use_embeddings": False},       # the image channels alone
    "embedding_only": {"image_weight": 0.0},       # the unit embeddings alone
}
#: Every ``*_click`` row takes, as the tool does by default, the part of the clicked
#: cluster connected to the click (:data:`napari_cuts.hierarchy.CLICK_CONNECTED`);
#: ``cuts_click_whole`` (``--ablation``) is the whole cluster (docs/decisions/0004).
#: How far ``cuts_click_refined`` walks the clicked lineage each way (grow / shrink).
REFINE_STEPS = 3
#: Names shown in results.md.
DISPLAY = {
    "random": "random",
    "watershed": "watershed (Otsu)",
    "felzenszwalb": "Felzenszwalb (scale 1500)",
    "felzenszwalb_s200": "Felzenszwalb (scale 200, sigma 1, min_size 10)",
    "slic": "SLIC (10 segments)",
    "cuts_kmeans": "CUTS + spectral k-means",
    "cuts_persistent": "CUTS + diffusion (persistent)",
    "cuts_best": "CUTS + diffusion (best granularity)",
    "cuts_click": "CUTS + diffusion, one click (tool's own answer, no labels)",
    "cuts_click_refined": "CUTS + diffusion, one click then <= 3 grow/shrink steps (best Dice)",
    "cuts_click_whole": "CUTS + diffusion, one click, the whole cluster (every part of the image it covers)",
    "image_only_best": "no encoder (image channels alone), best granularity",
    "image_only_click": "no encoder (image channels alone), one click",
    "embedding_only_best": "embeddings alone (no image channels), best granularity",
    "embedding_only_click": "embeddings alone (no image channels), one click",
}
#: The paper's retina figures (Dice, Hausdorff in pixels) for the methods we run.
PAPER_RETINA = {
    "source": ("CUTS: Liu, Amodio et al., arXiv 2209.11359, Table 1, retina (56 images, "
               "label-hint binarisation); as listed in shared/data/retina/README.md"),
    "methods": {
        "random": {"dice": 0.132, "hausdorff": 78.44},
        "watershed": {"dice": 0.187, "hausdorff": 61.60},
        "felzenszwalb": {"dice": 0.222, "hausdorff": 64.05},
        "slic": {"dice": 0.567, "hausdorff": 28.76},
        "cuts_kmeans": {"dice": 0.673, "hausdorff": 27.75},
        "cuts_persistent": {"dice": 0.685, "hausdorff": 27.43},
        "cuts_best": {"dice": 0.735, "hausdorff": 25.28},
    },
}
#: Training budget per seed (seconds of wall time) when neither seconds nor epochs is given.
DEFAULT_SECONDS = 120.0
#: For 3D volumes: slices on each side of the largest-mask slice (if they hold mask).
SLICE_NEIGHBOURS = 2
#: k of spectral k-means, as in the paper.
KMEANS_K = 10
#: Images shown in examples.png.
N_EXAMPLES = 4


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


# --------------------------------------------------------------------------- reading

def _to_unit(arr: np.ndarray) -> np.ndarray:
    """Scale an image to float32 [0, 1]: uint8 / 255, other dtypes min-max unless already in [0, 1]."""
    a = np.asarray(arr)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if 0.0 <= lo and hi <= 1.0:
        return a
    return ((a - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def _robust_unit(vol: np.ndarray) -> np.ndarray:
    v = np.asarray(vol, dtype=np.float32)
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.zeros_like(v)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _numeric_key(name: str):
    m = re.search(r"(\d+)", name)
    return (int(m.group(1)) if m else math.inf, name)


def _read_png(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(path))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a read error
        raise ReadError(f"cannot read the image {path}: {exc}; check the file.") from None
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if img.ndim == 2:
        img = img[..., None]
    return _to_unit(img)


def _load_retina(root: Path, img_dir: Path, lab_dir: Path, limit) -> Dataset:
    notes = []
    files = sorted([p for p in img_dir.iterdir() if p.suffix.lower() in (".png", ".jpg",
                    ".jpeg", ".tif", ".tiff") and p.name.startswith("image")],
                   key=lambda p: _numeric_key(p.stem))
    samples = []
    for f in files:
        ident = f.stem[len("image"):]
        lab = lab_dir / f"label{ident}.npy"
        if not lab.exists():
            notes.append(f"{f.name}: no {lab.name}; skipped.")
            continue
        if limit is not None and len(samples) >= limit:
            break
        img = _read_png(f)
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


def _read_nifti(path: Path):
    """(data, rgb) with volumes as (Z, Y, X) like napari_cuts.io.read_image gives them."""
    try:
        from .io import read_image
    except ImportError:  # io not available: read with nibabel, axes reversed to (Z, Y, X)
        read_image = None
    if read_image is not None:
        src = read_image(path)
        return np.asarray(src.data), bool(getattr(src, "rgb", False))
    import nibabel as nib

    try:
        data = np.asarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # noqa: BLE001
        raise ReadError(f"cannot read {path}: {exc}; check the file.") from None
    data = np.squeeze(data)
    return np.transpose(data, tuple(range(data.ndim))[::-1]), False


def _nifti_pairs(root: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for seg in sorted(root.glob("*_seg.nii*")):
        base = seg.name[: seg.name.index("_seg.nii")]
        for ext in (".nii.gz", ".nii"):
            img = root / f"{base}{ext}"
            if img.exists():
                pairs.append((img, seg))
                break
    return pairs


def _load_nifti(root: Path, pairs, limit) -> Dataset:
    notes = []
    samples = []
    for img_path, seg_path in pairs:
        if limit is not None and len(samples) >= limit:
            break
        data, rgb = _read_nifti(img_path)
        seg, _ = _read_nifti(seg_path)
        seg = np.asarray(seg) > 0
        case = img_path.name.split(".nii")[0]
        spatial = data.shape[:-1] if rgb else data.shape
        if seg.shape != spatial:
            raise InputError(f"{seg_path.name} has shape {seg.shape} but {img_path.name} has "
                             f"{spatial}; the mask must match the image voxel for voxel.")
        vol = data.astype(np.float32)
        vol = _robust_unit(vol) if not rgb else _to_unit(vol)
        if seg.ndim == 2 or (rgb and seg.ndim == 2):
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
        ds = _load_retina(root, img_dir, lab_dir, limit)
    else:
        pairs = _nifti_pairs(root)
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
        ds = _load_nifti(root, pairs, limit)
    if not ds.samples:
        raise InputError(f"{root}: no image with a non-empty mask to evaluate "
                         f"({'; '.join(ds.notes[:3]) or 'nothing found'}).")
    chans = {s.image.shape[-1] for s in ds.samples}
    if len(chans) > 1:
        raise InputError(f"{root} mixes images with {sorted(chans)} channels; one encoder "
                         "is trained per set, so give all grey or all colour images.")
    return ds


# --------------------------------------------------------------------------- statistics

def _sem(values: np.ndarray) -> float:
    v = values[np.isfinite(values)]
    if v.size < 2:
        return 0.0 if v.size == 1 else float("nan")
    return float(np.std(v, ddof=1) / math.sqrt(v.size))


def summarise(per_seed: dict) -> dict:
    """Means and SEMs over images, then means over seeds.

    ``per_seed``: ``{seed: [per-image metric dicts]}``. Returns ``{metric: mean,
    metric_sem: .., metric_seed_sd: .., "n_images": .., "n_empty": ..}``.
    """
    out: dict = {}
    seeds = list(per_seed)
    for key in METRIC_KEYS:
        means, sems = [], []
        for s in seeds:
            vals = np.array([r[key] for r in per_seed[s]], dtype=np.float64)
            means.append(float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan"))
            sems.append(_sem(vals))
        out[key] = float(np.mean(means))
        out[f"{key}_sem"] = float(np.mean(sems))
        out[f"{key}_seed_sd"] = float(np.std(means)) if len(means) > 1 else 0.0
    out["n_images"] = int(np.mean([len(per_seed[s]) for s in seeds]))
    out["n_empty"] = float(np.mean([sum(bool(r.get("empty_pred")) for r in per_seed[s])
                                    for s in seeds]))
    return out


def _clean(obj):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# --------------------------------------------------------------------------- CUTS

def _upsample(labels: np.ndarray, pool: int, shape) -> np.ndarray:
    if pool == 1 and labels.shape == tuple(shape):
        return labels
    big = np.repeat(np.repeat(labels, pool, axis=0), pool, axis=1)
    return big[: shape[0], : shape[1]]


def _cluster_at(hier, level: int, point) -> np.ndarray:
    lab = np.asarray(hier.labels(int(level)))
    idx = tuple(int(round(float(v))) for v in point)
    return lab == lab[idx]


def _clicks_connected(hier) -> bool:
    """Whether the tool's click on ``hier`` is the connected part (:data:`CLICK_CONNECTED`
    and a hierarchy that has connected structures)."""
    return bool(CLICK_CONNECTED) and callable(getattr(hier, "structure", None))


def one_click(hier, point) -> tuple[np.ndarray, dict]:
    """The tool's answer to one click at ``point``, without labels: the structure under
    the click at :meth:`napari_cuts.hierarchy.Hierarchy.click_level` (the most persistent
    structure along the clicked lineage), its part connected to the click
    (:func:`_clicks_connected`). The same rule for every ``*_click`` row (2D and 3D, with
    and without the encoder). Returns ``(mask, info)``; ``info["level"]`` is the level
    the mask lives at, the start of :func:`refine_click`."""
    conn = _clicks_connected(hier)
    lv = int(hier.click_level(point, connected=True) if conn else hier.click_level(point))
    mask = hier.structure(point, lv, connected=True) if conn else _cluster_at(hier, lv, point)
    setting = "click_level, connected" if conn else "click_level"
    return mask, {"level": lv, "n_clusters": int(np.asarray(hier.n_clusters)[lv]),
                  "setting": setting}


def refine_candidates(hier, point, start_level: int,
                      steps: int = REFINE_STEPS, connected: bool = False) -> list[int]:
    """The levels a user walking the clicked structure can reach from ``start_level``:
    it, then up to ``steps`` real merges up and ``steps`` strictly smaller structures
    down the clicked lineage (:meth:`~napari_cuts.hierarchy.Hierarchy.step_level`; with
    ``connected``, of the connected structure under the click), without repeats (fewer
    near the root or the finest level)."""
    levels = [int(start_level)]
    for direction in (+1, -1):
        lv = int(start_level)
        for _ in range(int(steps)):
            nxt = int(hier.step_level(point, lv, direction, connected=True) if connected
                      else hier.step_level(point, lv, direction))
            if nxt == lv:
                break
            lv = nxt
            levels.append(lv)
    return levels


def refine_click(hier, point, gt, start_mask, start_level: int,
                 steps: int = REFINE_STEPS, connected: Optional[bool] = None) -> tuple[np.ndarray, dict]:
    """``cuts_click_refined``: the one-click mask and the structures up to ``steps``
    grow / shrink steps from its level (:func:`refine_candidates`); the candidate with
    the best Dice against ``gt`` is kept (a user who stops when the mask looks right).
    Ties keep the click's own answer, then the fewest steps. ``connected`` (default: as
    the click, :data:`CLICK_CONNECTED`): the steps and masks are of the connected
    structure under the click."""
    if connected is None:
        connected = _clicks_connected(hier)
    best, best_d = np.asarray(start_mask, dtype=bool), dice_score(start_mask, gt)
    best_lv, best_step = int(start_level), 0
    cands = refine_candidates(hier, point, start_level, steps, connected=connected)
    for k, lv in enumerate(cands[1:], start=1):
        m = hier.structure(point, lv, connected=True) if connected else _cluster_at(hier, lv, point)
        d = dice_score(m, gt)
        if d > best_d + 1e-12:
            best, best_d, best_lv, best_step = m, d, lv, k
    up = sum(1 for lv in cands[1:] if lv > start_level)
    step = 0 if best_step == 0 else (best_step if best_step <= up else -(best_step - up))
    return best, {"level": best_lv, "n_clusters": int(np.asarray(hier.n_clusters)[best_lv]),
                  "setting": f"step {step:+d} of {len(cands)} candidates"}


def _hierarchy_rows(hier, gt, point, prefix: str, wanted: set) -> dict:
    """``{method: (mask, info)}`` of the ``prefix`` rows wanted (``_best``,
    ``_persistent``, ``_click``, ``_click_refined``) on one hierarchy."""
    out: dict = {}
    if f"{prefix}_best" in wanted:
        m, lv, _ = best_level(hier, gt)
        out[f"{prefix}_best"] = (m, {"level": lv, "n_clusters": int(hier.n_clusters[lv])})
    if f"{prefix}_persistent" in wanted:
        out[f"{prefix}_persistent"] = (label_hint(np.asarray(hier.persistent()), gt), {})
    if wanted & {f"{prefix}_click", f"{prefix}_click_refined"}:
        m, info = one_click(hier, point)
        if f"{prefix}_click" in wanted:
            out[f"{prefix}_click"] = (m, info)
        if f"{prefix}_click_refined" in wanted:
            out[f"{prefix}_click_refined"] = refine_click(hier, point, gt, m, info["level"])
    if f"{prefix}_click_whole" in wanted:
        # the widget with "Connected part only" unticked: the whole cluster, every part of
        # the image it covers, at the level chosen on the whole cluster's sizes
        lv = int(hier.click_level(point, connected=False))
        out[f"{prefix}_click_whole"] = (_cluster_at(hier, lv, point), {
            "level": lv, "n_clusters": int(np.asarray(hier.n_clusters)[lv]),
            "setting": "click_level, whole cluster"})
    return out


def _cuts_masks(encoder, sample: Sample, seed: int, wanted: set, cancel: Cancel,
                timings: dict, save_dir=None) -> tuple[dict, dict]:
    """``({method: (mask, info)}, facts about the levels)`` of the CUTS methods (and
    the ablation rows) for one image: one hierarchy per variant of :data:`VARIANTS`."""
    from .pipeline import segment_image

    masks: dict = {}
    info: dict = {}
    gt = sample.mask
    point = innermost_point(gt)
    for prefix, kwargs in VARIANTS.items():
        mine = {m for m in wanted if m.startswith(prefix + "_")}
        if not mine:
            continue
        key = "segment" if prefix == "cuts" else f"segment_{prefix}"
        t0 = time.perf_counter()
        res = segment_image(encoder, sample.image, seed=seed, cancel=cancel, **kwargs)
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
        hier = res.hierarchy
        if save_dir is not None:
            suffix = "" if prefix == "cuts" else f"_{prefix}"
            hier.save(Path(save_dir) / f"{sample.name}_seed{seed}{suffix}.npz")
        if prefix == "cuts" and "cuts_kmeans" in mine:
            from .clustering import spectral_kmeans

            t0 = time.perf_counter()
            km = spectral_kmeans(res.features, k=KMEANS_K, seed=seed, cancel=cancel)
            km = _upsample(np.asarray(km), res.pool, gt.shape)
            timings["kmeans"] = timings.get("kmeans", 0.0) + time.perf_counter() - t0
            masks["cuts_kmeans"] = (label_hint(km, gt), {})
        check_cancel(cancel)
        t0 = time.perf_counter()
        masks.update(_hierarchy_rows(hier, gt, point, prefix, mine))
        timings["scoring"] = timings.get("scoring", 0.0) + time.perf_counter() - t0
        if prefix == "cuts":
            if wanted & {"cuts_persistent", "cuts_click"}:
                info["persistent_clusters"] = int(np.unique(np.asarray(hier.persistent())).size)
            if "cuts_best" in masks:
                info["best_level_clusters"] = masks["cuts_best"][1]["n_clusters"]
            info["n_levels"] = int(hier.n_levels)
    return masks, info


# --------------------------------------------------------------------------- outputs

def _write_text(path: Path, text: str) -> None:
    from .fileutil import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def _fmt(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{nd}f}"


def _budget(result: dict) -> str:
    parts = []
    if result.get("epochs") is not None:
        parts.append(f"{result['epochs']:g} epochs")
    if result.get("train_seconds") is not None:
        parts.append(f"{result['train_seconds']:g} s")
    if not parts:
        return ""
    return "CUTS training budget per seed: " + " or ".join(parts) + "; "


def _markdown(result: dict, layout: str) -> str:
    methods = result["methods"]
    paper = PAPER_RETINA["methods"] if layout == "retina" else {}
    lines = [
        "# napari-cuts evaluation",
        "",
        f"Data: `{result['data']}` ({layout} layout), {result['n_images']} images; "
        f"seeds {result['seeds']}; " + _budget(result) +
        f"total wall time {result['seconds']:.0f} s.",
        "",
        "Mean ± standard error over images (mean over seeds). Dice, SSIM: higher is better; "
        "Hausdorff, HD95 (pixels), ERGAS, RMSE: lower is better.",
        "",
        "| method | Dice | paper Dice | Hausdorff | paper Hausdorff | HD95 | SSIM | ERGAS | RMSE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in METHODS:
        if name not in methods:
            continue
        r = methods[name]
        p = paper.get(name, {})
        lines.append(
            f"| {DISPLAY[name]} | {_fmt(r['dice'])} ± {_fmt(r['dice_sem'])} | "
            f"{_fmt(p.get('dice'))} | {_fmt(r['hausdorff'], 2)} ± {_fmt(r['hausdorff_sem'], 2)} | "
            f"{_fmt(p.get('hausdorff'), 2)} | {_fmt(r['hd95'], 2)} | {_fmt(r['ssim'])} | "
            f"{_fmt(r['ergas'], 0)} | {_fmt(r['rmse'])} |"
        )
    lines += [
        "",
        "Notes:",
        "- Paper figures: " + PAPER_RETINA["source"] + "; they are on 56 images, ours on the "
        "images above." if paper else "- Paper figures are shown only for the retina layout.",
        "- `random` is scored as drawn (2 labels, no label hint), as the paper's code does; the "
        "other baselines and CUTS k-means/persistent use the label hint (the cluster most "
        "frequent under the ground truth).",
        "- The paper's Felzenszwalb row used scale 1500 (the official repository's early "
        "setting); the scale-200 row is the repository's later setting, shown for reference.",
        "- CUTS best granularity is an oracle: the level with the best label-hint Dice per image "
        "(all metrics of that level's mask). CUTS one click: no label hint; the structure "
        "under a click at the mask's innermost point, by the tool's own rule "
        f"({result.get('click_rule') or 'click_level'}), the same rule for every one-click row. "
        "One click + grow/shrink: that structure and up to 3 steps up and 3 down its "
        "lineage (`Hierarchy.step_level`), the candidate with the best Dice kept (a user "
        "who stops when the mask looks right).",
        "- Ablation rows (`--ablation`): the same condensation, levels and click on the "
        "encoder-normalised image channels alone (no network: `image_only_*`) and on the "
        "unit embeddings alone (no image channels: `embedding_only_*`); `cuts_click_whole`: "
        "the whole clicked cluster instead of its part connected to the click.",
        "- Hausdorff/HD95 of an empty prediction = the image diagonal (paper's convention).",
        "",
    ]
    return "\n".join(lines)


def _figure_dice(per_image_dice: dict, path: Path, layout: str, order=None,
                 ylabel: str = "Dice (per image, mean over seeds)",
                 title: str = "Dice per image") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fileutil import save_figure

    names = [m for m in (METHODS if order is None else order) if m in per_image_dice]
    data = [np.asarray(per_image_dice[m], dtype=float) for m in names]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 4.2), dpi=110)
    ax.boxplot(data, showfliers=False, widths=0.55)
    ax.set_xticks(range(1, len(names) + 1))
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.18, 0.18, d.size), d, s=9, alpha=0.55, color="tab:blue",
                   zorder=3)
    if layout == "retina":
        for i, m in enumerate(names, start=1):
            p = PAPER_RETINA["methods"].get(m)
            if p:
                ax.scatter([i], [p["dice"]], marker="D", color="tab:red", s=28, zorder=4,
                           label="paper (56 images)" if i == 1 else None)
        ax.legend(loc="upper left", fontsize=7)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def _figure_examples(samples: list, masks: dict, path: Path) -> None:
    """Rows: example images; columns: image, ground truth, each method's mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fileutil import save_figure

    idx = sorted(masks)
    names = [m for m in METHODS if any(m in masks[i] for i in idx)]
    cols = 2 + len(names)
    fig, axes = plt.subplots(len(idx), cols, figsize=(1.6 * cols, 1.7 * len(idx) + 0.3),
                             dpi=100, squeeze=False)
    for r, i in enumerate(idx):
        s = samples[i]
        img = s.image[..., 0] if s.image.shape[-1] == 1 else s.image[..., :3]
        panels = [("image", None), ("ground truth", s.mask)] + [
            (m, masks[i].get(m)) for m in names]
        for c, (title, m) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
            if m is not None:
                over = np.zeros(m.shape + (4,), dtype=float)
                colour = (0.1, 0.9, 0.2) if title == "ground truth" else (1.0, 0.2, 0.6)
                over[m] = (*colour, 0.5)
                ax.imshow(over, interpolation="nearest")
                if title != "ground truth":
                    ax.contour(s.mask.astype(float), levels=[0.5], colors="lime",
                               linewidths=0.6)
                    title = f"{title}\nDice {dice_score(m, s.mask):.2f}"
            if r == 0 or c >= 2:
                ax.set_title(title, fontsize=6)
            if c == 0:
                ax.set_ylabel(s.name, fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("masks (magenta) against the ground truth (green outline)", fontsize=8)
    save_figure(fig, path)


def _training_progress(progress: Progress, base: int, n: int, total: int, seed: int):
    """The training's progress mapped onto the ``n`` steps after ``base`` of the run."""
    def cb(d, t, msg):
        frac = min(max(d / t, 0.0), 1.0) if t else 0.0
        report(progress, base + int(frac * n), total, f"seed {seed}: training: {msg}")
    return cb


# --------------------------------------------------------------------------- main entry

def _check_seeds_seconds(seeds, seconds) -> list[int]:
    """The seeds as ints (at least one, distinct); a clear error for a bad budget."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InputError("give at least one seed.")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds {seeds} repeat; give distinct seeds.")
    if seconds is not None and seconds <= 0:
        raise InputError(f"seconds must be positive (got {seconds}).")
    return seeds


def run_evaluation(data_dir, out_dir, *, seeds: Sequence[int] = (1, 2, 3),
                   seconds: Optional[float] = None, epochs: Optional[float] = None,
                   methods: Optional[Sequence[str]] = None, limit: Optional[int] = None,
                   device: str = "auto", progress: Progress = None,
                   cancel: Cancel = None, labels: Optional[Sequence[float]] = None,
                   ablation: bool = False, split: str = "all",
                   cases: Optional[Sequence[str]] = None, volumes: str = "3d",
                   save_hierarchies: bool = False, init=None) -> dict:
    """Evaluate the baselines and the CUTS variants on a labelled folder.

    ``init`` (2D images only): every seed's encoder starts from these weights (a path,
    or True for the packaged warm-start weights of the images' channel count) and is
    fine-tuned for the budget; None trains from scratch.

    A folder of volumes (a Decathlon folder, or NIfTI volumes with ``*_seg.nii.gz``
    masks) is scored in 3D by :func:`run_evaluation_3d` (``labels``, ``ablation``,
    ``split``, ``cases``, ``save_hierarchies``: see there); ``volumes="slices"`` keeps
    the per-slice samples of the module doc instead. Everything below is the 2D path.

    ``data_dir``: retina or NIfTI layout (module doc). ``out_dir``: created if needed;
    receives ``results.json``, ``results.md``, ``per_image.csv``, ``dice.png`` and
    ``examples.png`` (each written atomically). ``seeds``: one encoder is trained per
    seed; ``seconds``/``epochs``: its budget (default :data:`DEFAULT_SECONDS` s).
    ``methods``: a subset of :data:`METHODS` (default all but :data:`ABLATION_METHODS`,
    which ``ablation=True`` adds). ``limit``: only the first N images (slices, for
    volumes). ``save_hierarchies``: also write
    ``hierarchies/<image>_seed<S>[_image_only|_embedding_only].npz``. Returns the ``results.json`` content:
    ``{"methods": {name: {"dice": .., "hausdorff": .., "hd95": .., "ssim": ..,
    "ergas": .., "rmse": .., "<metric>_sem": .., "<metric>_seed_sd": .., "n_images": ..,
    "n_empty": ..}}, "seconds": .., "n_images": .., "seeds": [...], ...}``.
    """
    if volumes not in ("3d", "slices"):
        raise InputError(f"volumes must be '3d' or 'slices' (got {volumes!r}).")
    if volumes == "3d" and volume_layout(data_dir) is not None:
        if init is not None:
            raise InputError("--warm-start applies to 2D images; volumes train from scratch.")
        return run_evaluation_3d(data_dir, out_dir, seeds=seeds, seconds=seconds, epochs=epochs,
                                 methods=methods, limit=limit, device=device,
                                 progress=progress, cancel=cancel, labels=labels,
                                 ablation=ablation, split=split, cases=cases,
                                 save_hierarchies=save_hierarchies)
    if labels is not None or split != "all" or cases is not None:
        raise InputError("--label, --split and --cases apply to folders of volumes "
                         "(Decathlon imagesTr/labelsTr, or NIfTI volumes with *_seg.nii.gz "
                         "masks) scored in 3D; this folder holds 2D images.")
    t_start = time.perf_counter()
    default = [m for m in METHODS if ablation or m not in ABLATION_METHODS]
    chosen = default if methods is None else list(dict.fromkeys(methods))
    bad = [m for m in chosen if m not in METHODS]
    if bad or not chosen:
        raise InputError(f"unknown method(s) {bad or chosen}; choose from {', '.join(METHODS)}.")
    seeds = _check_seeds_seconds(seeds, seconds)
    # With both, training stops at whichever comes first (the encoder's rule).
    train_seconds = seconds if (seconds is not None or epochs is not None) else DEFAULT_SECONDS

    from .fileutil import make_output_dir

    out = make_output_dir(out_dir)
    hier_dir = None
    if save_hierarchies:
        hier_dir = out / "hierarchies"
        hier_dir.mkdir(exist_ok=True)

    ds = load_dataset(data_dir, limit=limit)
    samples = ds.samples
    n = len(samples)
    cuts_wanted = {m for m in chosen if m in CUTS_METHODS}
    base_wanted = [m for m in chosen if m in BASELINES]
    n_seed_units = 2 * n if cuts_wanted else 0  # training counts as n units, then n images
    total = (n if base_wanted else 0) + len(seeds) * n_seed_units + 1
    done = 0
    example_idx = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(N_EXAMPLES, n))})
    examples: dict = {i: {} for i in example_idx}
    per: dict = {m: {s: [] for s in seeds} for m in chosen}
    per_image_rows: list = []
    timings: dict = {}
    level_info: dict = {"n_levels": [], "best_level_clusters": [], "persistent_clusters": []}

    click_rules: set = set()

    def record(method, seed_list, i, mask, info=None):
        r = all_metrics(mask, samples[i].mask)
        info = info or {}
        for s in seed_list:
            per[method][s].append(r)
            per_image_rows.append({"method": method, "seed": s, "image": samples[i].name,
                                   **{k: r[k] for k in METRIC_KEYS},
                                   "empty_pred": int(r["empty_pred"]),
                                   "level": info.get("level", ""),
                                   "n_clusters": info.get("n_clusters", ""),
                                   "setting": info.get("setting", "")})
        if i in examples and seed_list[0] == seeds[0]:
            examples[i][method] = mask

    # Baselines: deterministic ones once (they count for every seed), random per seed.
    if base_wanted:
        t0 = time.perf_counter()
        for i, smp in enumerate(samples):
            check_cancel(cancel)
            report(progress, done, total, f"baselines: image {i + 1}/{n}")
            for m in base_wanted:
                fn, seeded, hint = BASELINES[m]
                runs = [(s, [s]) for s in seeds] if seeded else [(seeds[0], seeds)]
                for s, seed_list in runs:
                    lab = fn(smp.image, seed=s)
                    mask = label_hint(lab, smp.mask) if hint else lab > 0
                    record(m, seed_list, i, mask)
            done += 1
        timings["baselines"] = time.perf_counter() - t0

    # CUTS: one encoder per seed on all images, then every image.
    warm_start = None
    if cuts_wanted:
        from .encoder import train_encoder

        images = [s.image for s in samples]
        if init is True:
            from .encoder import packaged_weights

            init = packaged_weights(1 if images[0].ndim == 2 else images[0].shape[-1])
            if init is None:
                raise InputError("the package ships no warm-start weights for these images.")
        for si, seed in enumerate(seeds):
            check_cancel(cancel)
            base = done

            train_progress = _training_progress(progress, base, n, total, seed)

            report(progress, done, total, f"seed {seed}: training the encoder")
            t0 = time.perf_counter()
            enc = train_encoder(images, epochs=epochs, seconds=train_seconds, seed=seed,
                                device=device, progress=train_progress, cancel=cancel,
                                init=init)
            warm_start = enc.metadata.get("warm_start")
            timings["train"] = timings.get("train", 0.0) + time.perf_counter() - t0
            done = base + n
            for i, smp in enumerate(samples):
                check_cancel(cancel)
                report(progress, done, total, f"seed {seed}: image {i + 1}/{n}")
                masks, info = _cuts_masks(enc, smp, seed, cuts_wanted, cancel, timings,
                                          hier_dir)
                for k, v in info.items():
                    if k in level_info:
                        level_info[k].append(v)
                for m in METHODS:
                    if m in masks:
                        mask, minfo = masks[m]
                        if m.endswith("_click") and "setting" in minfo:
                            click_rules.add(minfo["setting"])
                        record(m, [seed], i, mask, minfo)
                done += 1

    report(progress, done, total, "writing results")
    check_cancel(cancel)
    seconds_total = time.perf_counter() - t_start
    result = {
        "methods": {m: summarise(per[m]) for m in METHODS if m in per},
        "seconds": round(seconds_total, 2),
        "n_images": n,
        "seeds": seeds,
        "data": str(Path(data_dir)),
        "layout": ds.layout,
        "click_rule": ", ".join(sorted(click_rules)) or None,
        "train_seconds": train_seconds if cuts_wanted else None,
        "epochs": epochs if cuts_wanted else None,
        "warm_start": warm_start if cuts_wanted else None,
        "device": device,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "levels": {k: (float(np.mean(v)) if v else None) for k, v in level_info.items()},
        "paper": PAPER_RETINA if ds.layout == "retina" else None,
        "notes": ds.notes,
        "napari_cuts_version": __version__,
    }
    result = _clean(result)

    from .fileutil import write_json

    # Per-image CSV
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["method", "seed", "image", *METRIC_KEYS, "empty_pred",
                                        "level", "n_clusters", "setting"])
    w.writeheader()
    for row in per_image_rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    _write_text(out / "per_image.csv", buf.getvalue())
    # Figures
    per_image_dice = {}
    for m in METHODS:
        if m in per:
            arr = np.array([[r["dice"] for r in per[m][s]] for s in seeds], dtype=float)
            per_image_dice[m] = np.nanmean(arr, axis=0)
    _figure_dice(per_image_dice, out / "dice.png", ds.layout)
    _figure_examples(samples, examples, out / "examples.png")
    _write_text(out / "results.md", _markdown(result, ds.layout))
    write_json(out / "results.json", result)
    report(progress, total, total, "done")
    return result


# =========================================================================== volumes (3D)
#
# A folder of volumes is scored volume by volume in 3D: one hierarchy per volume
# (pipeline.segment_volume), every metric on the whole (Z, Y, X) mask, never a mean
# over slices. See run_evaluation_3d.

#: The 3D methods, in table order.
METHODS_3D = ("slic3d", "cuts_persistent", "cuts_best", "cuts_click", "cuts_click_refined",
              *ABLATION_METHODS)
DISPLAY_3D = {
    "slic3d": "3D SLIC, supervoxel under the click (best setting per case: oracle)",
    "cuts_persistent": "CUTS, persistent map + label hint",
    "cuts_best": "CUTS, best level + label hint (oracle)",
    "cuts_click": "CUTS, one click (tool's own answer, no labels)",
    "cuts_click_refined": "CUTS, one click then <= 3 grow/shrink steps (best Dice)",
    "cuts_click_whole": "CUTS, one click, the whole cluster (every part of the volume it covers)",
    "image_only_best": "no encoder (image + slice context), best level + label hint (oracle)",
    "image_only_click": "no encoder (image + slice context), one click",
    "embedding_only_best": "embeddings alone (no image), best level + label hint (oracle)",
    "embedding_only_click": "embeddings alone (no image), one click",
}
#: The per-sequence rows of one sequence (``ablation`` on volumes with two or more
#: channels): the CUTS pipeline on that sequence alone, with its own encoder.
SEQUENCE_ROW_KINDS = ("best", "click")
#: Training budget per seed (seconds) for a set of volumes when neither seconds nor
#: epochs is given: one encoder for the whole set.
DEFAULT_SECONDS_3D = 60.0
_SEQ_ROW = re.compile(r"^seq_(.+)_(best|click)$")


def sequence_methods(keys: Sequence[str]) -> list[str]:
    """The per-sequence rows ``seq_<key>_best``, ``seq_<key>_click`` of every sequence
    key (:func:`sequence_keys`), in channel order."""
    return [f"seq_{k}_{kind}" for k in keys for kind in SEQUENCE_ROW_KINDS]


def _display_3d(method: str, names_by_key: dict) -> str:
    if method in DISPLAY_3D:
        return DISPLAY_3D[method]
    m = _SEQ_ROW.match(method)
    name = names_by_key.get(m.group(1), m.group(1)) if m else method
    what = ("best level + label hint (oracle)" if method.endswith("_best") else
            "one click (tool's own answer)")
    return f"sequence {name} alone (its own encoder), {what}"
#: ``split``: "dev" = the first half of the sorted case names (rounded up), "report" =
#: the rest, "all" = every case.
SPLITS = ("all", "dev", "report")
#: The columns of per_case.csv.
PER_CASE_FIELDS = ("method", "seed", "case", *METRIC_KEYS, "empty_pred", "gt_voxels",
                   "pred_voxels", "level", "n_clusters", "setting")


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


@dataclass
class NiftiCase:
    """One case of a NIfTI + ``*_seg`` folder: ``images`` one file (a single image,
    maybe 4D) or one file per sequence (``sequences`` their suffixes, sorted)."""

    name: str
    images: list
    seg: Path
    sequences: Optional[list] = None


def _case_name(path: Path) -> str:
    return path.name.split(".nii")[0]


def _is_nifti(path: Path) -> bool:
    n = path.name.lower()
    return (n.endswith(".nii.gz") or n.endswith(".nii")) and not n.startswith(".")


def _stem(path: Path) -> str:
    """The file name without ``.nii`` / ``.nii.gz``."""
    n = path.name
    for ext in (".nii.gz", ".nii"):
        if n.lower().endswith(ext):
            return n[: -len(ext)]
    return n


def _is_seg(path: Path) -> bool:
    return _stem(path).endswith("_seg")


def nifti_cases(root) -> tuple[list, list]:
    """The cases of a folder of NIfTI images with ``<case>_seg.nii.gz`` masks, sorted by
    name, and notes on files left out. Returns ``([NiftiCase], [note])``.

    Every mask ``<case>_seg.nii[.gz]`` names a case. Its image is ``<case>.nii[.gz]``
    when that file exists (one file, as before; a 4D file brings its own sequences);
    otherwise its sequences are the files ``<case>_<seq>.nii[.gz]``, one channel each,
    ordered by ``<seq>`` (sorted), so every case stacks them the same way. A file belongs
    to the LONGEST case name it starts with: ``case_t1.nii.gz`` is a sequence of case
    ``case`` when only ``case_seg.nii.gz`` exists, and a single-file case named
    ``case_t1`` when ``case_t1_seg.nii.gz`` exists. Files of a case that has its own
    ``<case>.nii.gz``, and files that no mask claims, are left out with a note."""
    root = Path(root)
    files = sorted((p for p in root.iterdir() if p.is_file() and _is_nifti(p)),
                   key=lambda p: p.name)
    segs = {_stem(p)[: -len("_seg")]: p for p in files if _is_seg(p)}
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
        if _is_seg(p) or p.name in claimed:
            continue
        stem = _stem(p)
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


def _decathlon_pairs(root: Path) -> tuple[list, list]:
    """(image, label) pairs of ``imagesTr/`` and ``labelsTr/`` (same file names), sorted
    by name; macOS ``._*`` files (the Decathlon tarballs ship them) are ignored."""
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    pairs, notes = [], []
    for f in sorted((p for p in img_dir.iterdir() if _is_nifti(p)), key=lambda p: p.name):
        lab = lab_dir / f.name
        if not lab.exists():
            notes.append(f"{f.name}: no labelsTr/{f.name}; skipped.")
            continue
        pairs.append((f, lab))
    return pairs, notes


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


def _read_image(path: Path):
    from .io import read_image

    return read_image(path)


_DEFAULT_HEADER_NAME = re.compile(r"^sequence \d+$")


def _read_case_image(paths: list, names: Optional[list]):
    """``(data (Z, Y, X[, C]), spacing, channel names or None, where the names came from,
    the image's affine or None)`` of one case: one file, or one file per sequence stacked
    on a last axis by :func:`napari_cuts.sequences.stack_sequences` (which checks one
    grid: same shape, affines within 0.01 mm, and names both files when not)."""
    if names is None:
        src = _read_image(paths[0])
        data = np.asarray(src.data)
        seq = src.sequences
        source = None
        if seq is not None:
            source = "header"
            if all(_DEFAULT_HEADER_NAME.match(s) for s in seq):  # the reader's own names
                seq, source = [str(i) for i in range(len(seq))], "index"
        return data, tuple(float(v) for v in src.spacing), seq, source, src.affine
    from .sequences import stack_sequences

    images = []
    for p, name in zip(paths, names):
        im = _read_image(p)
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
        return _robust_unit(vol)
    return np.stack([_robust_unit(vol[..., c]) for c in range(vol.shape[-1])], axis=-1)


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


def load_volumes(data_dir, *, labels: Optional[Sequence[float]] = None, split: str = "all",
                 cases: Optional[Sequence[str]] = None,
                 limit: Optional[int] = None) -> VolumeSet:
    """Read a folder of volumes (Decathlon or NIfTI + ``*_seg.nii.gz``) for 3D scoring.

    NIfTI cases are those of :func:`nifti_cases`: ``case.nii.gz`` (one file), or
    ``case_<seq>.nii.gz`` files, one channel each (sorted by ``<seq>``), on one grid
    (same shape, affines within 0.01 mm; the mask too), else an :class:`InputError`
    naming both files. A 4D image is several sequences (channels last). Channel names:
    the file suffixes, the Decathlon ``dataset.json`` ``"modality"``, the NIfTI header,
    or the channel index (``VolumeSet.sequences``, ``sequence_source``).

    Ground truth: :func:`structure_mask` of the label volume with ``labels``. Cases
    with an empty structure, 2D images and images that do not match their masks are
    skipped with a note (a mismatch is an error). Raises :class:`InputError` when no
    case is left, or when the cases differ in their sequences."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ReadError(f"the data folder {root} does not exist; give --data a folder.")
    layout = volume_layout(root)
    if layout is None:
        raise InputError(f"{root} holds no volumes: expected imagesTr/ and labelsTr/ (the "
                         "Decathlon layout) or NIfTI volumes with case_seg.nii.gz masks "
                         "(case.nii.gz, or one case_<seq>.nii.gz per sequence).")
    modalities = None
    if layout == "decathlon":
        pairs, notes = _decathlon_pairs(root)
        found = [NiftiCase(_case_name(img), [img], lab) for img, lab in pairs]
        modalities = decathlon_modalities(root)
    else:
        found, notes = nifti_cases(root)
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
        seg_src = _read_image(case.seg)
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
            from .sequences import AFFINE_TOLERANCE_MM, affine_distance_mm

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


# --------------------------------------------------------------------------- 3D metrics

def _surface(m: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    st = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=st, border_value=0)


def surface_distances(pred, truth, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances (mm) from every surface voxel of ``pred`` to the nearest
    surface voxel of ``truth``, and back. Surface: foreground voxels with a 6-connected
    background neighbour (outside the array counts as background). Exact Euclidean
    distance transforms with ``sampling=spacing`` on the two masks' bounding box."""
    from scipy import ndimage

    p, t = np.asarray(pred) != 0, np.asarray(truth) != 0
    u = p | t
    sl = tuple(slice(int(np.min(ix)), int(np.max(ix)) + 1) for ix in np.nonzero(u))
    pc, tc = np.pad(p[sl], 1), np.pad(t[sl], 1)
    sp, st = _surface(pc), _surface(tc)
    sampling = tuple(float(v) for v in spacing)
    d_pt = ndimage.distance_transform_edt(~st, sampling=sampling)[sp]
    d_tp = ndimage.distance_transform_edt(~sp, sampling=sampling)[st]
    return d_pt, d_tp


def hausdorff_3d(pred, truth, spacing, q: Optional[float] = None) -> float:
    """Symmetric Hausdorff distance (``q=None``) or HD95 (``q=95``: the larger of the two
    directed 95th percentiles, as :func:`napari_cuts.metrics.hd95`) between the surfaces
    of two masks, in mm. One empty mask: the volume's diagonal in mm; both empty: 0."""
    p, t = np.asarray(pred) != 0, np.asarray(truth) != 0
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, spacing))))
    d1, d2 = surface_distances(p, t, spacing)
    if q is None:
        return float(max(d1.max(), d2.max()))
    return float(max(np.percentile(d1, q), np.percentile(d2, q)))


def score_3d(pred, truth, spacing) -> dict:
    """Every metric of :data:`METRIC_KEYS` on whole volumes: Dice over all voxels,
    Hausdorff/HD95 in mm between surfaces (:func:`hausdorff_3d`), SSIM/ERGAS/RMSE of
    :mod:`napari_cuts.metrics` on the 3D masks; plus ``empty_pred``."""
    from .metrics import ergas, rmse, ssim

    p, t = np.asarray(pred) != 0, np.asarray(truth) != 0
    if p.shape != t.shape:
        raise InputError(f"prediction has shape {p.shape} but the ground truth has {t.shape}.")
    return {
        "dice": dice_score(p, t),
        "hausdorff": hausdorff_3d(p, t, spacing),
        "hd95": hausdorff_3d(p, t, spacing, 95.0),
        "ssim": ssim(p, t),
        "ergas": ergas(p, t),
        "rmse": rmse(p, t),
        "empty_pred": bool(not p.any()),
    }


# --------------------------------------------------------------------------- 3D methods

def click_mask(hierarchy, point) -> tuple[np.ndarray, str]:
    """The tool's own one-click answer on a hierarchy, without labels: the selection
    module's ``click_mask(hierarchy, point)`` when it has one (the level the tool
    chooses for a click), else the cluster of the persistent map under ``point``.
    Returns ``(mask, rule)`` with ``rule`` naming what was used."""
    from . import selection

    fn = getattr(selection, "click_mask", None)
    if fn is not None:
        return np.asarray(fn(hierarchy, point)) != 0, "selection.click_mask"
    return select_cluster(np.asarray(hierarchy.persistent()), point), "persistent map"


def best_level(hierarchy, gt) -> tuple[np.ndarray, int, float]:
    """The oracle: the level whose label-hint mask has the best 3D Dice against ``gt``
    (ties: the finest). Returns ``(mask, level, dice)``."""
    best, best_d, best_lv = None, -1.0, 0
    for lv in range(int(hierarchy.n_levels)):
        m = label_hint(np.asarray(hierarchy.labels(lv)), gt)
        d = dice_score(m, gt)
        if d > best_d:
            best, best_d, best_lv = m, d, lv
    return best, best_lv, best_d


def _volume_masks(encoder, vol: Volume, seed: int, prefix: str, wanted: set,
                  cancel: Cancel, timings: dict, save_dir=None, channel: Optional[int] = None):
    """``{method: (mask, info)}`` for the ``prefix`` rows (a key of :data:`VARIANTS`:
    "cuts", "image_only", "embedding_only"; or ``seq_<key>``: the CUTS pipeline on
    channel ``channel`` alone) and the number of levels."""
    from .pipeline import segment_volume

    key = "segment" if prefix == "cuts" else f"segment_{prefix}"
    image = vol.image if channel is None else vol.image[..., channel]
    t0 = time.perf_counter()
    res = segment_volume(encoder, image, spacing=vol.spacing, seed=seed, cancel=cancel,
                         **VARIANTS.get(prefix, {}))
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
    hier = res.hierarchy
    if save_dir is not None:
        suffix = "" if prefix == "cuts" else f"_{prefix}"
        hier.save(Path(save_dir) / f"{vol.name}_seed{seed}{suffix}.npz")
    t0 = time.perf_counter()
    out = _hierarchy_rows(hier, vol.mask, innermost_point(vol.mask), prefix, wanted)
    timings["scoring"] = timings.get("scoring", 0.0) + time.perf_counter() - t0
    return out, int(hier.n_levels)


def _markdown_3d(result: dict) -> str:
    methods = result["methods"]
    seqs = result.get("sequences") or {}
    names_by_key = dict(zip(seqs.get("keys") or [], seqs.get("names") or []))
    lv = result.get("label_values")
    struct = ("the union of label values " + ", ".join(map(str, lv))) if lv else \
        "every non-zero label"
    split = result.get("split", "all")
    split_text = {"all": "all cases",
                  "dev": "development split (the first half of the sorted case names)",
                  "report": "report split (the second half of the sorted case names)"}[split]
    lines = [
        "# napari-cuts evaluation (3D)",
        "",
        f"Data: `{result['data']}` ({result['layout']} layout), {result['n_images']} volumes "
        f"({split_text}: {result['cases'][0]} .. {result['cases'][-1]}); structure: {struct}; "
        f"seeds {result['seeds']}; " + _budget(result).replace("per seed", "per seed (one "
        "encoder for the whole set)") + f"total wall time {result['seconds']:.0f} s." + (
            f" Sequences (one channel each, in this order): {', '.join(seqs['names'])} "
            f"(names from {seqs['source']})." if seqs.get("names") else ""),
        "",
        "Scored in 3D on each whole volume (never a mean over slices). Mean ± standard error "
        "over volumes (mean over seeds). Dice, SSIM: higher is better; Hausdorff and HD95 "
        "**in mm** (between mask surfaces, with the voxel spacing of the header), ERGAS, "
        "RMSE: lower is better.",
        "",
        "| method | Dice | Hausdorff (mm) | HD95 (mm) | SSIM | RMSE | empty |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in methods:
        r = methods[name]
        lines.append(
            f"| `{name}`: {_display_3d(name, names_by_key)} | "
            f"{_fmt(r['dice'])} ± {_fmt(r['dice_sem'])} | "
            f"{_fmt(r['hausdorff'], 2)} ± {_fmt(r['hausdorff_sem'], 2)} | {_fmt(r['hd95'], 2)} | "
            f"{_fmt(r['ssim'])} | {_fmt(r['rmse'])} | {_fmt(r['n_empty'], 1)} |")
    click_rule = result.get("click_rule")
    lines += [
        "",
        "Notes:",
        "- The click is at the innermost voxel of the ground truth (largest distance to the "
        "background, `selection.innermost_point`; on a plateau of equal depth, such as a "
        "slab a few slices thick, the plateau voxel nearest its centroid), where a user "
        "would click.",
        "- `cuts_best` / `image_only_best`: the hierarchy level whose label-hint mask (the "
        "cluster most frequent under the ground truth) has the best 3D Dice, per case: an "
        "oracle. `cuts_persistent`: the label hint on the persistent-structures map.",
        "- `cuts_click` / `image_only_click`: no labels; the tool's own answer to the click "
        f"({click_rule or 'persistent map'}): the part of the clicked cluster 6-connected to "
        "the click, at the level chosen on that part's sizes; `cuts_click_whole` "
        "(`--ablation`): the whole cluster, every part of the volume it covers.",
        "- `cuts_click_refined`: the one-click structure and up to 3 grow and 3 shrink steps "
        "along its lineage (`Hierarchy.step_level`), the best 3D Dice kept (a user who stops "
        "when the mask looks right).",
        "- `image_only_*`: the same pipeline (working grid, slice context, condensation, "
        "click) on the normalised image alone, the encoder's embeddings left out; "
        "`embedding_only_*`: on the unit embeddings alone (image weight 0).",
    ]
    if any(_SEQ_ROW.match(m) for m in methods):
        lines.append(
            "- `seq_<name>_best` / `seq_<name>_click`: each sequence alone: the same pipeline "
            "(its own encoder trained on that one channel with the same budget, the same "
            "condensation and click) beside all sequences together (`cuts_best`, "
            "`cuts_click`).")
    lines += [
        "- `slic3d`: `skimage.segmentation.slic` on the volume with its spacing, the "
        "supervoxel under the click, best per case over n_segments in {50, 200, 800, 3200} "
        "x compactness in {0.05, 0.1, 0.3}: an oracle like `cuts_best`.",
        "- Intensities are scaled per volume to [0, 1] between the 0.5th and 99.5th "
        "percentiles before everything. Hausdorff/HD95 of an empty prediction = the "
        "volume's diagonal in mm.",
        "",
    ]
    return "\n".join(lines)


def _figure_examples_3d(examples: dict, path: Path, order: Sequence[str] = METHODS_3D) -> None:
    """Rows: a few cases, the axial slice through the click; columns: image, ground
    truth, each method's mask on that slice (titles: the case's 3D Dice)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fileutil import save_figure

    rows = list(examples.items())
    names = [m for m in order if any(m in ex["masks"] for _, ex in rows)]
    cols = 2 + len(names)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.7 * cols, 1.8 * len(rows) + 0.4),
                             dpi=100, squeeze=False)
    for r, (case, ex) in enumerate(rows):
        img = ex["image"]
        panels = [("image", None, None), ("ground truth", ex["gt"], None)] + [
            (m, *ex["masks"][m]) for m in names if m in ex["masks"]]
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(panels):
                ax.axis("off")
                continue
            title, m, d = panels[c]
            ax.imshow(img, cmap="gray", interpolation="nearest")
            if m is not None:
                over = np.zeros(m.shape + (4,), dtype=float)
                colour = (0.1, 0.9, 0.2) if title == "ground truth" else (1.0, 0.2, 0.6)
                over[m] = (*colour, 0.5)
                ax.imshow(over, interpolation="nearest")
                if title != "ground truth":
                    ax.contour(ex["gt"].astype(float), levels=[0.5], colors="lime",
                               linewidths=0.6)
                    title = f"{title}\n3D Dice {d:.2f}"
            ax.set_title(title, fontsize=6)
            if c == 0:
                ax.set_ylabel(f"{case} z={ex['z']}", fontsize=6)
    fig.suptitle("axial slice through the click: masks (magenta), ground truth (green)",
                 fontsize=8)
    save_figure(fig, path)


def run_evaluation_3d(data_dir, out_dir, *, seeds: Sequence[int] = (1, 2, 3),
                      seconds: Optional[float] = None, epochs: Optional[float] = None,
                      methods: Optional[Sequence[str]] = None, limit: Optional[int] = None,
                      device: str = "auto", progress: Progress = None, cancel: Cancel = None,
                      labels: Optional[Sequence[float]] = None, ablation: bool = False,
                      split: str = "all", cases: Optional[Sequence[str]] = None,
                      save_hierarchies: bool = False) -> dict:
    """Score a folder of volumes in 3D (``napari-cuts evaluate`` on volumes).

    ``data_dir``: a Decathlon folder (``imagesTr/``, ``labelsTr/``, same file names) or
    NIfTI volumes with ``case_seg.nii.gz`` masks (``case.nii.gz``, or one
    ``case_<seq>.nii.gz`` per sequence: :func:`load_volumes`). ``labels``: the structure
    is the union of these label values (rounded; default every non-zero label).
    ``split`` / ``cases`` / ``limit``: which cases (:func:`select_cases`; ``"dev"`` is the first half of the
    sorted names, ``"report"`` the rest). For each seed ONE encoder is trained on all the
    chosen volumes (:func:`napari_cuts.pipeline.train_volume_encoder`, ``seconds``
    default :data:`DEFAULT_SECONDS_3D`, or ``epochs``), then each volume gets one
    hierarchy (:func:`napari_cuts.pipeline.segment_volume`). Methods:
    :data:`METHODS_3D` (``image_only_*`` only with ``ablation`` or when named). With
    ``ablation`` on volumes of two or more sequences, also ``seq_<key>_best`` and
    ``seq_<key>_click`` for every sequence (:func:`sequence_methods`): the same pipeline
    on that one channel, with its own encoder trained for the same budget (one more
    training per sequence and seed); ``<key>`` is the sequence name
    (:func:`sequence_key`), or the channel index when the data names none.
    ``save_hierarchies``: also write
    ``hierarchies/<case>_seed<S>[_image_only|_embedding_only|_seq_<key>].npz``.

    Writes ``results.json`` (``{"methods": {name: {"dice", "hausdorff", "hd95", "ssim",
    "ergas", "rmse", ...}}, "seconds": .., "sequences": .., "runs": ..}``, Hausdorff in
    mm; ``runs``: what each encoder was trained on, its input channels as recorded by the
    encoder), ``results.md``, ``per_case.csv``, ``dice.png`` and ``examples.png``;
    returns the JSON content.
    """
    t_start = time.perf_counter()
    default = [m for m in METHODS_3D if ablation or m not in ABLATION_METHODS]
    chosen = default if methods is None else list(dict.fromkeys(methods))
    bad = [m for m in chosen if m not in METHODS_3D and not _SEQ_ROW.match(m)]
    if bad or not chosen:
        raise InputError(f"unknown method(s) {bad or chosen} for volumes; choose from "
                         f"{', '.join(METHODS_3D)}, or seq_<sequence>_best / "
                         "seq_<sequence>_click on volumes of several sequences.")
    seeds = _check_seeds_seconds(seeds, seconds)
    train_seconds = seconds if (seconds is not None or epochs is not None) else DEFAULT_SECONDS_3D

    from .fileutil import make_output_dir, write_json

    vs = load_volumes(data_dir, labels=labels, split=split, cases=cases, limit=limit)
    vols = vs.volumes
    n = len(vols)
    n_ch = 1 if vols[0].image.ndim == 3 else vols[0].image.shape[-1]
    seq_names = list(vs.sequences) if vs.sequences else None
    seq_keys = sequence_keys(seq_names) if seq_names else None
    seq_rows = sequence_methods(seq_keys) if (seq_keys and n_ch > 1) else []
    if methods is None and ablation:
        chosen += seq_rows
    unknown = [m for m in chosen if m not in METHODS_3D and m not in seq_rows]
    if unknown:
        have = (f"its sequences give {', '.join(seq_rows)}" if seq_rows else
                "its volumes have one channel, so there are no per-sequence rows")
        raise InputError(f"method(s) {', '.join(unknown)} do not fit {data_dir}: {have}.")
    order = [*METHODS_3D, *seq_rows]
    chosen = [m for m in order if m in chosen]

    out = make_output_dir(out_dir)
    hier_dir = None
    if save_hierarchies:
        hier_dir = out / "hierarchies"
        hier_dir.mkdir(exist_ok=True)
    # One run = one encoder per seed: all channels (the VARIANTS rows), then one run per
    # sequence that has rows wanted (seq_<key>: that channel alone).
    runs = []
    wanted_by = {prefix: {m for m in chosen if m.startswith(prefix + "_")}
                 for prefix in VARIANTS}
    if any(wanted_by.values()):
        runs.append(("all", None, wanted_by))
    for c, key in enumerate(seq_keys or []):
        mine = {m for m in chosen if m in (f"seq_{key}_{k}" for k in SEQUENCE_ROW_KINDS)}
        if mine and n_ch > 1:
            runs.append((f"seq_{key}", c, {f"seq_{key}": mine}))
    total = (n if "slic3d" in chosen else 0) + len(seeds) * len(runs) * 2 * n + 1
    done = 0
    per: dict = {m: {s: [] for s in seeds} for m in chosen}
    rows: list = []
    timings: dict = {}
    n_levels: list = []
    runs_info: dict = {}
    ex_idx = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(N_EXAMPLES, n))})
    examples: dict = {}
    points = [innermost_point(v.mask) for v in vols]
    for i in ex_idx:
        z = points[i][0]
        img = vols[i].image if vols[i].image.ndim == 3 else vols[i].image[..., 0]
        examples[vols[i].name] = {"z": z, "image": img[z], "gt": vols[i].mask[z], "masks": {}}
    click_rules: set = set()

    def record(method, seed_list, i, mask, info=None):
        v = vols[i]
        r = score_3d(mask, v.mask, v.spacing)
        info = info or {}
        for s in seed_list:
            per[method][s].append(r)
            rows.append({"method": method, "seed": s, "case": v.name,
                         **{k: r[k] for k in METRIC_KEYS}, "empty_pred": int(r["empty_pred"]),
                         "gt_voxels": int(v.mask.sum()), "pred_voxels": int(np.count_nonzero(mask)),
                         "level": info.get("level", ""), "n_clusters": info.get("n_clusters", ""),
                         "setting": info.get("setting", "")})
        ex = examples.get(v.name)
        if ex is not None and seed_list[0] == seeds[0]:
            ex["masks"][method] = (np.asarray(mask)[ex["z"]], r["dice"])

    if "slic3d" in chosen:
        from .baselines import slic3d_best

        t0 = time.perf_counter()
        for i, v in enumerate(vols):
            check_cancel(cancel)
            report(progress, done, total, f"slic3d: volume {i + 1}/{n}")
            m, info = slic3d_best(v.image, v.mask, points[i], spacing=v.spacing)
            record("slic3d", seeds, i, m,
                   {"setting": f"n_segments={info['n_segments']} compactness={info['compactness']:g}"})
            done += 1
        timings["slic3d"] = time.perf_counter() - t0

    if runs:
        from .pipeline import train_volume_encoder

        for seed in seeds:
            for run_key, channel, wanted_run in runs:
                check_cancel(cancel)
                base = done
                what = "all sequences" if channel is None or seq_names is None else \
                    f"sequence {seq_names[channel]} alone"
                label = f"seed {seed}" + ("" if run_key == "all" else f", {what}")
                train_progress = _training_progress(progress, base, n, total, seed)
                report(progress, done, total, f"{label}: training one encoder on {n} volumes")
                images = [v.image if channel is None else v.image[..., channel] for v in vols]
                t0 = time.perf_counter()
                enc = train_volume_encoder(images, spacing=[v.spacing for v in vols],
                                           epochs=epochs, seconds=train_seconds, seed=seed,
                                           device=device, progress=train_progress,
                                           cancel=cancel)
                tkey = "train" if run_key == "all" else f"train_{run_key}"
                timings[tkey] = timings.get(tkey, 0.0) + time.perf_counter() - t0
                k = int(enc.metadata.get("context_slices", 0) or 0)
                prev = runs_info.get(run_key, {})
                runs_info[run_key] = {
                    "sequences": (list(seq_names) if channel is None else [seq_names[channel]])
                    if seq_names else None,
                    "channel": channel,
                    "encoder_in_channels": int(enc.in_channels),
                    "context_slices": k,
                    # the encoder reads 2k+1 neighbouring slices of every channel
                    "channels": int(enc.in_channels) // (2 * k + 1),
                    "rows": sorted(m for w in wanted_run.values() for m in w),
                    # what the budget bought, seed by seed (the same budget is not the
                    # same number of steps when the machine is busy)
                    "steps": {**prev.get("steps", {}), str(seed): enc.metadata.get("steps")},
                    "train_seconds_used": {**prev.get("train_seconds_used", {}),
                                           str(seed): enc.metadata.get("seconds_used")},
                }
                done = base + n
                for i, v in enumerate(vols):
                    check_cancel(cancel)
                    report(progress, done, total, f"{label}: volume {i + 1}/{n} ({v.name})")
                    for prefix, wanted in wanted_run.items():
                        if not wanted:
                            continue
                        masks, nl = _volume_masks(enc, v, seed, prefix, wanted, cancel,
                                                  timings, hier_dir, channel=channel)
                        if prefix == "cuts":
                            n_levels.append(nl)
                        t0 = time.perf_counter()
                        for m in order:
                            if m in masks:
                                mask, info = masks[m]
                                if "setting" in info and m.endswith("_click"):
                                    click_rules.add(info["setting"])
                                record(m, [seed], i, mask, info)
                        timings["scoring"] = timings.get("scoring", 0.0) + time.perf_counter() - t0
                    done += 1

    report(progress, done, total, "writing results")
    check_cancel(cancel)
    result = {
        "methods": {m: summarise(per[m]) for m in order if m in per},
        "seconds": round(time.perf_counter() - t_start, 2),
        "n_images": n,
        "seeds": seeds,
        "data": str(Path(data_dir)),
        "layout": vs.layout,
        "scoring": "3d",
        "units": {"hausdorff": "mm", "hd95": "mm"},
        "label_values": vs.label_values,
        "split": split,
        "cases": [v.name for v in vols],
        "sequences": ({"names": seq_names, "keys": seq_keys, "source": vs.sequence_source}
                      if seq_names else None),
        "runs": runs_info,
        "click_rule": ", ".join(sorted(click_rules)) or None,
        "train_seconds": train_seconds if runs else None,
        "epochs": epochs if runs else None,
        "device": device,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "levels": {"n_levels": float(np.mean(n_levels)) if n_levels else None},
        "notes": vs.notes,
        "napari_cuts_version": __version__,
    }
    result = _clean(result)

    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(PER_CASE_FIELDS))
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    _write_text(out / "per_case.csv", buf.getvalue())
    per_case_dice = {m: np.nanmean(np.array([[r["dice"] for r in per[m][s]] for s in seeds],
                                            dtype=float), axis=0)
                     for m in order if m in per}
    _figure_dice(per_case_dice, out / "dice.png", vs.layout, order=order,
                 ylabel="3D Dice (per volume, mean over seeds)", title="3D Dice per volume")
    _figure_examples_3d(examples, out / "examples.png", order=order)
    _write_text(out / "results.md", _markdown_3d(result))
    write_json(out / "results.json", result)
    report(progress, total, total, "done")
    return result
