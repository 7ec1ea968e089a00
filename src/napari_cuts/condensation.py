"""Diffusion condensation of per-pixel embeddings into a coarse-to-fine hierarchy.

The method (Brugnone et al. 2019; Kuchroo et al. 2023; CUTS, Liu, Amodio et al.):
build a Gaussian affinity ``K_ij = exp(-|x_i - x_j|^2 / eps^2)`` between the points,
row-normalise it into a diffusion operator ``P = D^-1 K``, move every point to
``P X``, merge the points that came closer than a merge threshold, grow ``eps``
and repeat until one point is left. Each iteration's clusters, mapped back to the
pixels, is one segmentation.

What this implementation does to be fast and lean (no dense N x N over pixels):

0. Every embedding vector (D >= 8) is scaled to unit length (``normalize``; cosine geometry,
   as the CUTS code does before condensing: on the retina development images it
   raised the best-level Dice from 0.75 to 0.81).
1. **PCA** of the ``(H*W, D)`` embeddings to ``n_components`` dimensions (default 16;
   128-d conv-net embeddings of an image have few effective dimensions).
   Distances are then measured in units of the median distance between
   4-neighbouring pixels, so the parameters below do not depend on the embedding's
   scale (fundus RGB and MRI grey alike).
2. **Pre-merge of near-identical neighbours** (the first, cheapest condensation steps):
   on the pixel grid, every region links to its most similar 4-adjacent region if
   their mean embeddings are closer than ``premerge_threshold``; linked regions merge
   (a nearest-neighbour forest, so no long chains). Passes repeat until at most
   ``premerge_points`` regions remain (default ``max(2048, H*W/32)``); when a pass
   links nothing, or less than a fifth of the regions, the threshold grows 1.5x, up to
   ``max_premerge_threshold`` (so a volume whose tissue is noisy next to a constant
   background still reaches the target in a few passes). Cost: linear in pixels.
   Merged points carry their pixel counts as weights. For a volume ``(Z, Y, X, D)``
   the grid is 6-connected and each edge's distance is multiplied by its axis' step
   over the finest step (``spacing``). The distance unit is the median over
   finest-step neighbours that differ at all (exactly constant regions do not count).
3. **Sparse condensation** while more than ``dense_max`` points are left: a
   ``knn``-nearest-neighbour graph (scipy cKDTree) per iteration, weighted affinity
   ``K_ij w_j`` on its edges, ``X <- P X``, merge pairs closer than the merge threshold
   (connected components), weighted means for merged points.
4. **Dense condensation** on the last ``dense_max`` points or fewer: the full weighted
   ``M x M`` operator, vectorised.

``eps`` starts at ``eps_factor`` times the (weighted) median distance of the points
to their ``knn``-th neighbour and grows by ``eps_growth`` per iteration; the merge
threshold is ``merge_factor`` times the starting ``eps``. Both come from the data.

**Step control** (``min_keep``, default 0.5): an iteration that would merge the points
into fewer than ``min_keep`` times as many clusters is undone and retried with eps
divided by ``eps_backoff``; eps then grows again from there. In 16 PCA dimensions the
knn-th neighbour is nearly as far as everything else, so without it one diffusion step
could merge a thousand points into a few dozen and the hierarchy would skip every
scale in between (MNI volume encoder hierarchies of 11-14 levels became 28-29; the
retina development images, which never jumped, unchanged; numbers in the README).

Levels: every iteration that merged something is a candidate level; kept are those
with at most ``max_clusters`` clusters, thinned to at most ``max_levels`` levels
spaced evenly in log(cluster count) (so the coarse end, where segmentations of 2-20
clusters live, keeps nearly every count), always keeping the finest and the
coarsest (one cluster). After ``max_iter`` diffusion iterations (a safety bound,
never reached with the defaults) whatever is left is merged into one cluster.

Everything is deterministic for a given ``seed``, which is recorded. The one random
step is the row sample (at most 65,536 rows) behind the PCA axes of a large image or
volume; the hierarchy is sensitive to it: on the MNI volume, with one saved encoder,
seeds 0-3 gave best-level ventricle Dice 0.710-0.785 (README).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .errors import InputError
from .hierarchy import Hierarchy
from .images import Cancel, Progress, check_cancel, check_embeddings, report

__all__ = ["condense", "DEFAULTS"]

#: Default parameters of :func:`condense` (each can be passed as a keyword).
DEFAULTS: dict = {
    # Scale every embedding vector to unit length first (cosine geometry, as the CUTS
    # code does before condensing). "auto": only when D >= 8 (for a few raw channels
    # the length is information).
    "normalize": "auto",
    # PCA dimensions the embeddings are reduced to first (None or 0: keep all).
    "n_components": 16,
    # Pre-merge: link a region to its nearest 4-adjacent region if closer than this
    # (in units of the median 4-neighbour pixel distance) ...
    "premerge_threshold": 3.0,
    # ... relaxed by 1.5x whenever nothing links while too many regions remain, up to this.
    "max_premerge_threshold": 30.0,
    # ... until at most this many regions remain (None: max(2048, H*W // 32)).
    "premerge_points": None,
    # Neighbours per point in the sparse phase (and for the bandwidth estimate).
    "knn": 10,
    # Points at or below which the full (dense) diffusion operator is used.
    "dense_max": 2048,
    # eps0 = eps_factor * weighted median distance to the knn-th neighbour.
    "eps_factor": 1.0,
    # eps is multiplied by this every iteration.
    "eps_growth": 1.05,
    # merge threshold = merge_factor * eps0.
    "merge_factor": 0.1,
    # Levels kept: at most this many, each with at most max_clusters clusters.
    "max_levels": 32,
    "max_clusters": 4096,
    # Safety bound on diffusion iterations (the rest is merged into one cluster).
    "max_iter": 400,
    # Step control: a diffusion iteration that would leave fewer than this fraction of
    # the points is undone and retried with a smaller eps (eps / eps_backoff), so that
    # no single step jumps over the scales in between (with 0, the default until 0.4,
    # one step took the MNI volume's encoder hierarchy from 439 clusters to 39 and a
    # hippocampus crop's from 1220 to 19). 0: off.
    "min_keep": 0.5,
    "eps_backoff": 1.5,
}




def _pca(x: np.ndarray, k: Optional[int], sample: int = 65536, seed: int = 0) -> np.ndarray:
    """Centre ``x`` (N, D) and project onto its top-``k`` principal axes (float32).

    The axes come from the covariance of at most ``sample`` rows (a seeded random
    subset): for tall (H*W, 128) inputs that is as good and several times faster."""
    n = x.shape[0]
    rows = x if n <= sample else x[np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))]
    mean = rows.mean(axis=0, dtype=np.float64).astype(np.float32)
    if not k or k >= x.shape[1]:
        return x - mean
    rc = (rows - mean).astype(np.float64)
    cov = (rc.T @ rc) / max(1, rows.shape[0] - 1)
    vals, vecs = np.linalg.eigh(cov)
    vecs = vecs[:, ::-1][:, :k]
    # deterministic signs: largest-magnitude loading positive
    sign = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(k)])
    sign[sign == 0] = 1
    vecs = (vecs * sign).astype(np.float32)
    return x @ vecs - mean @ vecs


def _grid_edges(shape: tuple[int, ...], spacing=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face-neighbour edges of a 2D (4-connected) or 3D (6-connected) grid.

    Returns ``(u, v, factor)``: flat indices of both ends and, per edge, the factor its
    feature distance is multiplied by: the grid step along the edge's axis divided by
    the finest step (``spacing``), so that a neighbour 3 mm away across thick slices
    has to be 3 times as similar as an in-plane neighbour 1 mm away to be pre-merged."""
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    sp = np.ones(nd) if spacing is None else np.asarray(spacing, dtype=np.float64)
    rel = sp / sp.min()
    idx = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    us, vs, fs = [], [], []
    for ax in range(nd):
        if shape[ax] < 2:
            continue
        lo = [slice(None)] * nd
        hi = [slice(None)] * nd
        lo[ax] = slice(None, -1)
        hi[ax] = slice(1, None)
        a = idx[tuple(lo)].ravel()
        us.append(a)
        vs.append(idx[tuple(hi)].ravel())
        fs.append(np.full(a.size, rel[ax], dtype=np.float32))
    if not us:
        e = np.zeros(0, dtype=np.int64)
        return e, e, np.zeros(0, dtype=np.float32)
    return np.concatenate(us), np.concatenate(vs), np.concatenate(fs)


def _merge(labels: np.ndarray, n: int, y: np.ndarray, w: np.ndarray):
    """Weighted means and weight sums of the points grouped by ``labels`` (0..n-1)."""
    m = y.shape[0]
    c = sparse.csr_matrix((w, (labels, np.arange(m))), shape=(n, m))
    wsum = np.asarray(c.sum(axis=1)).ravel()
    ynew = (c @ y) / wsum[:, None]
    return ynew.astype(np.float32), wsum


def _components(m: int, a: np.ndarray, b: np.ndarray) -> tuple[int, np.ndarray]:
    g = sparse.coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(m, m))
    n, lab = connected_components(g, directed=False)
    return int(n), lab.astype(np.int64)


class _Recorder:
    """Stages of the run: each maps the previous stage's points to the new ones."""

    def __init__(self, n_pixels: int) -> None:
        self.assigns: list[np.ndarray] = []
        self.counts: list[int] = [n_pixels]
        self.iters: list[int] = [0]

    def add(self, assign: np.ndarray, n: int, iteration: int) -> None:
        self.assigns.append(assign)
        self.counts.append(int(n))
        self.iters.append(int(iteration))


def _select_levels(counts: np.ndarray, max_levels: int, max_clusters: int) -> np.ndarray:
    """Stage indices to keep: counts strictly decreasing, <= max_clusters, thinned."""
    stages = np.nonzero(counts <= max_clusters)[0]
    if stages.size == 0:
        stages = np.array([len(counts) - 1])
    # strictly decreasing counts only (keep the last stage of each count)
    keep = [s for i, s in enumerate(stages) if i + 1 == len(stages) or counts[stages[i + 1]] < counts[s]]
    stages = np.array(keep)
    if stages.size <= max_levels:
        return stages
    logc = np.log(counts[stages].astype(np.float64))
    targets = np.linspace(logc[0], logc[-1], max_levels)
    chosen = {int(stages[0]), int(stages[-1])}
    for t in targets:
        chosen.add(int(stages[np.argmin(np.abs(logc - t))]))
    return np.array(sorted(chosen))


def condense(embeddings, *, seed: int = 0, spacing=None, progress: Progress = None,
             cancel: Cancel = None, **params) -> Hierarchy:
    """Diffusion condensation of per-pixel embeddings into a coarse-to-fine hierarchy.

    Parameters
    ----------
    embeddings : (H, W, D) or (Z, Y, X, D) float array
        Per-pixel (per-voxel) embeddings (e.g. ``embed(encoder, image)``, D = 128). A
        4D array is one volume: one hierarchy whose label ids mean one structure
        across all slices, pre-merged over 6-connected voxel neighbourhoods.
    spacing : (sy, sx) or (sz, sy, sx), optional
        Grid step per axis (mm, or any unit); default isotropic. Only the ratios
        matter: a neighbour along an axis with ``r`` times the finest step must be
        ``r`` times as similar to be pre-merged (thick slices are not fine-grid
        neighbours). Recorded in the metadata.
    seed : int
        Seeds the row sample behind the PCA axes (inputs of more than 65,536 points)
        and is recorded in the metadata; everything else is deterministic.
    progress : callable ``progress(done, total, message)``, optional
        Called every iteration (``total`` is an estimate that may grow).
    cancel : callable ``cancel() -> bool``, optional
        Checked every iteration; raises :class:`~napari_cuts.errors.Cancelled`.
    **params
        Any of :data:`DEFAULTS` (see there and the module docstring).

    Returns
    -------
    Hierarchy
        Level 0 the finest (at most ``max_clusters`` clusters), the last level one cluster.
    """
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise InputError(f"unknown condensation parameter(s) {sorted(unknown)}; "
                         f"known: {sorted(DEFAULTS)}.")
    p = {**DEFAULTS, **params}
    emb = check_embeddings(embeddings, allow_volume=True)
    grid = emb.shape[:-1]
    d = emb.shape[-1]
    n = int(np.prod(grid))
    if spacing is not None:
        try:
            spacing = tuple(float(v) for v in spacing)
        except (TypeError, ValueError):
            raise InputError(f"spacing {spacing!r} must be {len(grid)} positive numbers.") from None
        if len(spacing) != len(grid) or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise InputError(f"spacing {spacing!r} must be {len(grid)} positive numbers, one "
                             f"per axis of the {' x '.join(map(str, grid))} grid.")
    knn = int(p["knn"])
    growth = float(p["eps_growth"])
    if growth <= 1.0:
        raise InputError("eps_growth must be > 1 (epsilon has to grow for the run to end).")
    if knn < 1 or int(p["max_levels"]) < 2 or int(p["dense_max"]) < 2:
        raise InputError("knn must be >= 1, max_levels >= 2 and dense_max >= 2.")
    premerge_points = p["premerge_points"]
    if premerge_points is None:
        premerge_points = max(2048, n // 32)
    premerge_points = int(premerge_points)

    check_cancel(cancel)
    report(progress, 0, 1, "reducing dimensions")
    x = emb.reshape(n, d)
    if p["normalize"] == "auto" and d >= 8 or p["normalize"] is True:
        norm = np.sqrt(np.einsum("ij,ij->i", x, x))
        x = x / np.maximum(norm, 1e-12)[:, None]
    y = _pca(x, p["n_components"], seed=seed)
    rec = _Recorder(n)
    it = 0

    # ---------------------------------------------------------- 1. pre-merge
    u, v, efac = _grid_edges(grid, spacing)
    if u.size:
        edist = np.sqrt(((y[u] - y[v]) ** 2).sum(axis=1))
        # the unit: median distance between finest-step neighbours that differ at all
        # (exactly constant regions, such as the air around a head that covers most of
        # a volume, would otherwise shrink the unit towards 0)
        finest_step = efac <= efac.min() * 1.0001
        pos = edist[finest_step & (edist > 0)]
        unit = float(np.median(pos)) if pos.size else 1.0
    else:
        unit = float(np.sqrt(((y - y.mean(0)) ** 2).sum(1).mean())) or 1.0
    y = y / np.float32(unit)
    wts = np.ones(n, dtype=np.float64)
    m = n
    thr = float(p["premerge_threshold"])
    eu, ev, ef = u, v, efac
    while m > premerge_points and eu.size and thr > 0:
        check_cancel(cancel)
        report(progress, it, it + 10, f"pre-merging {m} points")
        dd = np.sqrt(((y[eu] - y[ev]) ** 2).sum(axis=1)) * ef
        a = np.concatenate([eu, ev])
        b = np.concatenate([ev, eu])
        dd2 = np.concatenate([dd, dd])
        order = np.lexsort((b, dd2, a))
        first = np.ones(order.size, dtype=bool)
        first[1:] = a[order][1:] != a[order][:-1]
        sel = order[first]
        sel = sel[dd2[sel] < thr]
        if sel.size == 0:
            # nothing this close any more but still too many regions for the kNN phase:
            # relax the threshold (up to max_premerge_threshold units) rather than run
            # hundreds of slow sparse iterations over a large point set
            if thr * 1.5 > float(p["max_premerge_threshold"]):
                break
            thr *= 1.5
            continue
        ncomp, lab = _components(m, a[sel], b[sel])
        if ncomp > 0.8 * m and thr * 1.5 <= float(p["max_premerge_threshold"]):
            thr *= 1.5      # slow progress: each pass costs a scan of all edges
        y, wts = _merge(lab, ncomp, y, wts)
        it += 1
        rec.add(lab, ncomp, it)
        m = ncomp
        eu, ev = lab[eu], lab[ev]
        keep = eu != ev
        eu, ev, ef = eu[keep], ev[keep], ef[keep]
        if eu.size:
            # one edge per region pair, with the smallest factor any of its voxel
            # pairs had (two regions touching in-plane are in-plane neighbours)
            key = np.minimum(eu, ev) * m + np.maximum(eu, ev)
            order = np.lexsort((ef, key))
            key, ef = key[order], ef[order]
            first = np.r_[True, key[1:] != key[:-1]]
            key, ef = key[first], ef[first]
            eu, ev = key // m, key % m

    # ------------------------------------------------ 2. bandwidth from the data
    if m > 1:
        kq = min(knn, m - 1)
        tree = cKDTree(y)
        dk, _ = tree.query(y, k=kq + 1, workers=-1)
        dk = dk[:, -1]
        order = np.argsort(dk)
        cw = np.cumsum(wts[order])
        scale = float(dk[order][np.searchsorted(cw, cw[-1] / 2)])
        if scale <= 0:
            scale = float(dk[dk > 0].min()) if np.any(dk > 0) else 1.0
    else:
        scale = 1.0
    eps0 = float(p["eps_factor"]) * scale
    merge_thr = float(p["merge_factor"]) * eps0
    eps = eps0
    spread = float(np.sqrt((wts[:, None] * (y - (wts[:, None] * y).sum(0) / wts.sum()) ** 2).sum()
                           / wts.sum())) if m > 1 else 0.0
    est_iters = it + max(1, int(math.ceil(math.log(max(2.0, 4 * spread / eps0)) / math.log(growth)))) + 5

    # --------------------------------------------------- 3./4. condensation
    dense_max = int(p["dense_max"])
    max_iter = int(p["max_iter"])
    min_keep = float(p["min_keep"] or 0.0)
    eps_floor = 1e-3 * eps0
    n_diffusion = 0
    while m > 1:
        check_cancel(cancel)
        report(progress, it, max(est_iters, it + 1), f"condensing: {m} points, eps {eps:.3g}")
        if n_diffusion >= max_iter:
            lab = np.zeros(m, dtype=np.int64)
            y, wts = _merge(lab, 1, y, wts)
            it += 1
            rec.add(lab, 1, it)
            m = 1
            break
        y_prev = y
        inv = -1.0 / (eps * eps)
        if m > dense_max:
            kq = min(knn, m - 1)
            dist, idx = cKDTree(y).query(y, k=kq + 1, workers=-1)
            aff = np.exp(inv * dist.astype(np.float64) ** 2) * wts[idx]
            aff /= aff.sum(axis=1, keepdims=True)
            rows = np.repeat(np.arange(m), kq + 1)
            pmat = sparse.csr_matrix((aff.ravel(), (rows, idx.ravel())), shape=(m, m))
            y = (pmat @ y.astype(np.float64)).astype(np.float32)
            ia = np.repeat(np.arange(m), kq)
            ib = idx[:, 1:].ravel()
            close = ((y[ia] - y[ib]) ** 2).sum(axis=1) < merge_thr * merge_thr
            ia, ib = ia[close], ib[close]
        else:
            y64 = y.astype(np.float64)
            sq = (y64 * y64).sum(axis=1)
            d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (y64 @ y64.T), 0.0)
            aff = np.exp(inv * d2)
            aff *= wts[None, :]
            aff /= aff.sum(axis=1, keepdims=True)
            y64 = aff @ y64
            del aff
            sq = (y64 * y64).sum(axis=1)
            d2 = sq[:, None] + sq[None, :] - 2.0 * (y64 @ y64.T)
            ia, ib = np.nonzero(np.triu(d2 < merge_thr * merge_thr, k=1))
            y = y64.astype(np.float32)
        if ia.size:
            ncomp, lab = _components(m, ia, ib)
            if ncomp < min_keep * m and eps > eps_floor:
                # this step would jump over the scales in between: undo it and retry
                # with a smaller bandwidth
                y = y_prev
                eps /= float(p["eps_backoff"])
                n_diffusion += 1
                continue
        it += 1
        n_diffusion += 1
        eps *= growth
        if ia.size:
            if ncomp < m:
                y, wts = _merge(lab, ncomp, y, wts)
                rec.add(lab, ncomp, it)
                m = ncomp
    report(progress, it, it, "building levels")

    # ------------------------------------------------------------ 5. levels
    counts = np.array(rec.counts)
    stages = _select_levels(counts, int(p["max_levels"]), int(p["max_clusters"]))
    if counts[stages[-1]] != counts[-1]:
        stages = np.append(stages, len(counts) - 1)
    base_stage = int(stages[0])
    pix = np.arange(n, dtype=np.int64)
    for s in range(1, base_stage + 1):
        pix = rec.assigns[s - 1][pix]
    luts = []
    cur = np.arange(counts[base_stage], dtype=np.int64)
    s_at = base_stage
    for s in stages:
        while s_at < s:
            cur = rec.assigns[s_at][cur]
            s_at += 1
        luts.append(cur.copy())
    meta = {
        "method": "diffusion condensation (napari-cuts)",
        "seed": int(seed),
        "params": {k: (None if p[k] is None else p[k]) for k in DEFAULTS},
        "premerge_points_used": premerge_points,
        "premerge_threshold_used": thr,
        "unit_distance": unit,
        "eps0": eps0,
        "merge_threshold": merge_thr,
        "iterations": int(it),
        "stages": int(len(counts) - 1),
        "embedding_shape": [*(int(g) for g in grid), int(d)],
        "spacing": None if spacing is None else list(spacing),
    }
    its = np.array(rec.iters)[stages]
    return Hierarchy(pix.reshape(grid), luts, iterations=its, iterations_total=it + 1,
                     metadata=meta, check=False)
