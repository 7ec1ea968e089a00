"""``napari-cuts evaluate --clicks N``: the standard simulated user of interactive
segmentation, and the methods it is put to.

The clicker (:func:`first_click`, :func:`next_click`)
---------------------------------------------------
- Click 1 is positive, at the *innermost* voxel of the ground-truth mask: the largest
  Euclidean distance in mm (``distance_transform_edt(sampling=spacing)``) to the
  background, where the outside of the image counts as background (the mask is padded
  by one background voxel first). Ties go to the first voxel in C order; distances
  within a relative 1e-9 of the largest are ties (the same length reached along
  different voxel offsets may differ in the last bit).
- Each next click: the error components of the current mask, false negatives
  (``gt & ~mask``) and false positives (``mask & ~gt``) labelled separately by
  ``scipy.ndimage.label`` with full connectivity (26 in 3D, 8 in 2D). The click goes to
  the largest component; between components of equal size to the lowest label, and
  between a false negative and a false positive of equal size and label to the false
  negative. It lands on that component's innermost voxel by the same rule, the distance
  measured to the outside of the component. Positive where the voxel lies in the
  ground truth (a false negative), negative otherwise.
- No error left: :func:`next_click` returns None; the run stops and its last Dice is
  carried forward to click N.

Methods (the same clicks rule for all; each re-solves from all clicks so far)
-----------------------------------------------------------------------------
- ``cuts_prompts``: ``napari_cuts.prompts.segment_from_prompts(folder, positive,
  negative, level=None)`` on the case's ``segment`` output folder
  (``OUT/cases/<case>/seed<S>/``, written by :func:`napari_cuts.pipeline.segment`,
  reused on a rerun when its ``run.json`` exists).
- ``random_walker``: ``skimage.segmentation.random_walker(beta=130, mode="cg_j",
  tol=1e-3)`` with the spacing in mm, each channel scaled on its own to [0, 1] between
  its 0.5 and 99.5 percentiles (``channel_axis=-1`` for several channels). Each click
  is a ball of radius 2 voxels (1 along axes whose spacing exceeds twice the finest);
  the image border is background (label 2), negative balls are drawn next (label 2),
  positive balls last (label 1). Not run above :data:`RW_MAX_VOXELS` voxels.
- ``slic3d``: ``skimage.segmentation.slic`` (2D on 2D images) with
  ``n_segments = voxels / size`` for the sizes :data:`SLIC_SIZES_2D` /
  :data:`SLIC_SIZES_3D`, compactness 10 for colour pictures and 0.1 for grey images and
  volumes; the mask is the union of the supervoxels that hold a positive click and no
  negative click. Each size is its own click sequence; per case the curve with the best
  mean Dice over the clicks is kept (an oracle over three settings).
- ``image_only_prompts`` (``ablation``): the same solver on a folder whose hierarchy is
  built on the image channels alone (``segment_image`` / ``segment_volume`` with
  ``use_embeddings=False`` and the case's encoder, as ``image_only_click`` of
  :mod:`napari_cuts.evaluation.methods`); the solver sees the image in both
  (``OUT/cases/<case>/seed<S>_image_only/``).

Seeds: ``cuts_prompts`` and ``image_only_prompts`` run once per seed; the other methods
do not depend on the seed and run once per case. ``results.json["clicks"]["cases"]``
holds, per case, each method's curve AVERAGED over the seeds (``per_seed`` keeps every
seed's curve); NoC and ``never`` count every (case, seed) run of a seeded method and
every case of the others.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from ..images import Cancel, Progress, check_cancel, report
from ..metrics import dice as dice_score
from . import click_report as R
from .datasets import (
    case_name, decathlon_pairs, load_dataset, nifti_cases, nifti_pairs, select_cases,
)
from .volumes import load_volumes, volume_layout

#: Every method of the clicks evaluation, in table order.
CLICK_METHODS = ("cuts_prompts", "random_walker", "slic3d", "image_only_prompts")
#: The methods that depend on the seed (one ``segment`` folder per seed).
SEEDED = ("cuts_prompts", "image_only_prompts")
#: random_walker is not run on images with more voxels than this.
RW_MAX_VOXELS = 3_000_000
RW_PARAMS = {"beta": 130, "mode": "cg_j", "tol": 1e-3}
#: Pixels (2D) / voxels (3D) per supervoxel of ``slic3d``: n_segments = size of image / size.
SLIC_SIZES_2D = (10, 50, 200)
SLIC_SIZES_3D = (200, 800, 3200)
#: Relative tolerance under which two distances to the background are a tie.
TIE_RTOL = 1e-9


# --------------------------------------------------------------------------- clicker

def _full_structure(ndim: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.generate_binary_structure(ndim, ndim)


def _spacing(spacing, ndim: int) -> tuple:
    if spacing is None:
        return (1.0,) * ndim
    sp = tuple(float(v) for v in spacing)[-ndim:] if len(spacing) >= ndim else None
    if sp is None or len(sp) != ndim or not all(v > 0 for v in sp):
        raise InputError(f"spacing {spacing!r} does not fit a {ndim}D mask; give {ndim} "
                         "positive voxel sizes in mm.")
    return sp


def innermost_voxel(region, spacing=None, offset=None) -> tuple:
    """The voxel of the bool ``region`` farthest (Euclidean, in mm with ``spacing``)
    from the background, the outside of the array counting as background; ties (within
    :data:`TIE_RTOL`) to the first voxel in C order. ``offset`` is added to the index
    (``region`` a crop). Returns a tuple of ints."""
    from scipy import ndimage

    r = np.asarray(region, dtype=bool)
    if not r.any():
        raise InputError("the region is empty; there is no voxel to click.")
    sp = _spacing(spacing, r.ndim)
    d = ndimage.distance_transform_edt(np.pad(r, 1), sampling=sp)
    flat = d[(slice(1, -1),) * r.ndim].ravel()
    top = float(flat.max())
    idx = int(np.flatnonzero(flat >= top * (1.0 - TIE_RTOL))[0])
    pt = np.unravel_index(idx, r.shape)
    off = (0,) * r.ndim if offset is None else offset
    return tuple(int(p) + int(o) for p, o in zip(pt, off))


def _crop(mask: np.ndarray) -> tuple:
    """(the crop of ``mask`` to its bounding box, the box's start): the innermost voxel
    of the crop is that of the whole mask (the box's outside is background)."""
    idx = np.nonzero(mask)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    return mask[box], tuple(s.start for s in box)


def first_click(gt, spacing=None) -> tuple:
    """``(point, True)``: the first, positive click at the innermost voxel of ``gt``."""
    g = np.asarray(gt, dtype=bool)
    if not g.any():
        raise InputError("the ground-truth mask is empty; there is nothing to click.")
    crop, off = _crop(g)
    return innermost_voxel(crop, _spacing(spacing, g.ndim), off), True


def next_click(mask, gt, spacing=None) -> Optional[tuple]:
    """The next click of the simulated user on the current ``mask`` against ``gt`` (bool
    arrays of one shape): ``(point, is_positive)``, or None when there is no error left.
    See the module docstring for the rule."""
    from scipy import ndimage

    m, g = np.asarray(mask, dtype=bool), np.asarray(gt, dtype=bool)
    if m.shape != g.shape:
        raise InputError(f"the mask has shape {m.shape} but the ground truth {g.shape}.")
    st = _full_structure(g.ndim)
    best = None
    for kind, err in ((0, g & ~m), (1, m & ~g)):
        if not err.any():
            continue
        lab, _ = ndimage.label(err, structure=st)
        sizes = np.bincount(lab.ravel())[1:]
        top = int(sizes.max())
        label = int(np.flatnonzero(sizes == top)[0]) + 1
        key = (-top, label, kind)
        if best is None or key < best[0]:
            best = (key, lab)
    if best is None:
        return None
    (_, label, _), lab = best
    comp = lab == label
    crop, off = _crop(comp)
    pt = innermost_voxel(crop, _spacing(spacing, g.ndim), off)
    return pt, bool(g[pt])


def simulate(method, gt, spacing, n_clicks: int, cancel: Cancel = None) -> dict:
    """Run the simulated user for ``n_clicks`` clicks against ``method(positive,
    negative) -> bool mask``. Returns ``{"dice": [N floats], "seconds": [per call],
    "clicks": [[point, positive], ...]}``; a run without errors left stops and carries
    its last Dice forward."""
    g = np.asarray(gt, dtype=bool)
    pos, neg = [], []
    point, _ = first_click(g, spacing)
    pos.append(point)
    clicks = [[list(point), True]]
    dices, secs = [], []
    while True:
        check_cancel(cancel)
        t0 = time.perf_counter()
        mask = np.asarray(method(list(pos), list(neg)), dtype=bool)
        secs.append(time.perf_counter() - t0)
        if mask.shape != g.shape:
            raise InputError(f"a method returned a mask of shape {mask.shape} for a ground "
                             f"truth of shape {g.shape}.")
        dices.append(float(dice_score(mask, g)))
        if len(dices) >= n_clicks:
            break
        nxt = next_click(mask, g, spacing)
        if nxt is None:
            dices += [dices[-1]] * (n_clicks - len(dices))
            break
        point, positive = nxt
        (pos if positive else neg).append(point)
        clicks.append([list(point), bool(positive)])
    return {"dice": dices, "seconds": secs, "clicks": clicks}


# --------------------------------------------------------------------------- methods

def unit_channels(image, multichannel: bool) -> np.ndarray:
    """Each channel (the last axis when ``multichannel``) scaled on its own to [0, 1]
    between its 0.5 and 99.5 percentiles, clipped; float64."""
    a = np.asarray(image, dtype=np.float64)
    chans = [a[..., c] for c in range(a.shape[-1])] if multichannel else [a]
    out = []
    for ch in chans:
        lo, hi = np.percentile(ch, [0.5, 99.5])
        if hi <= lo:
            lo, hi = float(ch.min()), float(ch.max())
        out.append(np.zeros_like(ch) if hi <= lo else np.clip((ch - lo) / (hi - lo), 0.0, 1.0))
    return np.stack(out, axis=-1) if multichannel else out[0]


def click_ball(shape, point, spacing) -> tuple:
    """Index arrays of the ball drawn for a click: radius 2 voxels, 1 along the axes
    whose spacing exceeds twice the finest; clipped to the image (the prompt solver's
    own seed, :func:`napari_cuts.prompt_solver.click_ball`)."""
    from ..prompt_solver import click_ball as flat_ball

    return np.unravel_index(flat_ball(point, shape, spacing), shape)


def random_walker_seeds(shape, positive, negative, spacing) -> np.ndarray:
    """The seed array of ``random_walker``: the border 2, negative balls 2, then positive
    balls 1 (a positive ball wins where they overlap); int32 of ``shape``."""
    seeds = np.zeros(shape, dtype=np.int32)
    for ax in range(len(shape)):
        idx = [slice(None)] * len(shape)
        for end in (0, -1):
            idx[ax] = end
            seeds[tuple(idx)] = 2
    for p in negative:
        seeds[click_ball(shape, p, spacing)] = 2
    for p in positive:
        seeds[click_ball(shape, p, spacing)] = 1
    return seeds


class RandomWalker:
    """``random_walker`` on the case's image (already scaled per channel by
    :func:`unit_channels`; see the module docstring)."""

    def __init__(self, image, spacing, multichannel: bool):
        self.data = np.asarray(image, dtype=np.float64)
        self.channel_axis = -1 if multichannel else None
        self.shape = self.data.shape[:-1] if multichannel else self.data.shape
        self.spacing = tuple(float(v) for v in spacing)

    def __call__(self, positive, negative) -> np.ndarray:
        from skimage.segmentation import random_walker

        if not positive:
            return np.zeros(self.shape, dtype=bool)
        seeds = random_walker_seeds(self.shape, positive, negative, self.spacing)
        with warnings.catch_warnings():  # "probability range outside [0, 1]" at tol=1e-3
            warnings.filterwarnings("ignore", message="The probability range is outside")
            out = random_walker(self.data, seeds, spacing=np.asarray(self.spacing),
                                channel_axis=self.channel_axis, **RW_PARAMS)
        return out == 1


class SlicClicks:
    """``slic3d`` at one supervoxel size: the supervoxels holding a positive click and no
    negative click. SLIC runs on the first call (timed as the first click)."""

    def __init__(self, image, spacing, multichannel: bool, colour: bool, size: int):
        self.image, self.spacing = image, tuple(float(v) for v in spacing)
        self.multichannel, self.colour, self.size = multichannel, colour, int(size)
        self.labels = None

    def segments(self) -> np.ndarray:
        from skimage.segmentation import slic

        data = np.asarray(self.image, dtype=np.float64)
        shape = data.shape[:-1] if self.multichannel else data.shape
        n = max(1, int(round(int(np.prod(shape)) / self.size)))
        return slic(data, n_segments=n, compactness=10.0 if self.colour else 0.1,
                    spacing=np.asarray(self.spacing), start_label=1,
                    channel_axis=-1 if self.multichannel else None,
                    convert2lab=self.colour)

    def __call__(self, positive, negative) -> np.ndarray:
        if self.labels is None:
            self.labels = self.segments()
        lab = self.labels
        take = {int(lab[tuple(p)]) for p in positive} - {int(lab[tuple(p)]) for p in negative}
        return np.isin(lab, sorted(take)) if take else np.zeros(lab.shape, dtype=bool)


class PromptSolver:
    """``segment_from_prompts`` on one folder, ``level=None``."""

    def __init__(self, folder):
        from ..prompts import segment_from_prompts

        self.folder, self.solve = str(folder), segment_from_prompts

    def __call__(self, positive, negative) -> np.ndarray:
        return np.asarray(self.solve(self.folder, [tuple(p) for p in positive],
                                     [tuple(p) for p in negative], level=None), dtype=bool)


def prompts_available() -> Optional[str]:
    """None when ``napari_cuts.prompts.segment_from_prompts`` can be imported, else why."""
    try:
        from ..prompts import save_prompt_data, segment_from_prompts  # noqa: F401
    except ImportError as exc:
        return f"napari_cuts.prompts is not available ({exc})"
    return None


# --------------------------------------------------------------------------- cases

@dataclass
class ClickCase:
    """One case: ``image`` float32 ``(H, W[, C])`` or ``(Z, Y, X[, C])`` (grey without a
    channel axis), each channel scaled by :func:`unit_channels`, ``gt`` bool of the spatial shape, ``spacing`` in mm (1 per pixel in
    2D), ``source`` the path(s) given to ``segment``, ``colour`` an RGB picture."""

    name: str
    image: np.ndarray
    gt: np.ndarray
    spacing: tuple
    source: object
    colour: bool = False

    @property
    def multichannel(self) -> bool:
        return self.image.ndim == self.gt.ndim + 1


def load_click_cases(data_dir, *, split: str = "all", cases=None, labels=None,
                     limit=None) -> tuple[list, str, list]:
    """``([ClickCase], layout, notes)`` of a labelled folder: volumes through
    :func:`.volumes.load_volumes`, 2D folders through :func:`.datasets.load_dataset`;
    ``split`` / ``cases`` / ``limit`` as :func:`.datasets.select_cases`
    (for 2D folders too: ``dev`` the first half of the images by sorted name, 40 retina
    images giving 20 and 20)."""
    root = Path(data_dir)
    if volume_layout(root) is not None:
        vs = load_volumes(root, labels=labels, split=split, cases=cases, limit=limit)
        if vs.layout == "decathlon":
            paths = {case_name(img): img for img, _ in decathlon_pairs(root)[0]}
        else:
            paths = {c.name: (c.images[0] if len(c.images) == 1 else list(c.images))
                     for c in nifti_cases(root)[0]}
        out = [ClickCase(v.name, np.asarray(v.image, dtype=np.float32), np.asarray(v.mask, bool),
                         tuple(float(s) for s in v.spacing), paths[v.name]) for v in vs.volumes]
        return out, vs.layout, list(vs.notes)
    if labels is not None:
        raise InputError("--label applies to folders of volumes; this folder holds 2D images.")
    ds = load_dataset(root)
    names = select_cases([s.name for s in ds.samples], split=split, cases=cases, limit=limit)
    if ds.layout == "retina":
        img_dir = root / "image_with_GA"
        paths = {p.stem: p for p in img_dir.iterdir()}
    else:
        paths = {case_name(img): img for img, _ in nifti_pairs(root)}
    by_name = {s.name: s for s in ds.samples}
    out = []
    for name in names:
        s = by_name[name]
        img = np.asarray(s.image, dtype=np.float32)
        img = unit_channels(img[..., 0], False) if img.shape[-1] == 1 else unit_channels(img, True)
        img = img.astype(np.float32)
        out.append(ClickCase(name, img, np.asarray(s.mask, bool), (1.0, 1.0), paths[name],
                             colour=img.ndim == 3 and img.shape[-1] == 3))
    return out, ds.layout, list(ds.notes)


def segment_folder(case: ClickCase, folder: Path, *, seed: int, steps=None, seconds=None,
                   epochs=None, device: str = "auto", warm_start=None,
                   cancel: Cancel = None) -> Path:
    """The case's ``segment`` output folder for ``seed``, computed by
    :func:`napari_cuts.pipeline.segment` unless its ``run.json`` exists."""
    from ..pipeline import segment

    if not (folder / "run.json").exists():
        segment(case.source, folder, seed=seed, steps=steps, seconds=seconds, epochs=epochs,
                    device=device, warm_start=warm_start, cancel=cancel, log=lambda m: None)
    return folder


def image_only_folder(case: ClickCase, seg: Path, folder: Path, *, seed: int,
                      device: str = "auto", cancel: Cancel = None) -> Path:
    """A prompt folder whose hierarchy is condensed from the image channels alone
    (``use_embeddings=False``, the case's encoder ``seg/encoder.pt`` normalising the
    image, as ``image_only_click``), with the same prompt data (the image). Reused when
    ``image_only.json`` exists."""
    from ..encoder import load_encoder
    from ..fileutil import make_output_dir, write_json
    from ..pipeline import segment_image, segment_volume
    from ..prompts import save_prompt_data

    if (folder / "image_only.json").exists():
        return folder
    if isinstance(case.source, list):
        from ..sequences import read_sequences

        src = read_sequences(case.source)
    else:
        from ..io import read_image

        src = read_image(case.source)
    data = np.asarray(src.data)
    enc = load_encoder(seg / "encoder.pt", device=device)
    if case.gt.ndim == 3:
        res = segment_volume(enc, data, spacing=tuple(float(v) for v in src.spacing[:3]),
                             seed=seed, cancel=cancel, use_embeddings=False)
    else:
        res = segment_image(enc, data, seed=seed, cancel=cancel, use_embeddings=False)
    make_output_dir(folder)
    res.hierarchy.save(folder / "hierarchy.npz")
    save_prompt_data(folder, image=np.asarray(case.image, dtype=np.float32),
                     spacing=tuple(case.spacing))
    write_json(folder / "image_only.json", {"seed": int(seed), "segment": str(seg),
                                            "use_embeddings": False})
    return folder


# --------------------------------------------------------------------------- the run

def _check_methods(methods, ablation: bool) -> list[str]:
    if methods is None:
        chosen = [m for m in CLICK_METHODS if m != "image_only_prompts" or ablation]
    else:
        bad = [m for m in methods if m not in CLICK_METHODS]
        if bad:
            raise InputError(f"unknown clicks method(s) {', '.join(bad)}; choose from "
                             f"{', '.join(CLICK_METHODS)}.")
        chosen = [m for m in CLICK_METHODS if m in methods]
    return chosen


def run_clicks_evaluation(data_dir, out_dir, *, n_clicks: int = 10,
                          seeds: Sequence[int] = (1, 2, 3), steps=None, seconds=None,
                          epochs=None,
                          split: str = "all", cases=None, labels=None, limit=None,
                          ablation: bool = False, methods=None, progress: Progress = None,
                          cancel: Cancel = None, results_md=None, device: str = "auto",
                          warm_start=None, command: Optional[str] = None) -> dict:
    """The simulated-user evaluation (``napari-cuts evaluate --clicks N``) of every case
    of ``data_dir`` (2D folders and volumes, :func:`load_click_cases`).

    Writes into ``out_dir``: ``cases/<case>/seed<S>/`` (the ``segment`` folders,
    reused), ``results.json`` with the ``clicks`` entry (:mod:`.click_report`;
    an existing ``results.json`` keeps its ``methods`` and other entries, a new one has
    ``"methods": {}``: ``--clicks`` runs only this evaluation), ``clicks.png`` (mean Dice
    against clicks per method) and a clicks section in ``results.md`` (added to the
    file, or replacing the section of an earlier clicks run). ``results_md`` (a path,
    e.g. ``benchmarks/RESULTS.md``): also write the table there between the markers
    ``<!-- evaluate-clicks:<dataset> -->`` and ``<!-- /evaluate-clicks:<dataset> -->``,
    ``<dataset>`` the data folder's name, with the command line (``command``), the git
    commit and the machine. ``seconds`` / ``epochs`` / ``warm_start`` / ``device``: the
    ``segment`` job's training, per case and seed (its defaults when None).

    Seeds: ``clicks["cases"][case][method]`` is the curve averaged over the seeds (the
    seed-independent baselines run once per case); ``clicks["per_seed"]`` keeps each
    seed's curve of the seeded methods. Returns the ``clicks`` dict."""
    from ..fileutil import make_output_dir

    n = int(n_clicks)
    if n < 1:
        raise InputError(f"--clicks needs at least 1 click (got {n}).")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InputError("give at least one seed.")
    missing = prompts_available()
    chosen = _check_methods(methods, ablation)
    the_cases, layout, notes = load_click_cases(data_dir, split=split, cases=cases,
                                                labels=labels, limit=limit)
    out = make_output_dir(out_dir)
    commit = R.git_commit()    # the code that runs, not the one at the end
    t_start = time.perf_counter()
    curves: dict = {m: {} for m in chosen}      # method -> case -> {seed or "-": run}
    not_run: dict = {}
    if missing:
        for m in set(chosen) & set(SEEDED):
            not_run[m] = missing
    per_seed_steps = sum(1 for m in chosen if m in SEEDED and m not in not_run)
    total = len(the_cases) * (len(seeds) * (per_seed_steps + (1 if per_seed_steps else 0))
                              + sum(1 for m in chosen if m not in SEEDED))
    done = 0
    for case in the_cases:
        voxels = int(case.gt.size)
        for m in chosen:
            if m in SEEDED or m in not_run:
                continue
            report(progress, done, total, f"clicks: {case.name} {m}")
            if m == "random_walker" and voxels > RW_MAX_VOXELS:
                notes.append(f"random_walker not run on {case.name}: {voxels / 1e6:.1f} M "
                             f"voxels (more than {RW_MAX_VOXELS / 1e6:g} M).")
                done += 1
                continue
            if m == "random_walker":
                run = simulate(RandomWalker(case.image, case.spacing, case.multichannel),
                               case.gt, case.spacing, n, cancel)
            else:
                sizes = SLIC_SIZES_3D if case.gt.ndim == 3 else SLIC_SIZES_2D
                runs = [dict(simulate(SlicClicks(case.image, case.spacing, case.multichannel,
                                                 case.colour, s), case.gt, case.spacing, n,
                                      cancel), size=s) for s in sizes]
                run = max(runs, key=lambda r: float(np.mean(r["dice"])))  # first on ties
            curves[m][case.name] = {"-": run}
            done += 1
        if not per_seed_steps:
            continue
        for seed in seeds:
            report(progress, done, total, f"clicks: {case.name} segment (seed {seed})")
            seg = segment_folder(case, out / "cases" / case.name / f"seed{seed}", seed=seed,
                                 steps=steps, seconds=seconds, epochs=epochs,
                                 device=device, warm_start=warm_start, cancel=cancel)
            done += 1
            for m in chosen:
                if m not in SEEDED or m in not_run:
                    continue
                report(progress, done, total, f"clicks: {case.name} {m} (seed {seed})")
                folder = seg if m == "cuts_prompts" else image_only_folder(
                    case, seg, out / "cases" / case.name / f"seed{seed}_image_only",
                    seed=seed, device=device, cancel=cancel)
                run = simulate(PromptSolver(folder), case.gt, case.spacing, n, cancel)
                curves[m].setdefault(case.name, {})[str(seed)] = run
                done += 1
    for m in chosen:
        if m not in not_run and not curves[m]:
            not_run[m] = "above 3 M voxels" if m == "random_walker" else "no case"
    clicks = R.clicks_result(curves, chosen, not_run, n=n, seeds=seeds, notes=notes,
                             cases=[c.name for c in the_cases], layout=layout, split=split,
                             training={"steps": steps, "seconds": seconds, "epochs": epochs},
                             seconds=time.perf_counter() - t_start)
    report(progress, total, total, "clicks: writing the results")
    R.write_outputs(out, clicks, dataset=Path(data_dir).resolve().name, results_md=results_md,
                    command=command, commit=commit)
    return clicks
