"""One structure matched across images: a reference click (or mask) found in every image.

Shared by ``napari-cuts batch`` (:mod:`napari_cuts.cohort`) and the widget's "Apply to
all images" / "Apply to folder".

The structure under the reference point at
:meth:`~napari_cuts.hierarchy.Hierarchy.click_level` is the prototype
(:func:`prototype_at`; :func:`prototype_of_mask` for a mask): the mean of the
features condensation saw (:attr:`~napari_cuts.pipeline.SegmentResult.features`, the
pooled embeddings joined to the image channels, z-scored per image, the image channels
weighing as much as the embeddings: :func:`match_space`) over the structure, and its
centroid in the image (positions in [-1, 1] per axis). In every image, the cluster (any
level) covering between :data:`MIN_MATCH_AREA` and :data:`MAX_MATCH_AREA` of the image
with the best score (:func:`appearance_similarity` of its mean feature to the
prototype, minus :data:`MATCH_POSITION` times its squared distance to the reference
centroid, among the look-alikes: :data:`MATCH_LOOKALIKE`) says where the structure is,
the click rule at its innermost point its level, and the mask is that cluster with
every other cluster of the level scoring nearly as well (:data:`MATCH_SIMILAR`; a
multifocal lesion) (:func:`matched_mask`). :func:`match_image` segments one image with
a cohort's encoder and matches; :func:`match_folder` does so for every input of a
folder in this process.
"""

from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np

from .cohort_files import (
    empty_row, expand_inputs, has_physical_spacing, is_volume, one_line, write_summary,
)
from .errors import InputError
from .images import Progress

__all__ = ["check_reference_point", "structure_means", "standardised", "image_columns",
           "match_space", "appearance_similarity", "prototype_at", "prototype_of_mask",
           "match_structure", "extent_level", "matched_mask", "match_image", "match_folder",
           "MIN_MATCH_AREA", "MAX_MATCH_AREA", "MATCH_SIMILAR", "MATCH_POSITION",
           "MATCH_LOOKALIKE", "MATCH_BALANCE_IMAGE", "CONSTANT_AREA_FRACTION"]

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
        row = empty_row(item.name)

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
            elif has_physical_spacing(src):
                row["area_mm2"] = round(px * float(np.prod(src.spacing[:2])), 6)
            row["mask"] = str(out / name)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad input is a row, the others go on
            row.update({"status": "error", "error": one_line(exc)})
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
    write_summary(out / "summary.csv", rows)
    return rows
