"""A coarse-to-fine hierarchy of segmentations, as diffusion condensation builds it.

Storage is a *base* partition of the image (``finest``, ``(H, W)`` ids ``0..n0-1``)
plus one lookup table per level (``luts[level]``, ``(n0,)``) that maps base ids to
that level's cluster ids. ``labels(level)`` is therefore one ``np.take`` over the
image (about 1-2 ms at 512 x 512), with no recomputation. Levels are nested by
construction: a cluster of a coarser level is a union of clusters of a finer level.

On disk (``save`` / ``load``) a hierarchy is a ``.npz`` holding the contract arrays
``labels`` ``(L, H, W)`` and ``n_clusters`` ``(L,)``, plus ``finest``, ``luts``
``(L, n0)``, ``iterations`` ``(L,)`` and a JSON ``metadata`` string for a fast load.
``load`` also accepts a file with only ``labels`` and ``n_clusters``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import InputError, ReadError
from .fileutil import atomic_path, jsonable

__all__ = ["Hierarchy"]

#: Format version written into the metadata of saved hierarchies.
FORMAT_VERSION = 1

#: Area range (fractions of the image) of the segments that compete as persistent
#: structures (see :meth:`Hierarchy.persistent`).
PERSISTENT_MIN_AREA = 0.01
PERSISTENT_MAX_AREA = 0.5
#: A clicked structure lasts while its cluster grows by at most this fraction
#: (see :meth:`Hierarchy.click_level`).
CLICK_TOLERANCE = 0.1
#: How persistence is counted (see :meth:`Hierarchy.persistence_counts`):
#: ``"structures"``, the clusters of each level at least ``PERSISTENT_MIN_AREA`` large
#: (specks merging elsewhere do not age a structure), or ``"clusters"``, all of them
#: (the count used before; it makes the fine levels, where specks merge by the hundred,
#: look long-lived).
PERSISTENCE_MEASURES = ("structures", "clusters")
PERSISTENCE_MEASURE = "structures"
#: The tool's one-click answer (:meth:`Hierarchy.click_mask`) is the part of the clicked
#: cluster connected to the click, as a magic wand's "contiguous" mode: far-away parts of
#: the same cluster (other tissue of the same look) are left out; shift-click adds them.
CLICK_CONNECTED = True
#: The persistent map gives each connected piece of a structure its own id (4-connected
#: in 2D, 6-connected in 3D; tiny pieces join the piece they touch most, see
#: ``PIECE_SPECK``), as the default click takes the connected part
#: (see :meth:`Hierarchy.persistent`).
PERSISTENT_CONNECTED = True
#: ... and a piece smaller than this fraction of the speck size (``PERSISTENT_MIN_AREA``,
#: 1 % of an image, 0.1 % of a volume: so pieces under 0.1 % of an image, 0.01 % of a
#: volume) joins the piece it touches most. At the full
#: speck size a lateral ventricle (5.7 mL of the 1 mm MNI brain's field of view) would
#: count as a speck (MNI: label-hint Dice 0.06 against 0.59 at a tenth).
PIECE_SPECK = 0.1
#: Voxels sampled to compare two condensations of the same image
#: (:meth:`Hierarchy.reproducibility_against`): enough for the IoU of a structure of 0.1 %
#: of a volume to within about 0.01, and a few seconds for two 1 mm brains.
REPRO_SAMPLE = 300_000


def _label_dtype(n: int):
    return np.uint16 if n <= np.iinfo(np.uint16).max + 1 else np.uint32


def _contiguous(a: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel integer ids to 0..n-1 in order of first value (np.unique order)."""
    uniq, inv = np.unique(a, return_inverse=True)
    return inv.reshape(a.shape), int(uniq.size)


class Hierarchy:
    """Nested segmentations of one 2D image or one 3D volume, level 0 the finest.

    Everything below that says ``(H, W)`` holds for a volume with ``(Z, Y, X)``: one
    label id is one structure across the whole volume.

    Parameters
    ----------
    finest : (H, W) integer array
        The base partition, ids ``0..n0-1`` (every id used). It may be finer than level 0.
    luts : sequence of L integer arrays of shape (n0,)
        ``luts[l][b]`` is the cluster (``0..n_l-1``, every id used) of base id ``b`` at
        level ``l``. Cluster counts must not increase with ``l`` and levels must be nested.
    iterations : (L,) ints, optional
        The condensation iteration each level was taken at (used to measure how long a
        segment persists); defaults to ``0..L-1``. ``iterations_total`` is the iteration
        count of the whole run (the lifetime bound of the coarsest level).
    metadata : dict, optional
        JSON-serialisable information (version, seed, parameters, timings).

    Attributes
    ----------
    n_levels : int
    n_clusters : (L,) int64 array, non-increasing
    shape : (H, W)
    metadata : dict
    """

    def __init__(self, finest, luts: Sequence[np.ndarray], *, iterations=None,
                 iterations_total: Optional[int] = None, metadata: Optional[dict] = None,
                 check: bool = True, reproducibility: Optional[Sequence[np.ndarray]] = None) -> None:
        finest = np.asarray(finest)
        if finest.ndim not in (2, 3) or finest.dtype.kind not in "ui":
            raise InputError(f"finest must be a 2D (H, W) or 3D (Z, Y, X) integer label map, "
                             f"got {finest.dtype} {finest.shape}.")
        luts = [np.asarray(t) for t in luts]
        if not luts:
            raise InputError("a hierarchy needs at least one level.")
        n0 = int(finest.max()) + 1 if finest.size else 0
        for t in luts:
            if t.ndim != 1 or t.shape[0] < n0 or t.dtype.kind not in "ui":
                raise InputError("each level's lookup table must be a 1D integer array covering "
                                 "every id of the finest map.")
        counts = np.array([int(t[:n0].max()) + 1 if n0 else 0 for t in luts], dtype=np.int64)
        if check:
            if np.any(np.diff(counts) > 0):
                raise InputError(f"cluster counts must not increase with the level: {counts.tolist()}.")
            for lv in range(1, len(luts)):
                # nested: every finer cluster lies within one coarser cluster
                fine, coarse = luts[lv - 1][:n0], luts[lv][:n0]
                parent = np.zeros(counts[lv - 1], dtype=np.int64)
                parent[fine] = coarse
                if not np.array_equal(parent[fine], coarse):
                    raise InputError(f"level {lv} is not a union of clusters of level {lv - 1}.")
        self._finest = np.ascontiguousarray(finest.astype(np.intp, copy=False))
        self._luts = [np.ascontiguousarray(t[:n0].astype(_label_dtype(c), copy=False))
                      for t, c in zip(luts, counts)]
        self.n_clusters = counts
        self.n_levels = len(luts)
        self.shape = tuple(int(v) for v in finest.shape)
        if iterations is None:
            iterations = np.arange(self.n_levels)
        self.iterations = np.asarray(iterations, dtype=np.int64).reshape(-1)
        if self.iterations.size != self.n_levels:
            raise InputError("iterations must have one entry per level.")
        self.iterations_total = int(iterations_total if iterations_total is not None
                                    else self.iterations[-1] + 1)
        self.metadata = dict(metadata or {})
        self._persistent: Optional[np.ndarray] = None
        self._sizes = None
        self._pcounts: dict = {}
        self._region_cache = None
        self._pieces_cache = None
        self.reproducibility = None
        if reproducibility is not None:
            self.set_reproducibility(reproducibility)

    # ------------------------------------------------------------------ access
    def labels(self, level: int) -> np.ndarray:
        """The ``(H, W)`` label map of ``level`` (0 the finest; negative counts from the
        coarsest), ids ``0..n_clusters[level]-1``, uint16 (uint32 beyond 65536 clusters)."""
        lv = int(level)
        if lv < 0:
            lv += self.n_levels
        if not 0 <= lv < self.n_levels:
            raise InputError(f"level {level} is out of range; this hierarchy has levels "
                             f"0..{self.n_levels - 1}.")
        return np.take(self._luts[lv], self._finest)

    def labels_stack(self) -> np.ndarray:
        """All levels as one ``(L, H, W)`` array (uint16, or uint32 if a level needs it)."""
        dt = _label_dtype(int(self.n_clusters.max()))
        out = np.empty((self.n_levels, *self.shape), dtype=dt)
        for lv in range(self.n_levels):
            out[lv] = self.labels(lv)
        return out

    def lut(self, level: int) -> np.ndarray:
        """The lookup table of ``level``: base id -> cluster id, ``(n0,)``."""
        return self._luts[int(level)]

    @property
    def finest(self) -> np.ndarray:
        """The base partition ``(H, W)`` the lookup tables index."""
        return self._finest

    def level_with(self, k: int) -> int:
        """The coarsest level that has at least ``k`` clusters (0 if none has)."""
        idx = np.nonzero(self.n_clusters >= int(k))[0]
        return int(idx[-1]) if idx.size else 0

    def __repr__(self) -> str:
        return (f"Hierarchy(shape={self.shape}, n_levels={self.n_levels}, "
                f"n_clusters={self.n_clusters.tolist()})")

    # ------------------------------------------------------------ one click
    def _cluster_sizes(self) -> list[np.ndarray]:
        """Per level, each cluster's pixel (voxel) count (cached)."""
        if getattr(self, "_sizes", None) is None:
            px = np.bincount(self._finest.ravel(), minlength=self._luts[0].shape[0])
            self._sizes = [np.bincount(t, weights=px, minlength=int(n)).astype(np.int64)
                           for t, n in zip(self._luts, self.n_clusters)]
        return self._sizes

    def persistence_counts(self, measure: Optional[str] = None,
                           min_area: float = PERSISTENT_MIN_AREA) -> np.ndarray:
        """Per level, the count that persistence is measured in, ``(L,)`` float64 >= 1.

        ``"structures"`` (the default, :data:`PERSISTENCE_MEASURE`): the clusters at
        least ``min_area`` of the image large (for a volume ``min_area ** 1.5``, the same
        linear size), so a segment ages only when structures merge, not when specks
        elsewhere join their neighbours. ``"clusters"``: every cluster of the level.
        Both are scale-free (a ratio of counts); the first does not favour the finest
        levels, where hundreds of specks merge in every step."""
        measure = measure or PERSISTENCE_MEASURE
        if measure not in PERSISTENCE_MEASURES:
            raise InputError(f"unknown persistence measure {measure!r}; use one of "
                             f"{', '.join(PERSISTENCE_MEASURES)}.")
        if measure == "clusters":
            return np.maximum(self.n_clusters, 1).astype(np.float64)
        key = (measure, float(min_area))
        if key not in self._pcounts:
            frac = min_area ** 1.5 if len(self.shape) == 3 else min_area
            bound = frac * float(self._finest.size)
            self._pcounts[key] = np.array(
                [max(int(np.count_nonzero(s >= bound)), 1) for s in self._cluster_sizes()],
                dtype=np.float64)
        return self._pcounts[key].copy()

    def lineage(self, point) -> list[tuple[int, int, int]]:
        """The clicked pixel's clusters from fine to coarse: ``[(level, cluster id,
        pixel count), ...]`` (``point``: one index per axis)."""
        idx = self._index(point)
        b = int(self._finest[idx])
        sizes = self._cluster_sizes()
        return [(lv, int(self._luts[lv][b]), int(sizes[lv][self._luts[lv][b]]))
                for lv in range(self.n_levels)]

    # ------------------------------------------------- connected structures
    def prepare_connected(self) -> "Hierarchy":
        """Compute now what connected clicks need (:meth:`_regions`: about 1 s for a 1 mm
        brain, milliseconds at 128 x 128), so that the first connected click, the
        default, costs tens of ms rather than a second; call it off the GUI thread.
        Returns the hierarchy."""
        self._regions()
        return self

    def _regions(self):
        """The connected pieces of the base partition and how they touch (cached).

        ``(regions, region_base, region_px, ea, eb)``: ``regions`` labels each pixel
        (voxel) with its piece (4-connected in 2D, 6-connected in 3D, int32);
        ``region_base`` the base id of each piece, ``region_px`` its pixel count; ``ea``,
        ``eb`` the pairs of pieces that touch (each pair once). About 0.1 s at 512 x 512
        and 1 s for a 1 mm brain, once per hierarchy."""
        if getattr(self, "_region_cache", None) is None:
            from skimage.measure import label as cc_label

            fin = self._finest
            reg = cc_label(fin, background=-1, connectivity=1).astype(np.int32, copy=False)
            reg -= 1                                             # skimage counts from 1
            n_r = int(reg.max()) + 1 if reg.size else 0
            flat_r = reg.ravel()
            region_base = np.zeros(n_r, dtype=np.intp)
            region_base[flat_r] = fin.ravel()
            region_px = np.bincount(flat_r, minlength=n_r).astype(np.int64)
            keys = []
            for ax in range(reg.ndim):
                a = np.moveaxis(reg, ax, 0)
                lo, hi = a[:-1], a[1:]
                d = lo != hi
                x, y = lo[d].astype(np.int64), hi[d].astype(np.int64)
                keys.append(np.minimum(x, y) * n_r + np.maximum(x, y))
            k = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
            self._region_cache = (reg, region_base, region_px,
                                  (k // max(n_r, 1)).astype(np.intp), (k % max(n_r, 1)).astype(np.intp))
        return self._region_cache

    def _structure_pieces(self, point) -> list[tuple[int, int, int, np.ndarray]]:
        """Fine to coarse, ``[(level, cluster id, structure size, pieces), ...]``: the
        *structure* under ``point`` at each level is the connected part of its cluster
        that holds the point; ``pieces`` are its region ids (:meth:`_regions`). Levels
        where the cluster did not change share the previous level's answer."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        idx = self._index(point)
        reg, region_base, region_px, ea, eb = self._regions()
        r0 = int(reg[idx])
        cached = getattr(self, "_pieces_cache", None)
        if cached is not None and cached[0] == r0:
            # the same piece as the last call (a click, then its grow / shrink steps):
            # every level's answer is the same
            return cached[1]
        sizes = self._cluster_sizes()
        out = []
        prev_size = -1
        prev = None
        for lv in range(self.n_levels):
            cid = int(self._luts[lv][region_base[r0]])
            csize = int(sizes[lv][cid])
            if csize == prev_size and prev is not None:
                out.append((lv, cid, prev[0], prev[1]))
                continue
            inc = self._luts[lv][region_base] == cid
            nodes = np.flatnonzero(inc)
            if nodes.size == 1:
                pieces = nodes
            else:
                pos = np.full(inc.shape[0], -1, dtype=np.intp)
                pos[nodes] = np.arange(nodes.size)
                e = inc[ea] & inc[eb]
                g = coo_matrix((np.ones(int(e.sum()), np.int8), (pos[ea[e]], pos[eb[e]])),
                               shape=(nodes.size, nodes.size))
                _, comp = connected_components(g, directed=False)
                pieces = nodes[comp == comp[pos[r0]]]
            ssize = int(region_px[pieces].sum())
            prev_size, prev = csize, (ssize, pieces)
            out.append((lv, cid, ssize, pieces))
        self._pieces_cache = (r0, out)
        return out

    def _index(self, point) -> tuple[int, ...]:
        idx = tuple(int(round(float(v))) for v in point)
        if len(idx) != len(self.shape) or not all(0 <= i < n for i, n in zip(idx, self.shape)):
            raise InputError(f"point {point!r} lies outside the {' x '.join(map(str, self.shape))} "
                             "label map; click inside the image.")
        return idx

    def structure_lineage(self, point) -> list[tuple[int, int, int]]:
        """Like :meth:`lineage`, with the *connected* structure under the click:
        ``[(level, cluster id, structure size), ...]`` fine to coarse, where the
        structure is the part of the cluster that is connected (4-connected in 2D,
        6-connected in 3D) to the clicked pixel."""
        return [(lv, cid, size) for lv, cid, size, _ in self._structure_pieces(point)]

    def structure(self, point, level: int, connected: bool = False) -> np.ndarray:
        """Bool mask of the structure under ``point`` at ``level``: the clicked cluster,
        every part of the image it covers, or with ``connected`` only the part of it
        connected to the click (4-connected in 2D, 6-connected in 3D)."""
        idx = self._index(point)
        lv = int(level) % self.n_levels
        if not connected:
            lut = self._luts[lv]
            return np.take(lut == lut[self._finest[idx]], self._finest)
        reg, region_base, *_ = self._regions()
        pieces = self._structure_pieces(idx)[lv][3]
        keep = np.zeros(region_base.shape[0], dtype=bool)
        keep[pieces] = True
        return np.take(keep, reg)

    def click_level(self, point, *, tolerance: float = CLICK_TOLERANCE,
                    min_area: float = PERSISTENT_MIN_AREA,
                    max_area: float = PERSISTENT_MAX_AREA, connected: bool = False,
                    measure: Optional[str] = None) -> int:
        """The level at which the structure under ``point`` is most persistent
        (:meth:`click_choice`'s level)."""
        return self.click_choice(point, tolerance=tolerance, min_area=min_area,
                                 max_area=max_area, connected=connected, measure=measure)[0]

    def click_choice(self, point, *, tolerance: float = CLICK_TOLERANCE,
                     min_area: float = PERSISTENT_MIN_AREA,
                     max_area: float = PERSISTENT_MAX_AREA, connected: bool = False,
                     measure: Optional[str] = None) -> tuple[int, float]:
        """``(level, persistence)``: the level at which the structure under ``point`` is
        most persistent, and that persistence (``-inf`` where no structure competes).

        Walking the clicked pixel's lineage from fine to coarse, a *structure* lasts
        while its cluster grows by at most ``tolerance`` (a fraction of its size when it
        appeared: specks joining it do not end it); its persistence is
        ``ln(n_birth / n_death)``, the span of the hierarchy in log count it survives,
        counted in structures (clusters of at least ``min_area``; ``measure``, see
        :meth:`persistence_counts`) as in :meth:`segment_persistence`. Structures covering more than
        ``max_area`` of the image (the context: background, whole organ) and the
        one-cluster root do not compete. Returns the finest level of the most persistent
        structure. Structures smaller than ``min_area`` (specks) compete only when the
        lineage has nothing larger below ``max_area``; on a volume both bounds are taken at
        the same linear size (fractions to the power 3/2), as in :meth:`persistent`. The
        same rule for every image and modality: no expected size, no label, computed from
        the hierarchy alone. With ``connected`` the structure at each level is the
        connected part of the cluster that holds the click (:meth:`structure_lineage`,
        tens of ms), as :meth:`click_mask` then returns it."""
        lin = self.structure_lineage(point) if connected else self.lineage(point)
        total = float(self._finest.size)
        counts = self.n_clusters.astype(np.float64)
        pcounts = self.persistence_counts(measure, min_area)
        if len(self.shape) == 3:
            min_area, max_area = min_area ** 1.5, max_area ** 1.5
        ok = [lv for lv, _, size in lin
              if min_area * total <= size <= max_area * total and counts[lv] > 1]
        if not ok:
            ok = [lv for lv, _, size in lin if size <= max_area * total and counts[lv] > 1]
        if not ok:
            return 0, float("-inf")
        best_lv, best_p = ok[0], -np.inf
        i = 0
        while i < len(ok):
            start = ok[i]
            base = lin[start][2]
            j = i
            while j + 1 < len(ok) and ok[j + 1] == ok[j] + 1 and lin[ok[j + 1]][2] <= base * (1 + tolerance):
                j += 1
            end = ok[j]
            # the last merge (two clusters into one) joins complements, not structures:
            # surviving until then counts as dying at two clusters
            n_death = pcounts[end + 1] if end + 1 < self.n_levels else 1.0
            pers = float(np.log(pcounts[start] / max(n_death, 2.0)))
            if pers > best_p + 1e-12:
                best_lv, best_p = start, pers
            i = j + 1
        return int(best_lv), float(best_p)

    def step_level(self, point, level: int, step: int, connected: bool = False) -> int:
        """Walk the structure under ``point`` along its lineage from ``level``.

        ``step = +1``: the next real merge, the first coarser level whose cluster holding
        ``point`` is strictly larger; ``-1``: the largest strictly smaller structure,
        the first finer level whose cluster is strictly smaller. ``|step| > 1`` repeats.
        Returns ``level`` itself where no such level exists (the root, the finest).
        Sizes are those of the whole cluster, or with ``connected`` of the connected
        structure under the click."""
        lv = int(level) % self.n_levels
        lin = self.structure_lineage(point) if connected else self.lineage(point)
        for _ in range(abs(int(step))):
            size = lin[lv][2]
            if step > 0:
                nxt = next((lin[k][0] for k in range(lv + 1, self.n_levels) if lin[k][2] > size), lv)
            else:
                nxt = next((lin[k][0] for k in range(lv - 1, -1, -1) if lin[k][2] < size), lv)
            if nxt == lv:
                break
            lv = nxt
        return int(lv)

    def click_mask(self, point, connected: Optional[bool] = None, **kw) -> np.ndarray:
        """The tool's answer to one click: the structure under ``point`` at
        :meth:`click_level`, as a bool mask. ``connected`` (default
        :data:`CLICK_CONNECTED`, True): only the part of the cluster connected to the click
        (4-connected in 2D, 6-connected in 3D), the level chosen on the sizes of that part;
        False: the whole cluster, every part of the image it covers."""
        connected = CLICK_CONNECTED if connected is None else bool(connected)
        lv = self.click_level(point, connected=connected, **kw)
        return self.structure(point, lv, connected=connected)

    # ------------------------------------------------------------ persistence
    def segment_lifetimes(self) -> list[np.ndarray]:
        """Per level, the lifetime of each cluster's segment, ``[(n_l,) ...]``.

        A segment is a set of pixels that stays one cluster, unmerged, over consecutive
        levels (in a nested hierarchy: a cluster whose coarser parent has no other
        child continues the same segment). Its lifetime is the number of condensation
        iterations from the level it appears at until the level it is merged at (for
        the coarsest level: until the end of the run).
        """
        L = self.n_levels
        ends = np.append(self.iterations[1:], max(self.iterations_total, self.iterations[-1] + 1))
        starts = [None] * L
        parents = []
        for lv in range(L - 1):
            parent = np.zeros(self.n_clusters[lv], dtype=np.int64)
            parent[self._luts[lv]] = self._luts[lv + 1]
            parents.append(parent)
        # start iteration of each cluster's segment, fine to coarse
        starts[0] = np.full(self.n_clusters[0], self.iterations[0], dtype=np.int64)
        for lv in range(1, L):
            p = parents[lv - 1]
            nchild = np.bincount(p, minlength=self.n_clusters[lv])
            st = np.full(self.n_clusters[lv], self.iterations[lv], dtype=np.int64)
            only = nchild[p] == 1
            st[p[only]] = starts[lv - 1][only]
            starts[lv] = st
        # end iteration of each segment, coarse to fine
        stops = [None] * L
        stops[L - 1] = np.full(self.n_clusters[L - 1], ends[L - 1], dtype=np.int64)
        for lv in range(L - 2, -1, -1):
            p = parents[lv]
            nchild = np.bincount(p, minlength=self.n_clusters[lv + 1])
            sp = np.full(self.n_clusters[lv], ends[lv], dtype=np.int64)
            only = nchild[p] == 1
            sp[only] = stops[lv + 1][p[only]]
            stops[lv] = sp
        return [stops[lv] - starts[lv] for lv in range(L)]

    def segment_areas(self) -> list[np.ndarray]:
        """Per level, each cluster's area as a fraction of the image, ``[(n_l,) ...]``."""
        counts = np.bincount(self._finest.ravel(), minlength=self._luts[0].shape[0])
        frac = counts / max(int(counts.sum()), 1)
        return [np.bincount(t, weights=frac, minlength=int(n))
                for t, n in zip(self._luts, self.n_clusters)]

    def segment_persistence(self, measure: Optional[str] = None,
                            min_area: float = PERSISTENT_MIN_AREA) -> list[np.ndarray]:
        """Per level, how persistent each cluster's segment is, ``[(n_l,) ...]`` floats.

        A segment (see :meth:`segment_lifetimes`) appears at a level with ``n_birth``
        structures and is merged at the first level where its cluster has grown, which
        has ``n_death`` (1 for a segment never merged), counted by
        :meth:`persistence_counts` (``measure``; default: the clusters at least
        ``min_area`` large, so that specks merging elsewhere do not age it). Its
        persistence is ``ln(n_birth / n_death)``: the span of the hierarchy, in log
        count, that it survives unmerged. This is scale-free: it does not depend on the image size,
        on how many iterations the diffusion took between merges (the last merges take
        the most, which would favour the trivial near-root clusters) or on how the
        levels were thinned (they are kept evenly in log cluster count).
        """
        L = self.n_levels
        logn = np.log(self.persistence_counts(measure, min_area))
        logn_death = np.append(logn[1:], 0.0)        # merged at level l+1 / never merged
        canon_lv, _ = self._segment_roots()
        parents = [self._parent(lv) for lv in range(L - 1)]
        death = [None] * L
        death[L - 1] = np.full(self.n_clusters[L - 1], logn_death[L - 1])
        for lv in range(L - 2, -1, -1):
            p = parents[lv]
            nchild = np.bincount(p, minlength=self.n_clusters[lv + 1])
            d = np.full(self.n_clusters[lv], logn_death[lv])
            only = nchild[p] == 1
            d[only] = death[lv + 1][p[only]]
            death[lv] = d
        return [logn[canon_lv[lv]] - death[lv] for lv in range(L)]

    # ------------------------------------------------------- reproducibility
    def _structure_bounds(self) -> tuple[float, float, int]:
        """(min, max) area fractions of a structure (3D: to the power 3/2) and the number
        of levels whose segments may be structures (not the one-cluster root, not the
        two-cluster level, whose two clusters are complements)."""
        lo, hi = PERSISTENT_MIN_AREA, PERSISTENT_MAX_AREA
        if len(self.shape) == 3:
            lo, hi = lo ** 1.5, hi ** 1.5
        last = self.n_levels
        while last > 1 and int(self.n_clusters[last - 1]) <= 2:
            last -= 1
        return lo, hi, last

    def reproducibility_against(self, others: Sequence["Hierarchy"], *,
                                n_sample: int = REPRO_SAMPLE, seed: int = 0) -> list[np.ndarray]:
        """How well each structure of this hierarchy is found again by other
        condensations of the same image (other seeds): per level ``(n_l,)`` floats, the
        mean over ``others`` of the best IoU of the cluster with any cluster of any level of
        the other hierarchy; NaN for segments that are not structures (outside the area
        range of :meth:`persistent`, the two-cluster level, the root). Measured on
        ``n_sample`` voxels (pixels) drawn with ``seed``; every hierarchy must cover the
        same grid. A structure that a different seed also finds is a property of the image,
        not of one run of the diffusion."""
        others = list(others)
        for o in others:
            if tuple(o.shape) != tuple(self.shape):
                raise InputError(f"hierarchies of shapes {self.shape} and {o.shape} cannot be "
                                 "compared: they must cover the same grid.")
        size = int(self._finest.size)
        rng = np.random.default_rng(seed)
        idx = rng.choice(size, min(int(n_sample), size), replace=False) if size else np.zeros(0, int)

        def sampled(h):
            b = h._finest.ravel()[idx]
            return [h._luts[lv][b].astype(np.int64) for lv in range(h._structure_bounds()[2])]

        mine = sampled(self)
        theirs = [sampled(o) for o in others]
        lo, hi, last = self._structure_bounds()
        areas = self.segment_areas()
        out = []
        for lv in range(self.n_levels):
            a = areas[lv]
            score = np.full(a.shape, np.nan)
            cand = np.flatnonzero((a >= lo) & (a <= hi)) if lv < last else np.zeros(0, int)
            if cand.size and theirs and idx.size:
                pos = np.full(a.shape[0], -1, dtype=np.int64)
                pos[cand] = np.arange(cand.size)
                pa = pos[mine[lv]]
                sel = pa >= 0
                pa = pa[sel]
                na = np.bincount(pa, minlength=cand.size)
                total = np.zeros(cand.size)
                for other in theirs:
                    best = np.zeros(cand.size)
                    for lb in other:
                        nb = int(lb.max()) + 1
                        pairs, inter = np.unique(pa * nb + lb[sel], return_counts=True)
                        ia, ib = pairs // nb, pairs % nb
                        nb_sizes = np.bincount(lb, minlength=nb)
                        np.maximum.at(best, ia, inter / (na[ia] + nb_sizes[ib] - inter))
                    total += best
                score[cand] = total / len(theirs)
            out.append(score)
        return out

    def set_reproducibility(self, scores: Sequence[np.ndarray]) -> "Hierarchy":
        """Attach per-level reproducibility scores (:meth:`reproducibility_against`); the
        persistent map then ranks structures by them. Returns ``self``."""
        scores = [np.asarray(v, dtype=np.float64).reshape(-1) for v in scores]
        # a hierarchy remapped onto a finer grid keeps its cluster ids; ids past the last
        # one still present (clusters no voxel maps to any more) are dropped
        if len(scores) != self.n_levels or any(v.shape[0] < int(n) for v, n in
                                               zip(scores, self.n_clusters)):
            raise InputError("reproducibility scores need one value per cluster of every level.")
        self.reproducibility = [v[:int(n)] for v, n in zip(scores, self.n_clusters)]
        self._persistent = None
        return self

    def persistent(self, *, min_area: float = PERSISTENT_MIN_AREA,
                   max_area: float = PERSISTENT_MAX_AREA,
                   measure: Optional[str] = None,
                   connected: Optional[bool] = None,
                   rank: Optional[str] = None) -> np.ndarray:
        """The persistent-structures map ``(H, W)`` (uint16/uint32, ids 0..n-1).

        ``rank``: how the structures (segments in the area range) are ranked against each
        other. ``"reproducibility"`` (the default where scores are attached,
        :meth:`set_reproducibility`; volumes get them from a second condensation): the
        structure that other condensations of the image find best wins, persistence only
        ordering the fillers. ``"persistence"`` (the default otherwise), as follows.

        Segments (see :meth:`segment_lifetimes`) are ranked by their persistence, the
        span of the hierarchy in log count of structures they survive unmerged
        (:meth:`segment_persistence`, ``measure``); more persistent segments are painted over less
        persistent ones (ties: the coarser segment wins). Only segments covering between
        (for a volume: both fractions to the power 3/2, the same linear size)
        ``min_area`` and ``max_area`` of the image compete as structures: a speck that
        never merges (noise, a few odd pixels) is not a structure, and a segment covering
        more than half the image is the context the structures sit in (the trivial
        near-root clusters). Segments outside that range only fill pixels that no
        structure covers, ranked the same way. The single cluster of a one-cluster
        coarsest level is never used. Every pixel gets a label: the finest level covers
        the image. Computed from the lookup tables only (a few ms at 512 x 512).

        ``connected`` (default :data:`PERSISTENT_CONNECTED`, True): every connected piece
        of a painted structure gets its own id (4-connected in 2D, 6-connected in 3D),
        so that one id is one connected structure, as the default click takes it; a piece
        smaller than :data:`PIECE_SPECK` times ``min_area`` joins the larger piece it
        touches most. Uses the connected pieces of the base partition (:meth:`prepare_connected`;
        about 1 s once for a 1 mm brain). ``False``: one id per structure, its pieces
        wherever they are.
        """
        connected = PERSISTENT_CONNECTED if connected is None else bool(connected)
        if rank is None:
            rank = "persistence" if self.reproducibility is None else "reproducibility"
        if rank not in ("persistence", "reproducibility"):
            raise InputError(f"unknown rank {rank!r}; use 'persistence' or 'reproducibility'.")
        if rank == "reproducibility" and self.reproducibility is None:
            raise InputError("this hierarchy has no reproducibility scores: segment the volume "
                             "again (a second condensation makes them) or rank by persistence.")
        default = ((min_area, max_area) == (PERSISTENT_MIN_AREA, PERSISTENT_MAX_AREA)
                   and measure in (None, PERSISTENCE_MEASURE) and connected == PERSISTENT_CONNECTED
                   and rank == ("persistence" if self.reproducibility is None else "reproducibility"))
        if default and self._persistent is not None:
            return self._persistent.copy()
        pers = self.segment_persistence(measure, min_area)
        if len(self.shape) == 3:
            # the same linear size in 3D: a structure a tenth of the side covers 1 % of an
            # image but 0.1 % of a volume (fractions to the power 3/2)
            min_area, max_area = min_area ** 1.5, max_area ** 1.5
        areas = self.segment_areas()
        L = self.n_levels
        last = L - 1 if self.n_clusters[-1] <= 1 and L > 1 else L
        # structures outrank every filler: shift their scores above the largest persistence
        bonus = 1.0 + max(float(np.max(p)) if p.size else 0.0 for p in pers)
        n0 = self._luts[0].shape[0]
        best = np.full(n0, -np.inf)
        best_id = np.zeros(n0, dtype=np.int64)
        best_lv = np.zeros(n0, dtype=np.int64)
        for lv in range(last):
            a = areas[lv]
            inside = (a >= min_area) & (a <= max_area)
            if rank == "reproducibility":
                # structures by how well other condensations find them again (those without
                # a score, e.g. of the two-cluster level, below every scored one), still
                # above every filler; fillers by persistence
                rep = self.reproducibility[lv]
                srep = np.where(np.isfinite(rep), rep, -0.5 + 0.25 * np.tanh(pers[lv]))
                score = np.where(inside, bonus + srep, pers[lv])
            else:
                score = pers[lv] + bonus * inside
            ids = self._luts[lv].astype(np.int64)
            sc = score[ids]
            win = sc >= best - 1e-9   # later (coarser) levels win ties (up to rounding)
            best[win] = sc[win]
            best_id[win] = ids[win]
            best_lv[win] = lv
        # the same segment seen at several levels must get one id: key it by
        # (start level, cluster at the start level)
        canon_lv, canon_id = self._segment_roots()
        keys = np.empty(n0, dtype=np.int64)
        for lv in range(last):
            sel = best_lv == lv
            if np.any(sel):
                keys[sel] = canon_lv[lv][best_id[sel]] * (n0 + 1) + canon_id[lv][best_id[sel]]
        keys = self._absorb_specks(keys, min_area)
        if connected:
            piece, n = self._connected_pieces(keys, min_area * PIECE_SPECK)
            out = np.take(piece.astype(_label_dtype(n)), self._regions()[0])
        else:
            base, n = _contiguous(keys)
            out = np.take(base.astype(_label_dtype(n)), self._finest)
        if default:
            self._persistent = out
            return out.copy()
        return out

    def _connected_pieces(self, keys: np.ndarray, min_area: float) -> tuple[np.ndarray, int]:
        """Split the labels ``keys`` (one per base id) into connected pieces.

        Returns ``(piece, n)``: for each connected piece of the base partition
        (:meth:`_regions`) the id ``0..n-1`` of the piece of its label it lies in. Pieces
        under ``min_area`` of the image (already a volume fraction here) join the piece
        of at least that size they share the most piece contacts with (none: they stay)."""
        from scipy import sparse
        from scipy.sparse.csgraph import connected_components

        _reg, region_base, region_px, ea, eb = self._regions()
        n_r = region_base.shape[0]
        lab = keys[region_base]
        same = lab[ea] == lab[eb]
        g = sparse.coo_matrix((np.ones(int(same.sum()), dtype=np.int8), (ea[same], eb[same])),
                              shape=(n_r, n_r))
        n_p, comp = connected_components(g, directed=False)
        size = np.bincount(comp, weights=region_px, minlength=n_p)
        small = size < min_area * float(self._finest.size)
        if small.any() and (~small).any():
            diff = ~same
            pa, pb = comp[ea[diff]], comp[eb[diff]]
            a = np.concatenate([pa, pb])
            b = np.concatenate([pb, pa])
            keep = small[a] & ~small[b]
            if keep.any():
                pair, cnt = np.unique(a[keep].astype(np.int64) * n_p + b[keep], return_counts=True)
                src, dst = pair // n_p, pair % n_p
                order = np.lexsort((dst, -cnt, src))          # per small piece: most contacts
                first = order[np.r_[True, np.diff(src[order]) != 0]]
                target = np.arange(n_p)
                target[src[first]] = dst[first]
                comp = target[comp]
        piece, n = _contiguous(comp)
        return piece, n

    def _absorb_specks(self, keys: np.ndarray, min_area: float) -> np.ndarray:
        """Give the base ids of painted labels smaller than ``min_area`` of the image the
        label that covers most of the first coarser cluster holding a label that large
        (a speck joins the structure it merges into). ``keys``: label per base id."""
        if min_area <= 0:
            return keys
        px = np.bincount(self._finest.ravel(), minlength=keys.shape[0]).astype(np.float64)
        total = px.sum()
        uniq, inv = np.unique(keys, return_inverse=True)
        big = np.bincount(inv, weights=px, minlength=uniq.size) >= min_area * total
        small = ~big[inv]
        if not small.any() or not big.any():
            return keys
        keys = keys.copy()
        for lv in range(1, self.n_levels):
            cl = self._luts[lv].astype(np.int64)
            ok = ~small
            # per cluster, the large label covering most of it (ties: lowest label index)
            pair = cl[ok] * uniq.size + inv[ok]
            pu, pinv = np.unique(pair, return_inverse=True)
            w = np.bincount(pinv, weights=px[ok])
            order = np.lexsort((-w, pu // uniq.size))       # by cluster, heaviest first
            first = order[np.r_[True, np.diff(pu[order] // uniq.size) != 0]]
            best = np.full(int(self.n_clusters[lv]), -1, dtype=np.int64)
            best[pu[first] // uniq.size] = pu[first] % uniq.size
            fix = small & (best[cl] >= 0)
            inv = inv.copy()
            inv[fix] = best[cl[fix]]
            keys[fix] = uniq[inv[fix]]
            small &= ~fix
            if not small.any():
                break
        return keys

    def _parent(self, lv: int) -> np.ndarray:
        """Cluster of level ``lv + 1`` containing each cluster of level ``lv``."""
        parent = np.zeros(self.n_clusters[lv], dtype=np.int64)
        parent[self._luts[lv]] = self._luts[lv + 1]
        return parent

    def _segment_roots(self):
        """For every (level, cluster), the (level, cluster) where its segment starts."""
        L = self.n_levels
        canon_lv = [np.zeros(self.n_clusters[0], dtype=np.int64)]
        canon_id = [np.arange(self.n_clusters[0], dtype=np.int64)]
        for lv in range(1, L):
            parent = np.zeros(self.n_clusters[lv - 1], dtype=np.int64)
            parent[self._luts[lv - 1]] = self._luts[lv]
            nchild = np.bincount(parent, minlength=self.n_clusters[lv])
            cl = np.full(self.n_clusters[lv], lv, dtype=np.int64)
            ci = np.arange(self.n_clusters[lv], dtype=np.int64)
            only = nchild[parent] == 1
            cl[parent[only]] = canon_lv[lv - 1][only]
            ci[parent[only]] = canon_id[lv - 1][only]
            canon_lv.append(cl)
            canon_id.append(ci)
        return canon_lv, canon_id

    # ----------------------------------------------------------- resolution
    def upsampled(self, shape, pool) -> "Hierarchy":
        """This hierarchy, computed on a grid of block means, mapped (nearest) to the
        full-resolution ``shape`` ((H, W) or (Z, Y, X)). ``pool`` is one block side for
        every axis or one per axis: block ``(i, j)`` covers pixels
        ``[i*pool:(i+1)*pool, j*pool:(j+1)*pool]`` (edge blocks may be partial).
        ``labels(level)`` of the result has ``shape`` and is as fast as before."""
        full_shape = tuple(int(v) for v in shape)
        nd = len(self.shape)
        pools = (int(pool),) * nd if np.ndim(pool) == 0 else tuple(int(v) for v in pool)
        if (len(full_shape) != nd or len(pools) != nd or min(pools) < 1
                or any(-(-n // p) != g for n, p, g in zip(full_shape, pools, self.shape))):
            raise InputError(f"a {' x '.join(map(str, self.shape))} grid of "
                             f"{' x '.join(map(str, pools))} blocks does not cover an image of "
                             f"{' x '.join(map(str, full_shape))} pixels.")
        idx = np.ix_(*[np.arange(n) // p for n, p in zip(full_shape, pools)])
        full = self._finest[idx]
        meta = dict(self.metadata)
        meta.update({"grid_shape": list(self.shape),
                     "pool": pools[0] if len(set(pools)) == 1 else list(pools)})
        return Hierarchy(full, self._luts, iterations=self.iterations,
                         iterations_total=self.iterations_total, metadata=meta, check=False,
                         reproducibility=self.reproducibility)

    # ----------------------------------------------------------- construction
    @classmethod
    def from_labels(cls, labels, *, iterations=None, metadata: Optional[dict] = None) -> "Hierarchy":
        """Build a hierarchy from a stack of label maps ``(L, H, W)`` (level 0 the finest).

        Ids need not be contiguous. If the levels are not nested, the base partition
        is their common refinement, so ``labels(l)`` still reproduces each map exactly
        (but persistence assumes nesting)."""
        stack = np.asarray(labels)
        if stack.ndim == 2:
            stack = stack[None]
        if stack.ndim not in (3, 4) or stack.dtype.kind not in "uib" or stack.shape[0] < 1:
            raise InputError(f"labels must be an integer stack (L, H, W) or (L, Z, Y, X); got "
                             f"{stack.dtype} {stack.shape}.")
        L, spatial = stack.shape[0], stack.shape[1:]
        flat = stack.reshape(L, -1)
        base, n0 = _contiguous(flat[0])
        luts = []
        nested = True
        for lv in range(L):
            lab, _ = _contiguous(flat[lv])
            lut = np.zeros(n0, dtype=np.int64)
            lut[base] = lab
            if not np.array_equal(lut[base], lab):
                nested = False
                break
            luts.append(lut)
        if not nested:
            key = np.zeros(flat.shape[1], dtype=np.int64)
            for lv in range(L):
                lab, n = _contiguous(flat[lv])
                key, _ = _contiguous(key * n + lab)
            base, n0 = _contiguous(key)
            luts = []
            for lv in range(L):
                lab, _ = _contiguous(flat[lv])
                lut = np.zeros(n0, dtype=np.int64)
                lut[base] = lab
                luts.append(lut)
        counts = [int(t.max()) + 1 for t in luts]
        return cls(base.reshape(spatial), luts, iterations=iterations, metadata=metadata,
                   check=nested and all(a >= b for a, b in zip(counts, counts[1:])))

    # ------------------------------------------------------------------- files
    def save(self, path) -> None:
        """Write the hierarchy as a ``.npz`` (atomically: temporary file, then rename).

        Arrays: ``labels`` (L, H, W), ``n_clusters`` (L,), ``finest`` (H, W), ``luts``
        (L, n0), ``iterations`` (L,), ``iterations_total`` (), ``metadata`` (JSON str), and
        where attached ``reproducibility`` (one float per cluster of every level, level by level).
        Raises :class:`~napari_cuts.errors.WriteError` when the file cannot be written.
        """
        path = Path(path)
        meta = dict(self.metadata)
        meta.setdefault("format_version", FORMAT_VERSION)
        n0 = self._luts[0].shape[0]
        lut_dt = _label_dtype(int(self.n_clusters.max()))
        luts = np.zeros((self.n_levels, n0), dtype=lut_dt)
        for lv, t in enumerate(self._luts):
            luts[lv] = t
        fin_dt = _label_dtype(n0)
        extra = {}
        if self.reproducibility is not None:
            # one value per cluster of every level, levels one after another
            extra["reproducibility"] = np.concatenate(self.reproducibility).astype(np.float32)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(
                    fh,
                    labels=self.labels_stack(),
                    n_clusters=self.n_clusters.astype(np.int64),
                    finest=self._finest.astype(fin_dt),
                    luts=luts,
                    iterations=self.iterations,
                    iterations_total=np.int64(self.iterations_total),
                    metadata=np.array(json.dumps(meta, default=jsonable)),
                    **extra,
                )

    @classmethod
    def load(cls, path) -> "Hierarchy":
        """Read a hierarchy written by :meth:`save`, or any ``.npz`` with ``labels``
        (L, H, W) and ``n_clusters`` (L,). Raises :class:`~napari_cuts.errors.ReadError`
        naming the file when it is missing, corrupt or not a hierarchy."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                files = set(z.files)
                if "n_clusters" not in files or ("labels" not in files and "finest" not in files):
                    raise ReadError(f"{path} is not a hierarchy file: it lacks 'labels' or "
                                    "'n_clusters'. Give a hierarchy.npz written by napari-cuts.")
                meta = {}
                if "metadata" in files:
                    try:
                        meta = json.loads(str(z["metadata"][()]))
                    except (ValueError, TypeError):
                        meta = {}
                counts = np.asarray(z["n_clusters"]).reshape(-1)
                its = np.asarray(z["iterations"]) if "iterations" in files else None
                total = int(z["iterations_total"]) if "iterations_total" in files else None
                if "finest" in files and "luts" in files:
                    finest = np.asarray(z["finest"])
                    luts = np.asarray(z["luts"])
                    hier = cls(finest, list(luts), iterations=its, iterations_total=total,
                               metadata=meta)
                else:
                    hier = cls.from_labels(np.asarray(z["labels"]), iterations=its, metadata=meta)
                    if total is not None:
                        hier.iterations_total = total
                if "reproducibility" in files:
                    flat = np.asarray(z["reproducibility"], dtype=np.float64).reshape(-1)
                    if flat.shape[0] != int(hier.n_clusters.sum()):
                        raise ReadError(f"{path} is corrupt: its reproducibility scores do not "
                                        "match its levels. Segment the image again.")
                    hier.set_reproducibility(np.split(flat, np.cumsum(hier.n_clusters)[:-1]))
        except ReadError:
            raise
        except FileNotFoundError:
            raise ReadError(f"{path} does not exist; give the path of a hierarchy.npz.") from None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, InputError) as exc:
            raise ReadError(f"{path} cannot be read as a hierarchy ({exc}); the file may be "
                            "truncated or corrupt: segment the image again.") from None
        if counts.shape[0] != hier.n_levels or not np.array_equal(counts, hier.n_clusters):
            raise ReadError(f"{path} is inconsistent: n_clusters {counts.tolist()} does not match "
                            f"its label maps {hier.n_clusters.tolist()}; segment the image again.")
        return hier


