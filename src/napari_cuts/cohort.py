"""A cohort on dask.distributed: ``napari-cuts batch``, and one click matched in every image.

One encoder for the cohort (trained in the client process on a sample of the inputs, or
loaded with ``weights``) goes to the workers ONCE, as the result of one task
(:func:`encoder_blob`, the file's bytes) that every other task depends on; each task
gets a path and writes its input's outputs itself, so no pixel array travels. Per input
``OUT/<stem>/``:

* ``hierarchy.npz`` (:meth:`~napari_cuts.hierarchy.Hierarchy.save`);
* the persistent map: ``persistent.png`` (pictures) or ``persistent.nii.gz`` (NIfTI and
  DICOM input, source geometry);
* with a reference click, ``mask.png`` / ``mask.nii.gz``: the structure matching it;
* ``done.json``: what was computed from what (input size and time, encoder SHA-256,
  seed, reference), the files and their sizes, the summary row.

A task writes everything into ``OUT/.partial-<stem>-<random>/`` and publishes the folder
with one ``os.replace``: ``OUT/<stem>/`` either holds a finished input or does not
exist, whatever kills the worker or the client. A rerun skips every input whose
``done.json`` matches the current settings and whose files are all there (nothing is
recomputed or rewritten) and removes leftover ``.partial-*`` folders. A failed input
is a row with status ``error`` in ``OUT/summary.csv``; the others go on.

A worker may die at any moment (SIGKILL, SIGTERM, a lost node). The encoder's bytes are
a task, not scattered data, so the scheduler makes them again on another worker when
the ones holding them die; the reference task and the per-input tasks that the
scheduler gives up on or cancels are submitted again (:data:`REFERENCE_ATTEMPTS`,
:data:`INPUT_ATTEMPTS`); an input published before its worker died is taken from its
folder, never recomputed. With no worker left the batch waits ``worker_timeout``
seconds (``--worker-timeout``) for one, then writes ``summary.csv`` (the unfinished
inputs ``pending``) and raises :class:`NoWorkers` naming the scheduler; a lost
scheduler likewise (:class:`ClusterLost`). A rerun resumes.

One click for all: the structure under the reference point at
:meth:`~napari_cuts.hierarchy.Hierarchy.click_level` is the prototype: the mean of the
features condensation saw (:attr:`~napari_cuts.pipeline.SegmentResult.features`, the
pooled embeddings joined to the image channels, z-scored per image, the image channels
weighing as much as the embeddings: :func:`match_space`) over the structure, and its
centroid in the image (positions in [-1, 1] per axis). In every input, the cluster (any
level) covering between :data:`MIN_MATCH_AREA` and :data:`MAX_MATCH_AREA` of the image
with the best score (:func:`appearance_similarity` of its mean feature to the
prototype, minus :data:`MATCH_POSITION` times its squared distance to the reference
centroid, among the look-alikes: :data:`MATCH_LOOKALIKE`) says where
the structure is, the click rule at its innermost point its level, and the mask is that
cluster with every other cluster of the level scoring nearly as well
(:data:`MATCH_SIMILAR`; a multifocal lesion) (:func:`matched_mask`). Per input the work is deterministic (seeded, one torch thread per task), so
1 worker and 2 workers give the same results.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from . import __version__
from .errors import CutsError, InputError

__all__ = ["CSV_COLUMNS", "CohortInput", "expand_inputs", "run_batch", "structure_means",
           "match_structure", "matched_mask", "prototype_at", "prototype_of_mask", "match_image",
           "extent_level", "match_folder",
           "standardised", "check_reference_point", "is_done",
           "match_space", "image_columns", "appearance_similarity",
           "MIN_MATCH_AREA", "MAX_MATCH_AREA", "MATCH_SIMILAR", "MATCH_POSITION", "MATCH_LOOKALIKE",
           "MATCH_BALANCE_IMAGE", "MAX_TRAIN_IMAGES", "ClusterLost", "NoWorkers",
           "WORKER_TIMEOUT"]

#: Columns of ``summary.csv``, in this order.
CSV_COLUMNS = ("image", "status", "level", "n_clusters", "mask_pixels", "area_mm2",
               "volume_ml", "seconds", "error")
#: The encoder of a cohort is trained on at most this many of its images (evenly spaced).
MAX_TRAIN_IMAGES = 16
#: Clusters that compete as the match of the reference structure cover this fraction
#: of the image, at least and at most.
MIN_MATCH_AREA = 0.0005
MAX_MATCH_AREA = 0.5
#: The matched structure also takes every cluster of its level that scores nearly as
#: well as the match (within ``1 - MATCH_SIMILAR`` of the match's appearance
#: similarity; lesions are often multifocal). Measured on the 40 development retina
#: images, 6 reference images x 39: mean Dice 0.483 -> 0.608 (0.95: 0.584, 0.8: 0.559;
#: every reference gains), with the appearance-only rule of that round.
MATCH_SIMILAR = 0.9
#: Where the structure is: among the look-alikes (clusters whose
#: :func:`appearance_similarity` to the prototype is within :data:`MATCH_LOOKALIKE` of
#: the best in the image), the one with the best score: its similarity minus this many
#: times the squared distance between its centroid and the reference structure's,
#: positions scaled to [-1, 1] along every axis of the image (the corners of a 2D image
#: are 8 apart; across half the image costs 0.5). Scans of one study are framed alike
#: (the macula in the middle of a fundus photograph, the head in the middle of an MRI
#: field of view) while a look-alike (the optic disc beside a geographic atrophy) sits
#: elsewhere; a structure that looks like nothing else is found wherever it is.
#: Measured on the 40 development retina images, two cohort encoders (60 s, seeds 0 and
#: 1), each image's hierarchy cached, 8 references x 39 images each, mean Dice: by
#: appearance alone 0.473 / 0.496; position weight 0.5: **0.563 / 0.578**; 1: 0.563 /
#: 0.579; 2: 0.559 / 0.574; 4: 0.551 / 0.563. Clicking the reference's relative position
#: in every image instead: 0.491 / 0.516. With all 40 references: 0.522 / 0.586,
#: against 0.384 / 0.443 with the rule before (cosine of z-scores, no position, the
#: image channels unbalanced).
MATCH_POSITION = 0.5
#: Look-alikes compete on position: clusters whose appearance similarity to the
#: prototype is within this of the image's best (the seed of the match, and the other
#: parts of a multifocal structure, :data:`MATCH_SIMILAR`). Measured as above (position
#: weight 2): 0.1 -> 0.546 / 0.559, 0.2 -> 0.559 / 0.574, 0.4 -> 0.575 / 0.580; the
#: wider the set, the more the place decides, so the middle value.
MATCH_LOOKALIKE = 0.2
#: The image channels of the match features weigh as much as the embedding channels:
#: after the per-channel z-scores (:func:`standardised`), the C image columns are scaled
#: by sqrt(D / C), D the embedding columns, so that 3 colours are not lost among 128
#: embedding channels. Measured as above with the cosine and no position: 0.375 / 0.413
#: -> 0.437 / 0.466 (half that weight: 0.399; twice: 0.423, encoder 0).
MATCH_BALANCE_IMAGE = True
#: A constant area that reaches the border and covers at least this fraction of the
#: reference image is padding or background, not a structure to click.
CONSTANT_AREA_FRACTION = 0.05
#: Format version of ``done.json`` and of the matching rule (a change makes reruns recompute).
DONE_VERSION = 3
DONE = "done.json"
#: Names in the output folder that no input's folder may take.
RESERVED_NAMES = ("encoder.pt", "summary.csv", "reference.json")
PARTIAL_PREFIX = ".partial-"
SCHEDULER_TIMEOUT = "5s"
#: With no worker at the scheduler (none yet, or every one lost), the batch waits this
#: long for one (``--worker-timeout``), then writes ``summary.csv`` and stops.
WORKER_TIMEOUT = 60.0
WORKER_WAIT_SECONDS = WORKER_TIMEOUT
#: A task lost with its worker (killed, or cancelled with data that died) is submitted
#: again this many times in all; the scheduler itself already reruns a task whose
#: worker dies up to ``distributed.scheduler.allowed-failures`` times first.
INPUT_ATTEMPTS = 3
REFERENCE_ATTEMPTS = 4
#: Seconds to fetch a finished task's (small) result before counting it as lost.
RESULT_TIMEOUT = 120.0
#: Tests and ``bench cohort`` only: a folder in the workers' environment where every
#: task writes ``<phase>@<pid>@<random>.started`` as it starts a phase (``encoder``,
#: ``reference``, ``<stem>``, ``<stem>.write`` once its hierarchy is saved and its
#: other files are being written); with ``hold-<phase>`` in that folder the task then
#: waits (at most :data:`TEST_HOLD_SECONDS`) for ``release-<phase>``, so that a test
#: can kill its worker at that very moment without sleeping.
TEST_MARKER_ENV = "NAPARI_CUTS_TEST_MARKER_DIR"
TEST_HOLD_SECONDS = 60.0

Log = Optional[Callable[[str], None]]
Progress = Optional[Callable[[int, int, str], None]]


# ------------------------------------------------------------------------ inputs

@dataclass(frozen=True)
class CohortInput:
    """One input of a cohort: a file or a DICOM series folder, and its output stem."""

    path: Path      #: absolute (what the workers get)
    stem: str       #: the output folder's name, unique in the cohort
    name: str = ""  #: the path as given (the ``image`` column of ``summary.csv``)


def _has_dicom_files(folder: Path) -> bool:
    """True if ``folder`` itself (not its subfolders) holds DICOM files."""
    from .io._base import DICOM_EXTS, FORMAT, extension, has_dicm_magic

    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        ext = extension(f)
        if ext in DICOM_EXTS or (ext not in FORMAT and has_dicm_magic(f)):
            return True
    return False


def _folder_inputs(folder: Path) -> list[Path]:
    """The inputs a folder stands for: itself if it is a DICOM series folder, else its
    supported image files and its DICOM-series subfolders, sorted by name."""
    from .io import is_supported
    from .io.dicom import looks_like_dicom_folder

    if _has_dicom_files(folder):
        return [folder]
    out = []
    for f in sorted(folder.iterdir(), key=lambda p: p.name):
        if f.name.startswith("."):
            continue
        if f.is_dir():
            if looks_like_dicom_folder(f):
                out.append(f)
        elif is_supported(f):
            out.append(f)
    return out


def expand_inputs(paths: Sequence) -> list[CohortInput]:
    """Files and folders -> the cohort's inputs, in the order given (a folder: its
    supported image files sorted; a DICOM series folder is one input). Output stems are
    the file names without extension, made unique with ``_2``, ``_3``... in order.
    Raises :class:`InputError` when a path does not exist or nothing is left."""
    from .io._base import stem

    if not paths:
        raise InputError("no inputs given; name image files or folders of them.")
    found: list[Path] = []
    for raw in paths:
        p = Path(os.fspath(raw)).expanduser()
        if not p.exists():
            raise InputError(f"{p}: no such file or folder; check the path.")
        if p.is_dir():
            sub = _folder_inputs(p)
            if not sub:
                raise InputError(f"{p} holds no supported image files (PNG/JPEG/TIFF, NIfTI, "
                                 "DICOM) and no DICOM series.")
            found += sub
        else:
            found.append(p)
    seen_paths = set()
    used = {n.lower() for n in RESERVED_NAMES}
    out = []
    for p in found:
        key = os.path.abspath(p)
        if key in seen_paths:
            continue
        seen_paths.add(key)
        base = (stem(p) if p.is_file() else p.name).strip() or "image"
        if base.startswith("."):
            base = "_" + base.lstrip(".")
        name, k = base, 1
        while name.lower() in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name.lower())
        out.append(CohortInput(Path(key), name, str(p)))
    return out


def input_signature(path: Path) -> dict:
    """Size and modification time of a file (or of the files of a folder): a changed
    input is recomputed on a rerun."""
    p = Path(path)
    try:
        if p.is_dir():
            n, size, mtime = 0, 0, 0
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in files:
                    if f.startswith("."):
                        continue
                    st = os.stat(os.path.join(root, f))
                    n, size, mtime = n + 1, size + st.st_size, max(mtime, st.st_mtime_ns)
            return {"files": n, "bytes": size, "mtime_ns": mtime}
        st = p.stat()
        return {"files": 1, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"files": 0, "bytes": -1, "mtime_ns": 0}


def is_volume(src) -> bool:
    """True for an input segmented as one 3D object (as ``napari-cuts segment`` does)."""
    data = src.data
    return (data.ndim == 3 and not src.rgb) or data.ndim == 4


def _physical(src) -> bool:
    return src.format in ("nifti", "dicom") and src.affine is not None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------- reference point

def check_reference_point(src, point, name: str = "the reference image") -> tuple[int, ...]:
    """Validate a reference click on an image read by :func:`napari_cuts.io.read_image`.

    Returns the point as integer indices. Raises :class:`InputError` (one line) when the
    point has the wrong number of coordinates, lies outside the image, or lies on a
    constant area: the whole image constant, or a region of one exact value that
    reaches the border and covers at least :data:`CONSTANT_AREA_FRACTION` of the image
    (padding, a black frame, empty background): there is no structure to match there.
    """
    from scipy import ndimage

    data = np.asarray(src.data)
    vol = is_volume(src)
    spatial = tuple(int(s) for s in data.shape[: 3 if vol else 2])
    axes = "Z Y X" if vol else "Y X"
    try:
        coords = [float(v) for v in point]
    except (TypeError, ValueError):
        raise InputError(f"--point {point!r} must be numbers ({axes}).") from None
    if len(coords) != len(spatial):
        raise InputError(f"--point has {len(coords)} coordinates but {name} is a "
                         f"{'volume' if vol else '2D image'} of {' x '.join(map(str, spatial))}: "
                         f"give {len(spatial)} ({axes}).")
    if not all(math.isfinite(v) for v in coords):
        raise InputError(f"--point {point!r} must be finite numbers ({axes}).")
    idx = tuple(int(round(v)) for v in coords)
    if not all(0 <= i < n for i, n in zip(idx, spatial)):
        raise InputError(f"--point {' '.join(f'{v:g}' for v in coords)} lies outside {name} "
                         f"({' x '.join(map(str, spatial))}, {axes} from 0); give a point "
                         "inside the image.")
    flat = data.reshape(spatial + (-1,))
    if not np.isfinite(flat).all() or np.all(flat == flat.reshape(-1, flat.shape[-1])[0]):
        raise InputError(f"{name} is constant: it has no structure to click; choose another "
                         "reference image.")
    value = flat[idx]
    same = np.all(flat == value, axis=-1)
    lab, _ = ndimage.label(same)
    comp = lab == lab[idx]
    frac = float(comp.mean())
    border = any(np.take(comp, 0, axis=a).any() or np.take(comp, -1, axis=a).any()
                 for a in range(comp.ndim))
    if border and frac >= CONSTANT_AREA_FRACTION or frac >= MAX_MATCH_AREA:
        shown = ", ".join(f"{v:g}" for v in np.ravel(value)[:4])
        raise InputError(f"--point {' '.join(str(i) for i in idx)} lies on a constant area of "
                         f"{name} ({frac:.0%} of the image has the value {shown} there): "
                         "there is no structure under it to find in the other images; click "
                         "inside a structure.")
    return idx


# ---------------------------------------------------------- structure features

def _grid_cells(shape, grid_shape, pools) -> np.ndarray:
    """Flat index of the grid cell of every pixel (voxel), ``(prod(shape),)`` int64."""
    pools = (int(pools),) * len(shape) if np.ndim(pools) == 0 else tuple(int(p) for p in pools)
    idx = [np.minimum(np.arange(n) // p, g - 1) for n, p, g in zip(shape, pools, grid_shape)]
    return np.ravel_multi_index(np.ix_(*idx), tuple(grid_shape)).reshape(-1).astype(np.int64)


def structure_means(hierarchy, features: np.ndarray, pools):
    """Mean feature and area of every cluster of every level.

    ``features``: the grid features ``(h, w, F)`` / ``(z, y, x, F)`` the hierarchy was
    condensed from (:attr:`SegmentResult.features`); ``pools``: the block size (int or one
    per axis) mapping pixels to grid cells. A cluster's mean is the pixel-weighted mean of
    the features of the grid cells its pixels lie in. Returns ``(means, areas)``: lists
    over levels of ``(n_l, F)`` float64 and ``(n_l,)`` fractions of the image."""
    from scipy import sparse

    feats = np.asarray(features, dtype=np.float64)
    grid_shape = feats.shape[:-1]
    fl = feats.reshape(-1, feats.shape[-1])
    shape = tuple(hierarchy.shape)
    cell = _grid_cells(shape, grid_shape, pools)
    base = np.asarray(hierarchy.finest).reshape(-1).astype(np.int64)
    n0 = int(hierarchy.lut(0).shape[0])
    m = sparse.csr_matrix((np.ones(base.size), (base, cell)), shape=(n0, fl.shape[0]))
    sums0 = m @ fl                                    # (n0, F)
    counts0 = np.bincount(base, minlength=n0).astype(np.float64)
    total = float(base.size)
    means, areas = [], []
    for lv in range(int(hierarchy.n_levels)):
        lut = np.asarray(hierarchy.lut(lv)).astype(np.int64)
        n = int(hierarchy.n_clusters[lv])
        agg = sparse.csr_matrix((np.ones(n0), (lut, np.arange(n0))), shape=(n, n0))
        s = agg @ sums0
        c = np.bincount(lut, weights=counts0, minlength=n)
        means.append(s / np.maximum(c, 1.0)[:, None])
        areas.append(c / total)
    return means, areas


def standardised(features: np.ndarray) -> np.ndarray:
    """Features z-scored per channel over the image's grid, float64: photographs of a
    cohort differ in illumination and colour balance, so a structure is matched by how it
    stands out from its own image, not by its raw colour (measured on the 40 retina
    images, one reference: the mean Dice of the matched masks 0.27 -> 0.38)."""
    f = np.asarray(features, dtype=np.float64)
    flat = f.reshape(-1, f.shape[-1])
    return (f - flat.mean(axis=0)) / np.maximum(flat.std(axis=0), 1e-6)


def image_columns(result) -> int:
    """How many of the columns of ``result.features`` (a
    :class:`~napari_cuts.pipeline.SegmentResult`) are image channels: the columns after
    the embeddings; 0 when the features hold no embeddings (then there is nothing to
    balance)."""
    feats = getattr(result, "features", None)
    emb = getattr(result, "embeddings", None)
    if feats is None or emb is None:
        return 0
    return max(int(np.shape(feats)[-1]) - int(np.shape(emb)[-1]), 0)


def match_space(features: np.ndarray, n_image: int = 0) -> np.ndarray:
    """The features a structure is matched in: :func:`standardised` grid features whose
    last ``n_image`` columns (the image channels) are scaled by sqrt(D / n_image), D the
    other columns (:data:`MATCH_BALANCE_IMAGE`), then one position column per axis: the
    grid cell's centre scaled to [-1, 1] along that axis. ``(*grid, F + ndim)`` float64."""
    f = standardised(features)
    n_feat = f.shape[-1]
    k = int(n_image)
    if MATCH_BALANCE_IMAGE and 0 < k < n_feat:
        f[..., n_feat - k:] *= math.sqrt((n_feat - k) / k)
    grid = f.shape[:-1]
    axes = [(np.arange(n, dtype=np.float64) + 0.5) / n * 2.0 - 1.0 for n in grid]
    pos = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return np.concatenate([f, pos], axis=-1)


def _split_prototype(prototype) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``(appearance vector, centroid or None)`` of a prototype: a dict with
    ``"prototype"`` (and ``"centroid"``), or a plain vector (appearance only)."""
    if isinstance(prototype, dict):
        app, cen = prototype.get("prototype"), prototype.get("centroid")
    else:
        app, cen = prototype, None
    app = np.asarray(app, dtype=np.float64).reshape(-1)
    return app, (None if cen is None else np.asarray(cen, dtype=np.float64).reshape(-1))


def appearance_similarity(means: np.ndarray, prototype: np.ndarray) -> np.ndarray:
    """How much each row of ``means`` looks like ``prototype`` (z-scored features, 0 =
    the image's mean): the cosine of the two vectors times the ratio of their lengths
    (the shorter over the longer). The cosine says in which way a structure stands out
    from its image, the length by how much; the cosine alone calls a grey bar a
    look-alike of a white blob, and on the 40 development retina images (8 references
    x 39, two encoders, with the position rule) it gave 0.494 / 0.533 mean Dice against
    0.563 / 0.579 with the length ratio."""
    p = np.asarray(prototype, dtype=np.float64).reshape(-1)
    pn = max(float(np.linalg.norm(p)), 1e-12)
    n = np.maximum(np.linalg.norm(means, axis=1), 1e-12)
    return (means @ p) / (n * pn) * np.minimum(n / pn, pn / n)


def _scores(mu: np.ndarray, app: np.ndarray, centroid, position: float):
    """``(score, appearance similarity)`` of cluster means ``mu`` (appearance columns,
    then one position column per axis when ``centroid`` is given)."""
    k = 0 if centroid is None else centroid.size
    a = mu[:, : mu.shape[1] - k] if k else mu
    if a.shape[1] != app.size:
        raise InputError(f"the reference structure has {app.size} features but this image "
                         f"has {a.shape[1]}: the reference and the image must be segmented "
                         "with the same encoder (and the same input channels).")
    sim = appearance_similarity(a, app)
    if not k:
        return sim, sim
    d2 = ((mu[:, mu.shape[1] - k:] - centroid[None, :]) ** 2).sum(axis=1)
    return sim - float(position) * d2, sim


def _mean_over(features: np.ndarray, pools, mask) -> np.ndarray:
    """Pixel-weighted mean of grid ``features`` over the pixels of ``mask``."""
    grid_shape = features.shape[:-1]
    cell = _grid_cells(mask.shape, grid_shape, pools)
    counts = np.bincount(cell[mask.reshape(-1)], minlength=int(np.prod(grid_shape)))
    return counts.astype(np.float64) @ features.reshape(-1, features.shape[-1]) / float(counts.sum())


def _prototype_of(space: np.ndarray, pools, mask, ndim: int) -> dict:
    v = _mean_over(space, pools, mask)
    return {"prototype": [float(x) for x in v[: v.size - ndim]],
            "centroid": [float(x) for x in v[v.size - ndim:]]}


def prototype_at(hierarchy, features, pools, point, *, n_image: int = 0) -> dict:
    """The reference structure under ``point``: at ``hierarchy.click_level(point)``, its
    cluster's mean in the :func:`match_space` of the raw grid ``features`` (the
    prototype), its centroid there (positions in [-1, 1] per axis) and its size."""
    lv = int(hierarchy.click_level(point))
    lab = np.asarray(hierarchy.labels(lv))
    idx = tuple(int(round(float(v))) for v in point)
    cid = int(lab[idx])
    mask = lab == cid
    space = match_space(features, n_image)
    out = _prototype_of(space, pools, mask, lab.ndim)
    total = float(mask.size)
    return {"level": lv, "cluster": cid, "n_clusters": int(hierarchy.n_clusters[lv]),
            "area_fraction": float(np.count_nonzero(mask)) / total,
            "mask_pixels": int(np.count_nonzero(mask)), **out}


def match_structure(hierarchy, features, pools, prototype, *, min_area: float = MIN_MATCH_AREA,
                    max_area: float = MAX_MATCH_AREA, means=None,
                    position: float = MATCH_POSITION,
                    lookalike: float = MATCH_LOOKALIKE) -> tuple[int, int, float]:
    """The ``(level, cluster, score)`` of the best-scoring cluster among the clusters of
    all levels covering ``min_area``..``max_area`` of the image (ties: the finest level,
    then the lowest id). ``prototype``: a vector (the score is the
    :func:`appearance_similarity` of a cluster's mean feature to it) or a dict with
    ``"prototype"`` and ``"centroid"`` (then the last ``len(centroid)`` columns of
    ``features`` are positions, as :func:`match_space` gives them, the score is the
    appearance similarity of the other columns minus ``position`` times the squared
    distance to the centroid, and only the look-alikes compete: clusters whose
    similarity is within ``lookalike`` of the best). Raises
    :class:`InputError` when no cluster has a size in that range. ``means``: the
    :func:`structure_means` of ``features`` when the caller has them already."""
    app, cen = _split_prototype(prototype)
    means, areas = structure_means(hierarchy, features, pools) if means is None else means
    scored = []
    for mu, a in zip(means, areas):
        ok = (a >= min_area) & (a <= max_area)
        score, cos = _scores(mu, app, cen, position)
        scored.append((np.where(ok, score, -np.inf), np.where(ok, cos, -np.inf)))
    top = max((float(c.max()) for _, c in scored if c.size), default=-np.inf)
    best = (-1, -1, -np.inf)
    for lv, (score, cos) in enumerate(scored):
        if not np.isfinite(top) or not np.isfinite(cos).any():
            continue
        if cen is not None:                  # look-alikes compete on position
            score = np.where(cos >= top - lookalike, score, -np.inf)
        c = int(np.argmax(score))
        if score[c] > best[2] + 1e-12:
            best = (lv, c, float(score[c]))
    if best[0] < 0:
        raise InputError(f"no structure covers between {min_area:.2%} and {max_area:.0%} of "
                         "the image; nothing to match the reference to.")
    return best


def extent_level(hierarchy, point, area: float) -> int:
    """The level whose cluster under ``point`` covers the fraction of the image closest
    to ``area`` (in ratio: |log(size / area)|; ties go to the finer level), among the
    levels with more than one cluster."""
    total = float(np.asarray(hierarchy.finest).size)
    want = max(float(area), 1.0 / total)
    counts = np.asarray(hierarchy.n_clusters)
    best, best_d = 0, np.inf
    for lv, _cid, size in hierarchy.lineage(point):
        if counts[lv] <= 1:
            continue
        d = abs(np.log(max(float(size), 1.0) / total / want))
        if d < best_d - 1e-12:
            best, best_d = int(lv), d
    return best


def matched_mask(hierarchy, features, pools, prototype, *, area: Optional[float] = None,
                 n_image: int = 0):
    """The structure of an input that matches the reference prototype.

    ``features``: the raw grid features (:attr:`SegmentResult.features`), ``n_image``
    how many of their columns are image channels (:func:`image_columns`); they are
    matched in :func:`match_space`. ``prototype``: what :func:`prototype_at` or
    :func:`prototype_of_mask` gives (a dict with ``"prototype"`` and ``"centroid"``), or
    an appearance vector alone (no position term).

    The best-scoring cluster (:func:`match_structure`: appearance, and nearness to the
    reference centroid, :data:`MATCH_POSITION`) says WHERE the structure is; its extent
    is what a click there gives (:meth:`Hierarchy.click_level` at the cluster's
    innermost point), the rule that chose the reference structure itself. (The best
    cluster alone is mostly a speck of the structure: on the retina set, mean Dice 0.10
    against 0.38 for the click at it.) With ``area`` (the reference structure's fraction
    of its image: the widget, where the user chose the extent with the slider), the
    extent is instead the cluster on that point's lineage of the closest size
    (:func:`extent_level`). The mask also holds every cluster of that level whose score
    is within ``1 - MATCH_SIMILAR`` of the match's appearance similarity below the
    match's score and whose similarity is within :data:`MATCH_LOOKALIKE` of the match's
    (a multifocal lesion; ``info["match_clusters"]``). Returns ``(level,
    cluster id, mask, info)``."""
    from .selection import innermost_point

    ndim = len(tuple(hierarchy.shape))
    space = match_space(features, n_image)
    app, cen = _split_prototype(prototype)
    if cen is None:                      # an appearance vector alone: no position term
        space = space[..., : space.shape[-1] - ndim]
    elif cen.size != ndim:
        raise InputError(f"the reference centroid has {cen.size} coordinates but the image "
                         f"has {ndim} axes: match 2D images and volumes separately.")
    proto = {"prototype": app, "centroid": cen}
    stats = structure_means(hierarchy, space, pools)
    slv, scid, score = match_structure(hierarchy, space, pools, proto, means=stats,
                                       position=MATCH_POSITION, lookalike=MATCH_LOOKALIKE)
    seed = innermost_point(hierarchy.labels(slv) == scid)
    lv = int(hierarchy.click_level(seed) if area is None else
             extent_level(hierarchy, seed, area))
    lab = hierarchy.labels(lv)
    cid = int(lab[seed])
    # every other cluster of that level that scores nearly as well (a multifocal
    # lesion, both hippocampi)
    means, areas = stats
    sc, cos = _scores(means[lv], app, cen, MATCH_POSITION)
    keep = np.zeros(sc.shape[0], dtype=bool)
    keep[cid] = True
    if cos[cid] > 0:
        near = sc >= sc[cid] - (1.0 - MATCH_SIMILAR) * cos[cid]
        keep |= near & (cos >= cos[cid] - MATCH_LOOKALIKE) & (areas[lv] <= MAX_MATCH_AREA)
    mask = keep[lab]
    return lv, cid, mask, {"match_seed_level": int(slv), "match_seed_cluster": int(scid),
                           "match_similarity": float(cos[cid]), "match_score": float(score),
                           "match_seed_point": [int(v) for v in seed],
                           "match_level": lv, "match_cluster": cid,
                           "match_clusters": [int(v) for v in np.flatnonzero(keep)]}


def prototype_of_mask(features: np.ndarray, pools, mask, *, n_image: int = 0) -> dict:
    """The prototype of a structure given as a mask (the widget's "Apply to all images"):
    ``{"prototype", "centroid"}``, the pixel-weighted mean of the :func:`match_space`
    of the raw grid ``features`` (what condensation saw, :attr:`SegmentResult.features`;
    ``n_image`` of their columns image channels) over the pixels of ``mask`` (bool, the
    hierarchy's full-resolution shape). Raises :class:`InputError` for an empty mask."""
    m = np.asarray(mask, bool)
    if not m.any():
        raise InputError("the mask is empty: click a structure first.")
    return _prototype_of(match_space(features, n_image), pools, m, m.ndim)


def match_image(encoder, image, prototype, *, spacing=None, seed: int = 0,
                area: Optional[float] = None, progress: Progress = None,
                cancel=None) -> dict:
    """Segment one image with a cohort's encoder (no training) and find the structure
    matching ``prototype`` in it (:func:`matched_mask`).

    ``image``: a 2D image ``(H, W[, C])`` for a 2D encoder, a volume ``(Z, Y, X[, C])``
    (voxel ``spacing`` (sz, sy, sx)) for a volume encoder; ``area``: the reference
    structure's fraction of its image (see :func:`matched_mask`). Returns ``{"mask", "level",
    "cluster", "n_clusters", "mask_pixels", "result"}`` plus :func:`matched_mask`'s match
    information; raises :class:`InputError` when the image is of the other kind and
    :class:`~napari_cuts.errors.Cancelled` when ``cancel()`` says so."""
    from .encoder import is_volume_encoder
    from .pipeline import segment_image, segment_volume

    data = np.asarray(image)
    vol_enc = is_volume_encoder(encoder)
    if vol_enc:
        if data.ndim not in (3, 4):
            raise InputError(f"an image of shape {data.shape}, but the encoder is for volumes; "
                             "match 2D images and volumes separately.")
        res = segment_volume(encoder, data, spacing=spacing, seed=seed, progress=progress,
                             cancel=cancel)
    else:
        res = segment_image(encoder, data, seed=seed, progress=progress, cancel=cancel)
    lv, cid, mask, info = matched_mask(res.hierarchy, res.features, res.pool, prototype,
                                       area=area, n_image=image_columns(res))
    return {"mask": np.asarray(mask, bool), "level": int(lv), "cluster": int(cid),
            "n_clusters": int(res.hierarchy.n_clusters[lv]),
            "mask_pixels": int(np.count_nonzero(mask)), "result": res, **info}


def match_folder(encoder, inputs, prototype, out_dir, *, area: Optional[float] = None,
                 seed: int = 0, progress: Progress = None, cancel=None) -> list[dict]:
    """:func:`match_image` on every input of ``inputs`` (files and folders, as
    :func:`expand_inputs` takes them), in this process, with one encoder: per input
    ``out_dir/<stem>_mask.png`` (pictures) or ``_mask.nii.gz`` (NIfTI/DICOM or a volume,
    the source geometry), then ``out_dir/summary.csv`` (:data:`CSV_COLUMNS`). A failed
    input is a row with status ``error`` and the others go on; each mask file is written
    whole or not at all, and a cancel (:class:`~napari_cuts.errors.Cancelled`) stops
    before the summary. Returns the rows."""
    from .encoder import is_volume_encoder
    from .errors import Cancelled
    from .fileutil import make_output_dir
    from .images import check_cancel
    from .io import read_image, write_mask

    items = expand_inputs(inputs)
    out = make_output_dir(out_dir)
    vol_enc = is_volume_encoder(encoder)
    rows: list[dict] = []
    n = len(items)
    for j, item in enumerate(items):
        check_cancel(cancel)
        t0 = time.perf_counter()
        row = _empty_row(item.name)

        def prog(d, t, m, j=j, item=item):
            if progress is not None:
                t = max(int(t), 1)
                progress(j * t + min(int(d), t), n * t, f"{j + 1}/{n} {item.stem}: {m}")

        try:
            src = read_image(item.path)
            vol = is_volume(src)
            if vol != vol_enc:
                raise InputError(f"{'a volume' if vol else 'a 2D image'}, but the encoder is "
                                 f"for {'volumes' if vol_enc else '2D images'}.")
            spacing = tuple(float(v) for v in src.spacing[:3]) if vol else None
            r = match_image(encoder, np.asarray(src.data), prototype, spacing=spacing,
                            seed=seed, area=area, progress=prog, cancel=cancel)
            medical = src.format in ("nifti", "dicom")
            name = f"{item.stem}_mask" + (".nii.gz" if (medical or vol) else ".png")
            write_mask(out / name, r["mask"], like=src if medical else None)
            px = int(r["mask_pixels"])
            row.update({"status": "ok", "level": r["level"], "n_clusters": r["n_clusters"],
                        "mask_pixels": px})
            if vol:
                row["volume_ml"] = round(px * float(np.prod(spacing)) / 1000.0, 6)
            elif _physical(src):
                row["area_mm2"] = round(px * float(np.prod(src.spacing[:2])), 6)
            row["mask"] = str(out / name)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad input is a row, the others go on
            row.update({"status": "error", "error": _one_line(exc)})
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
    _write_summary(out / "summary.csv", rows)
    return rows


# -------------------------------------------------------------- worker side

_ENCODERS: dict = {}
_ENC_LOCK = threading.Lock()


def _single_thread_torch() -> None:
    """One torch thread per task: tasks of a worker's threads run side by side, and a
    fixed thread count keeps the results independent of the engine. (The encoder
    module sets torch to every core before each embedding; here that means the
    worker's share.)"""
    import torch

    from . import encoder as E

    if getattr(E._use_all_cores, "_cohort", False):
        torch.set_num_threads(1)
        return

    def one(num_threads=None):
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)

    one._cohort = True
    E._use_all_cores = one
    torch.set_num_threads(1)


def _marker(phase: str) -> None:
    """The test hook of :data:`TEST_MARKER_ENV` (nothing when it is not set)."""
    folder = os.environ.get(TEST_MARKER_ENV)
    if not folder:
        return
    d = Path(folder)
    try:
        (d / f"{phase}@{os.getpid()}@{uuid.uuid4().hex[:8]}.started").touch()
        if (d / f"hold-{phase}").exists():
            deadline = time.monotonic() + TEST_HOLD_SECONDS
            while not (d / f"release-{phase}").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
    except OSError:
        pass


def encoder_blob(payload: bytes, sha: str) -> bytes:
    """Worker: the cohort encoder's file bytes, as a task every other task depends on.

    A task, not ``client.scatter``: the scheduler keeps how to make it, so when the
    workers holding it die it is made again on another one (scattered data would be
    lost with them, and the tasks depending on it cancelled)."""
    _marker("encoder")
    return payload


def _encoder_from_bytes(payload: bytes, sha: str):
    """The encoder of these weights, loaded once per worker process."""
    from .encoder import load_encoder

    with _ENC_LOCK:
        enc = _ENCODERS.get(sha)
        if enc is None:
            fd, tmp = tempfile.mkstemp(prefix="napari_cuts_encoder_", suffix=".pt")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(payload)
                enc = load_encoder(tmp, device="auto")
            finally:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            _ENCODERS.clear()
            _ENCODERS[sha] = enc
        return enc


def _segment(enc, src, seed: int):
    """Segment one input read by ``read_image`` with the cohort encoder."""
    from .encoder import is_volume_encoder
    from .pipeline import segment_image, segment_volume

    data = np.asarray(src.data)
    vol = is_volume(src)
    if vol != is_volume_encoder(enc):
        raise InputError(f"{'a volume' if vol else 'a 2D image'} of shape {data.shape}, but the "
                         f"cohort encoder is for {'volumes' if is_volume_encoder(enc) else '2D images'}; "
                         "segment 2D images and volumes in separate batches.")
    if vol:
        spacing = tuple(float(v) for v in src.spacing[:3])
        return segment_volume(enc, data, spacing=spacing, seed=seed), spacing
    return segment_image(enc, data, seed=seed), tuple(float(v) for v in src.spacing[:2])


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, CutsError):
        text = f"{type(exc).__name__}: {text}"
    return text[:limit]


def _empty_row(image: str) -> dict:
    return {k: "" for k in CSV_COLUMNS} | {"image": image}


def reference_task(path: str, point, enc_payload: bytes, enc_sha: str, seed: int) -> dict:
    """Worker: segment the reference image and return its prototype (or ``{"error"}``)."""
    from .io import read_image

    _single_thread_torch()
    _marker("reference")
    try:
        enc = _encoder_from_bytes(enc_payload, enc_sha)
        src = read_image(path)
        idx = check_reference_point(src, point, Path(path).name)
        res, _ = _segment(enc, src, seed)
        out = prototype_at(res.hierarchy, res.features, res.pool, idx,
                           n_image=image_columns(res))
        out["point"] = list(idx)
        return out
    except Exception as exc:  # noqa: BLE001 - the client raises it as an InputError
        return {"error": _one_line(exc)}


def process_input(path: str, stem: str, out_dir: str, enc_payload: bytes, enc_sha: str,
                  seed: int, expect: dict, reference: Optional[dict] = None,
                  _crash_once: Optional[tuple] = None, enc_path: Optional[str] = None) -> dict:
    """Worker: segment one input and publish ``out_dir/stem/`` atomically.

    Returns the summary row (``status`` ``ok`` or ``error``, ``error`` its one-line
    message); never raises for a bad input. An input already published with ``expect``
    (a run of this task whose worker died after publishing it, or another copy of it)
    is not computed again: its row is returned."""
    from .fileutil import write_json
    from .io import read_image, write_labels, write_mask

    t0 = time.perf_counter()
    row = _empty_row(path)
    out = Path(out_dir)
    partial = out / f"{PARTIAL_PREFIX}{stem}-{uuid.uuid4().hex[:10]}"
    _marker(stem)
    done = is_done(out / stem, expect)
    if done is not None:
        return dict(done["row"], image=path)
    try:
        _single_thread_torch()
        enc = _encoder_from_bytes(enc_payload, enc_sha)
        src = read_image(path)
        res, spacing = _segment(enc, src, seed)
        hier = res.hierarchy
        hier.metadata.update({"input": str(path)})
        partial.mkdir(parents=True)
        medical = src.format in ("nifti", "dicom")
        vol = is_volume(src)
        files = ["hierarchy.npz", "prompts.npz"]
        hier.save(partial / "hierarchy.npz")
        from .prompts import save_prompt_data

        save_prompt_data(partial, image=np.asarray(src.data), spacing=spacing if vol else (
            spacing if len(spacing) == 2 and all(v > 0 for v in spacing) else (1.0, 1.0)))
        _marker(f"{stem}.write")
        if _crash_once is not None and _crash_once[0] == stem and not Path(_crash_once[1]).exists():
            Path(_crash_once[1]).write_text("crashed once\n")   # tests: die mid-write, once
            os.kill(os.getpid(), 9)
        pers = hier.persistent()
        pname = "persistent.nii.gz" if (medical or vol) else "persistent.png"
        write_labels(partial / pname, pers, like=src if medical else None)
        files.append(pname)
        info = {"shape": list(np.asarray(src.data).shape), "n_levels": int(hier.n_levels),
                "n_clusters": [int(c) for c in hier.n_clusters], "format": src.format,
                "volume": bool(vol)}
        if reference is not None:
            lv, cid, mask, match = matched_mask(hier, res.features, res.pool, reference,
                                                n_image=image_columns(res))
            mname = "mask.nii.gz" if (medical or vol) else "mask.png"
            write_mask(partial / mname, mask, like=src if medical else None)
            files.append(mname)
            px = int(np.count_nonzero(mask))
            row.update({"level": lv, "n_clusters": int(hier.n_clusters[lv]), "mask_pixels": px})
            if vol:
                row["volume_ml"] = round(px * float(np.prod(spacing)) / 1000.0, 6)
            elif _physical(src):
                row["area_mm2"] = round(px * float(np.prod(spacing)), 6)
            info.update(match)
        row.update({"status": "ok", "seconds": round(time.perf_counter() - t0, 3)})
        # what a session needs to reopen this folder in napari (as segment's run.json)
        from .session import file_digest

        kw = src.layer_kwargs()
        write_json(partial / "run.json", {
            "napari_cuts_version": __version__, "input": str(Path(path).resolve()),
            "seed": int(seed), "shape": info["shape"], "batch": True,
            "encoder": str(Path(enc_path).resolve()) if enc_path else None,
            "source": {**file_digest(path), "shape": info["shape"]},
            "geometry": {"scale": list(kw["scale"]), "translate": list(kw["translate"]),
                         "affine": kw["metadata"].get("affine"),
                         "spacing": [float(v) for v in src.spacing]},
            "n_levels": info["n_levels"], "n_clusters": info["n_clusters"]})
        files.append("run.json")
        done = dict(expect)
        done.update({"stem": stem, "files": {f: (partial / f).stat().st_size for f in files},
                     "row": row, "info": info, "napari_cuts_version": __version__})
        write_json(partial / DONE, done)
        _publish(partial, out / stem)
        return row
    except Exception as exc:  # noqa: BLE001 - one bad input is a row, the others go on
        shutil.rmtree(partial, ignore_errors=True)
        row.update({"status": "error", "error": _one_line(exc),
                    "seconds": round(time.perf_counter() - t0, 3)})
        return row


def _publish(partial: Path, final: Path) -> None:
    """Move a finished ``partial`` folder onto ``final`` (one rename when ``final`` does
    not exist; an older ``final`` is moved aside first and removed after)."""
    try:
        os.replace(partial, final)
        return
    except OSError:
        if not final.exists():
            raise
    old = final.with_name(f"{PARTIAL_PREFIX}old-{final.name}-{uuid.uuid4().hex[:10]}")
    try:
        os.replace(final, old)
    except FileNotFoundError:
        pass
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)


# -------------------------------------------------------------- client side

def is_done(folder: Path, expect: dict) -> Optional[dict]:
    """``done.json`` of a finished input folder when it matches ``expect`` (same input
    signature, encoder, seed, reference) and every file it lists is there with its
    size; else None (the input is recomputed)."""
    try:
        done = json.loads((Path(folder) / DONE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict) or any(done.get(k) != v for k, v in expect.items()):
        return None
    files = done.get("files")
    if not isinstance(files, dict) or not files:
        return None
    for name, size in files.items():
        try:
            if (Path(folder) / name).stat().st_size != size:
                return None
        except OSError:
            return None
    return done


def _write_summary(path: Path, rows: list[dict]) -> None:
    from .fileutil import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in CSV_COLUMNS})


def _clean_partials(out: Path) -> None:
    for p in out.glob(f"{PARTIAL_PREFIX}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _training_sample(inputs: list[CohortInput], log) -> tuple[list, list, bool]:
    """Read up to MAX_TRAIN_IMAGES evenly spaced inputs (unreadable ones skipped).
    Returns ``(arrays, spacings, volumes)``; InputError for a 2D/volume or channel mix."""
    from .io import read_image

    n = len(inputs)
    order = list(np.linspace(0, n - 1, min(n, MAX_TRAIN_IMAGES)).round().astype(int))
    order += [i for i in range(n) if i not in set(order)]
    arrays, spacings, kinds, names = [], [], [], []
    for i in order:
        if len(arrays) >= MAX_TRAIN_IMAGES:
            break
        try:
            src = read_image(inputs[i].path)
        except CutsError as exc:
            log(f"not used for training: {_one_line(exc)}")
            continue
        data = np.asarray(src.data)
        vol = is_volume(src)
        chans = (data.shape[3] if data.ndim == 4 else 1) if vol else (
            data.shape[2] if data.ndim == 3 else 1)
        kinds.append((vol, chans))
        names.append(inputs[i].path.name)
        arrays.append(data)
        spacings.append(tuple(float(v) for v in src.spacing[:3]) if vol else None)
    if not arrays:
        raise InputError("no input could be read to train the cohort encoder; see the errors "
                         "above, or give --weights.")
    vols = {k[0] for k in kinds}
    if len(vols) > 1:
        a = names[[k[0] for k in kinds].index(True)]
        b = names[[k[0] for k in kinds].index(False)]
        raise InputError(f"the cohort mixes volumes ({a}) and 2D images ({b}); one encoder "
                         "serves one kind: run them as separate batches.")
    chans = {k[1] for k in kinds}
    if len(chans) > 1:
        by = {}
        for k, nm in zip(kinds, names):
            by.setdefault(k[1], nm)
        raise InputError("the cohort mixes channel counts ("
                         + ", ".join(f"{c} in {nm}" for c, nm in sorted(by.items()))
                         + "); one encoder needs one channel count: convert them or run "
                           "separate batches.")
    return arrays, spacings, vols.pop()


class ClusterLost(CutsError):
    """The batch cannot go on: the dask scheduler is gone, or has had no worker for the
    whole ``--worker-timeout`` (:class:`NoWorkers`). Finished inputs are kept; a rerun
    resumes."""


class NoWorkers(ClusterLost):
    """No dask worker at the scheduler for the whole ``--worker-timeout``."""


class _Watchdog:
    """Counts the scheduler's workers (at most once a second) while the batch waits on
    tasks; :class:`NoWorkers` once there has been none for ``timeout`` seconds, a
    :class:`CutsError` naming the scheduler when the scheduler cannot be reached."""

    def __init__(self, client, address: str, timeout: float, log):
        self.client, self.address, self.timeout, self.log = client, address, float(timeout), log
        self.last = -math.inf
        self.since: Optional[float] = None
        self.lost_workers = 0
        self.n = None

    def check(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        try:
            n = len(self.client.nthreads())
        except Exception as exc:  # noqa: BLE001 - the scheduler is gone or unreachable
            raise ClusterLost(f"lost the dask scheduler at {self.address} "
                              f"({_one_line(exc, 160)})") from None
        if self.n is not None and n < self.n:
            self.lost_workers += self.n - n
            self.log(f"{self.n - n} dask worker(s) lost at {self.address}; {n} left")
        self.n = n
        if n:
            if self.since is not None:
                self.log(f"{n} dask worker(s) at {self.address} again; going on")
            self.since = None
            return
        if self.since is None:
            self.since = now
            self.log(f"no dask worker left at {self.address}; waiting up to "
                     f"{self.timeout:g} s for one ...")
        elif now - self.since >= self.timeout:
            raise NoWorkers(f"no dask worker at the scheduler {self.address} for "
                            f"{self.timeout:g} s (--worker-timeout)")

    def wait(self, futures, event: threading.Event) -> None:
        """Until one of ``futures`` is done (``event`` set by their done callbacks),
        checking the workers every second."""
        while not any(f.done() for f in futures):
            event.wait(1.0)
            event.clear()
            self.check()


def _connect(scheduler: Optional[str], workers: Optional[int], n_tasks: int, log,
             worker_timeout: float = WORKER_TIMEOUT):
    """``(client, cluster)``: a Client of the scheduler at ``scheduler`` (cluster None),
    or of a new LocalCluster of ``workers`` single-threaded worker processes. A
    scheduler without workers is given ``worker_timeout`` seconds to get one
    (:class:`NoWorkers` after that)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise CutsError(f"cannot reach a dask scheduler at {scheduler} within "
                            f"{SCHEDULER_TIMEOUT} ({_one_line(exc, 160)}); start one with "
                            f"`dask scheduler` and workers with `dask worker {scheduler}`, or "
                            "leave out --scheduler for a local cluster.") from None
        n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        if n == 0:
            log(f"waiting up to {worker_timeout:g} s for workers at {scheduler} ...")
            try:
                client.wait_for_workers(1, timeout=worker_timeout)
            except (TimeoutError, OSError):
                client.close()
                raise NoWorkers(f"the dask scheduler at {scheduler} has no workers (waited "
                                f"{worker_timeout:g} s, --worker-timeout)") from None
        log(f"dask scheduler {scheduler}: "
            f"{len(client.scheduler_info(n_workers=-1).get('workers', {}))} worker(s)"
            + (f"; dashboard {client.dashboard_link}" if _has_bokeh() else ""))
        return client, None
    if workers is not None and int(workers) < 1:
        raise InputError(f"--workers must be at least 1, got {workers}.")
    n = int(workers) if workers else max(1, min(os.cpu_count() or 1, n_tasks))
    bokeh = _has_bokeh()
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=":8787" if bokeh else None)
    client = Client(cluster, set_as_default=False)
    log(f"local dask cluster: {n} worker process(es), 1 thread each"
        + (f"; dashboard {client.dashboard_link}" if bokeh else
           " (pip install bokeh for the dashboard)"))
    return client, cluster


class _ClusterEncoder:
    """The encoder's bytes on the cluster: one :func:`encoder_blob` task (which the
    scheduler makes again when the workers holding its result die), submitted again
    when it was cancelled or failed."""

    def __init__(self, client, payload: bytes, sha: str, run_id: str):
        self.client, self.payload, self.sha, self.run_id = client, payload, sha, run_id
        self.sent = 0
        self.future = None
        self.get()

    def get(self):
        if self.future is None or self.future.status in ("cancelled", "error"):
            if self.future is not None:
                self.future.release()
            self.sent += 1
            self.future = self.client.submit(encoder_blob, self.payload, self.sha,
                                             key=f"cuts-encoder-{self.run_id}-{self.sent}",
                                             pure=False)
        return self.future


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def address_of(scheduler, client, cluster) -> str:
    """The scheduler's address, for messages."""
    if scheduler:
        return str(scheduler)
    for obj, attr in ((cluster, "scheduler_address"), (getattr(client, "scheduler", None),
                                                       "address")):
        try:
            a = getattr(obj, attr, None)
        except Exception:  # noqa: BLE001 - a closed cluster
            a = None
        if a:
            return str(a)
    return "(unknown)"


def _result_timeout(worker_timeout: float) -> float:
    """How long to fetch a finished task's result: never longer than the batch waits
    for a worker (a result whose worker died is then taken from disk or recomputed)."""
    return max(5.0, min(RESULT_TIMEOUT, float(worker_timeout)))


def _pending_rows(items, rows, error: str = "") -> list[dict]:
    """The summary rows with every input not finished yet as ``pending``."""
    return [r or _empty_row(items[j].name) | {"status": "pending", "error": error}
            for j, r in enumerate(rows)]


def _reference_on_cluster(client, watch: _Watchdog, encoder: _ClusterEncoder, path: str,
                          point, enc_sha: str, seed: int, run_id: str, recovered: dict,
                          log) -> dict:
    """:func:`reference_task` on the cluster, submitted again (with the encoder, where
    it was lost) when its worker dies or its data is lost: at most
    :data:`REFERENCE_ATTEMPTS` times."""
    event = threading.Event()
    last = None
    for attempt in range(1, REFERENCE_ATTEMPTS + 1):
        recovered["reference_attempts"] = attempt
        fut = client.submit(reference_task, path, point, encoder.get(), enc_sha, seed,
                            key=f"cuts-reference-{run_id}-{attempt}", pure=False)
        fut.add_done_callback(lambda _f: event.set())
        try:
            watch.wait([fut], event)
            return fut.result(timeout=_result_timeout(watch.timeout))
        except CutsError:       # ClusterLost
            raise
        except Exception as exc:  # noqa: BLE001 - lost with its worker: reference_task never raises
            last = exc
            if attempt < REFERENCE_ATTEMPTS:
                log(f"the reference task was lost ({_one_line(exc, 160)}); "
                    f"submitting it again ({attempt + 1} of {REFERENCE_ATTEMPTS})")
        finally:
            fut.release()       # a worker dying later must not recompute the reference
    raise CutsError(f"the reference task was lost with its worker {REFERENCE_ATTEMPTS} times "
                    f"(last: {_one_line(last, 160)}); the workers at {watch.address} keep "
                    "dying: see their logs (memory?), then rerun.")


def _reference_key(ref_path: Path, point, enc_sha: str, seed: int) -> dict:
    return {"version": DONE_VERSION, "reference": str(ref_path),
            "reference_signature": input_signature(ref_path),
            "point": [float(v) for v in point], "encoder_sha256": enc_sha, "seed": int(seed)}


def run_batch(inputs, out_dir, *, weights=None, epochs=None, seconds=None, reference=None,
              point=None, scheduler: Optional[str] = None, workers: Optional[int] = None,
              seed: int = 0, client=None, progress: Progress = None, log: Log = None,
              worker_timeout: float = WORKER_TIMEOUT, _crash_once: Optional[tuple] = None) -> dict:
    """The ``napari-cuts batch`` job (module doc). ``inputs``: files and folders.

    ``client``: an existing :class:`distributed.Client` to use (tests, benchmarks);
    else ``scheduler`` (an address) or a LocalCluster of ``workers`` processes.
    ``worker_timeout``: seconds to wait for a worker when the scheduler has none (module
    doc). Returns ``{"rows", "computed", "skipped", "failed", "encoder", "trained",
    "reference", "seconds_total", "seconds_tasks", "recovered"}`` (``recovered``, when
    the cluster was used: ``reference_attempts``, ``encoder_sends``, and ``resubmitted``
    {stem: times}: what the batch submitted again after losses); ``OUT/summary.csv``
    holds the rows."""
    from .fileutil import make_output_dir, write_json
    from .io import read_image

    log = log or (lambda m: None)
    t_start = time.perf_counter()
    items = expand_inputs(inputs)
    out = make_output_dir(out_dir)
    _clean_partials(out)
    if weights is not None and (epochs is not None or seconds is not None):
        raise InputError("give --weights or a training budget (--epochs / --seconds), not both.")
    if not (math.isfinite(float(worker_timeout)) and float(worker_timeout) >= 0):
        raise InputError(f"--worker-timeout must be a number of seconds >= 0, got {worker_timeout}.")
    if (reference is None) != (point is None):
        raise InputError("--reference and --point go together: the image and the point "
                         "clicked on it.")
    ref_path = None
    if reference is not None:
        ref_path = Path(os.path.abspath(Path(os.fspath(reference)).expanduser()))
        ref_src = read_image(ref_path)
        point = list(check_reference_point(ref_src, point, ref_path.name))
        del ref_src

    # the encoder: given, or trained earlier into OUT/encoder.pt (reused), or to train
    enc_file = out / "encoder.pt"
    trained = False
    if weights is not None:
        enc_file = Path(weights).expanduser()
        if not enc_file.is_file():
            raise InputError(f"encoder weights {enc_file} do not exist (or are not a file).")
        from .encoder import load_encoder

        load_encoder(enc_file, device="cpu")        # a clear WeightsError now, not per task
    elif enc_file.is_file():
        log(f"reusing the cohort encoder {enc_file} (delete it to train a new one)")
    else:
        enc_file = None

    def expectation(enc_sha, ref_key):
        return {"done_version": DONE_VERSION, "encoder_sha256": enc_sha, "seed": int(seed),
                "reference": None if ref_key is None else hashlib.sha256(
                    json.dumps(ref_key, sort_keys=True).encode()).hexdigest()}

    def plan(enc_sha, ref_key):
        rows, todo = [None] * len(items), []
        base = expectation(enc_sha, ref_key)
        for i, it in enumerate(items):
            exp = dict(base, input=str(it.path), input_signature=input_signature(it.path))
            done = is_done(out / it.stem, exp) if enc_sha else None
            if done is not None:
                r = _empty_row(it.name) | {k: done["row"].get(k, "") for k in CSV_COLUMNS}
                rows[i] = r | {"image": it.name, "status": "skipped"}
            else:
                todo.append((i, exp))
        return rows, todo

    def cached_reference(enc_sha):
        if ref_path is None or enc_sha is None:
            return None, None
        key = _reference_key(ref_path, point, enc_sha, seed)
        try:
            ref = json.loads((out / "reference.json").read_text())
            if ref.get("key") == key and isinstance(ref.get("prototype"), list):
                return key, ref
        except (OSError, ValueError):
            pass
        return key, None

    enc_sha = _sha256_file(enc_file) if enc_file is not None else None
    ref_key, ref = cached_reference(enc_sha)
    rows, todo = plan(enc_sha, ref_key)
    result = {"rows": rows, "computed": 0, "skipped": len(items) - len(todo), "failed": 0,
              "encoder": str(enc_file) if enc_file else None, "trained": False,
              "reference": None, "seconds_tasks": 0.0}
    if not todo and (ref_path is None or ref is not None):
        _write_summary(out / "summary.csv", rows)
        log(f"all {len(items)} inputs are complete in {out}; nothing to do")
        result.update(reference=ref, seconds_total=round(time.perf_counter() - t_start, 3))
        return result

    sample = None
    if enc_file is None:         # read (and check) the training sample before any cluster
        sample = _training_sample(items, log)
    own = client is None
    cluster = None
    if own:
        try:
            client, cluster = _connect(scheduler, workers, len(todo), log, worker_timeout)
        except NoWorkers as exc:
            _write_summary(out / "summary.csv", _pending_rows(items, rows, "not run: no dask worker"))
            raise NoWorkers(f"{exc}; start some with `dask worker {scheduler}` and rerun.") from None
    address = address_of(scheduler, client, cluster)
    pending: dict = {}           # future -> index of the input
    try:
        if enc_file is None:
            from .pipeline import get_encoder, train_volume_encoder

            arrays, spacings, vols = sample
            sample = None
            log(f"training the cohort encoder on {len(arrays)} of {len(items)} inputs"
                f"{' (volumes)' if vols else ''} ...")
            stage = None if progress is None else (lambda d, t, m: progress(d, t, f"training: {m}"))
            if epochs is None and seconds is None:
                from .pipeline import DEFAULT_SECONDS

                seconds_ = DEFAULT_SECONDS
            else:
                seconds_ = seconds
            if vols:
                enc = train_volume_encoder(arrays, spacing=spacings, epochs=epochs,
                                           seconds=seconds_, seed=seed, progress=stage)
            else:
                enc, _ = get_encoder(arrays, epochs=epochs, seconds=seconds_, seed=seed,
                                     progress=stage)
            del arrays
            enc_file = out / "encoder.pt"
            enc.save(enc_file)
            trained = True
            enc_sha = _sha256_file(enc_file)
            ref_key, ref = cached_reference(enc_sha)
            rows, todo = plan(enc_sha, ref_key)
            result.update(rows=rows, skipped=len(items) - len(todo), encoder=str(enc_file),
                          trained=True)
        payload = enc_file.read_bytes()
        run_id = uuid.uuid4().hex[:8]
        watch = _Watchdog(client, address, worker_timeout, log)
        encoder = _ClusterEncoder(client, payload, enc_sha, run_id)
        recovered = {"reference_attempts": 0, "encoder_sends": 0, "resubmitted": {}}
        result["recovered"] = recovered

        if ref_path is not None and ref is None:
            log(f"segmenting the reference {ref_path.name} at {tuple(point)} ...")
            got = _reference_on_cluster(client, watch, encoder, str(ref_path), point, enc_sha,
                                        seed, run_id, recovered, log)
            if "error" in got:
                raise InputError(f"reference {ref_path.name}: {got['error']}")
            ref = dict(got, key=ref_key)
            write_json(out / "reference.json", ref)
        if ref is not None:
            log(f"reference structure: level {ref['level']} ({ref['n_clusters']} clusters), "
                f"{ref['mask_pixels']} pixels ({ref['area_fraction']:.2%} of the image)")
        result["reference"] = ref
        reference_arg = None if ref is None else {"prototype": ref["prototype"],
                                                  "centroid": ref.get("centroid")}

        t_tasks = time.perf_counter()
        expected = dict(todo)
        attempts: dict = {}
        event = threading.Event()

        def wake(_f):
            event.set()

        def submit(i):
            it = items[i]
            attempts[i] = attempts.get(i, 0) + 1
            f = client.submit(process_input, str(it.path), it.stem, str(out), encoder.get(),
                              enc_sha, int(seed), expected[i], reference_arg, _crash_once,
                              str(enc_file) if enc_file is not None else None,
                              key=f"cuts-{it.stem}-{run_id}-{attempts[i]}", pure=False)
            pending[f] = i
            f.add_done_callback(wake)

        for i, _exp in todo:
            submit(i)
        total, done_n = len(items), len(items) - len(todo)
        if progress is not None:
            progress(done_n, total, f"batch: {done_n}/{total} done")
        _write_summary(out / "summary.csv", _pending_rows(items, rows))
        while pending:
            watch.wait(list(pending), event)
            for f in [f for f in pending if f.done()]:
                i = pending.pop(f)
                it = items[i]
                try:
                    row = f.result(timeout=_result_timeout(worker_timeout))
                except Exception as exc:  # noqa: BLE001 - lost with its worker(s), not a bad input
                    done = is_done(out / it.stem, expected[i])
                    if done is not None:       # published before its worker died
                        row = dict(done["row"])
                    elif attempts[i] < INPUT_ATTEMPTS:
                        # the scheduler gave up on it (its workers kept dying: KilledWorker)
                        # or cancelled it with lost data: submit it again (the encoder too
                        # where it was lost); its outputs are only ever published whole
                        log(f"{it.stem}: task lost ({_one_line(exc, 160)}); "
                            f"submitting it again ({attempts[i] + 1} of {INPUT_ATTEMPTS})")
                        recovered["resubmitted"][it.stem] = attempts[i]
                        submit(i)
                        continue
                    else:
                        row = _empty_row("") | {"status": "error", "error": (
                            f"lost with its worker {attempts[i]} times; last: {_one_line(exc)}")}
                finally:
                    f.release()
                row = dict(row, image=it.name)
                rows[i] = row
                done_n += 1
                if row["status"] == "ok":
                    result["computed"] += 1
                else:
                    result["failed"] += 1
                    log(f"{it.path.name}: error: {row['error']}")
                if progress is not None:
                    progress(done_n, total, f"batch: {it.stem} {row['status']}")
                else:
                    log(f"[{done_n}/{total}] {it.stem}: {row['status']}")
                _write_summary(out / "summary.csv", _pending_rows(items, rows))
        result["seconds_tasks"] = round(time.perf_counter() - t_tasks, 3)
        recovered["encoder_sends"] = encoder.sent
    except ClusterLost as exc:
        for f in pending:
            f.release()
        _clean_partials(out)
        why = "no dask worker" if isinstance(exc, NoWorkers) else "dask scheduler lost"
        _write_summary(out / "summary.csv", _pending_rows(items, rows, f"not run: {why}"))
        finished = sum(1 for r in rows if r is not None and r.get("status") != "error")
        fix = (f"start workers (`dask worker {address}`)" if isinstance(exc, NoWorkers)
               else "start the scheduler and its workers again")
        raise type(exc)(f"{exc}: {finished} of {len(items)} inputs are complete, the rest "
                        f"pending in {out / 'summary.csv'}; {fix} and rerun the same command "
                        "to resume.") from None
    finally:
        if own:
            try:
                client.close()
            finally:
                if cluster is not None:
                    cluster.close()
    _clean_partials(out)
    _write_summary(out / "summary.csv", rows)
    result.update(rows=rows, trained=trained, seconds_total=round(time.perf_counter() - t_start, 3))
    return result
