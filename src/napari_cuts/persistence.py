"""Persistence of a hierarchy's segments and the persistent-structures map.

A *segment* is a set of pixels (voxels) that stays one cluster, unmerged, over
consecutive levels. Its persistence is ``ln(n_birth / n_death)``, the span of the
hierarchy it survives, counted in *structures* (clusters at least
:data:`PERSISTENT_MIN_AREA` of the image large). :meth:`PersistenceMixin.persistent`
paints more persistent segments over less persistent ones.

:class:`PersistenceMixin` is part of :class:`napari_cuts.hierarchy.Hierarchy`; it reads
the hierarchy's storage (``_finest``, ``_luts``, ``n_clusters``, ``iterations``) and
its connected pieces (``_regions``, from
:class:`napari_cuts.hierarchy_structures.StructureMixin`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .labelids import contiguous as _contiguous
from .labelids import label_dtype as _label_dtype

#: Area range (fractions of the image) of the segments that compete as persistent
#: structures (see :meth:`PersistenceMixin.persistent`).
PERSISTENT_MIN_AREA = 0.01
PERSISTENT_MAX_AREA = 0.5
#: The persistent map gives each connected piece of a structure its own id (4-connected
#: in 2D, 6-connected in 3D; tiny pieces join the piece they touch most, see
#: ``PIECE_SPECK``), as the default click takes the connected part
#: (see :meth:`PersistenceMixin.persistent`).
PERSISTENT_CONNECTED = True
#: A piece smaller than this fraction of the speck size (``PERSISTENT_MIN_AREA``: 1 % of
#: an image, 0.1 % of a volume; so pieces under 0.1 % of an image, 0.01 % of a volume)
#: joins the piece it touches most (docs/decisions/0011).
PIECE_SPECK = 0.1


class PersistenceMixin:
    """Lifetimes, persistence and the persistent-structures map of a hierarchy."""

    def persistence_counts(self, min_area: float = PERSISTENT_MIN_AREA) -> np.ndarray:
        """Per level, the count that persistence is measured in, ``(L,)`` float64 >= 1:
        the clusters at least ``min_area`` of the image large (for a volume
        ``min_area ** 1.5``, the same linear size), so a segment ages only when
        structures merge, not when specks elsewhere join their neighbours. Scale-free
        (a ratio of counts), and it does not favour the finest levels, where hundreds of
        specks merge in every step."""
        key = float(min_area)
        if key not in self._pcounts:
            frac = min_area ** 1.5 if len(self.shape) == 3 else min_area
            bound = frac * float(self._finest.size)
            self._pcounts[key] = np.array(
                [max(int(np.count_nonzero(s >= bound)), 1) for s in self._cluster_sizes()],
                dtype=np.float64)
        return self._pcounts[key].copy()

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

    def segment_persistence(self, min_area: float = PERSISTENT_MIN_AREA) -> list[np.ndarray]:
        """Per level, how persistent each cluster's segment is, ``[(n_l,) ...]`` floats.

        A segment (see :meth:`segment_lifetimes`) appears at a level with ``n_birth``
        structures and is merged at the first level where its cluster has grown, which
        has ``n_death`` (1 for a segment never merged), counted by
        :meth:`persistence_counts` (the clusters at least ``min_area`` large, so that
        specks merging elsewhere do not age it). Its
        persistence is ``ln(n_birth / n_death)``: the span of the hierarchy, in log
        count, that it survives unmerged. This is scale-free: it does not depend on the image size,
        on how many iterations the diffusion took between merges (the last merges take
        the most, which would favour the trivial near-root clusters) or on how the
        levels were thinned (they are kept evenly in log cluster count).
        """
        L = self.n_levels
        logn = np.log(self.persistence_counts(min_area))
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


    def persistent(self, *, min_area: float = PERSISTENT_MIN_AREA,
                   max_area: float = PERSISTENT_MAX_AREA,
                   connected: Optional[bool] = None) -> np.ndarray:
        """The persistent-structures map ``(H, W)`` (uint16/uint32, ids 0..n-1).

        Segments (see :meth:`segment_lifetimes`) are ranked by their persistence, the
        span of the hierarchy in log count of structures they survive unmerged
        (:meth:`segment_persistence`); more persistent segments are painted over less
        persistent ones (ties: the coarser segment wins). Only segments covering between
        ``min_area`` and ``max_area`` of the image (for a volume: both fractions to the
        power 3/2, the same linear size) compete as structures: a speck that never
        merges (noise, a few odd pixels) is not a structure, and a segment covering more
        than half the image is the context the structures sit in (the trivial near-root
        clusters). Segments outside that range only fill pixels that no structure
        covers, ranked the same way. The single cluster of a one-cluster coarsest level
        is never used. Every pixel gets a label: the finest level covers the image.
        Computed from the lookup tables only (a few ms at 512 x 512).

        ``connected`` (default :data:`PERSISTENT_CONNECTED`, True): every connected piece
        of a painted structure gets its own id (4-connected in 2D, 6-connected in 3D),
        so that one id is one connected structure, as the default click takes it; a piece
        smaller than :data:`PIECE_SPECK` times ``min_area`` joins the larger piece it
        touches most. Uses the connected pieces of the base partition (:meth:`prepare_connected`;
        about 1 s once for a 1 mm brain). ``False``: one id per structure, its pieces
        wherever they are.
        """
        connected = PERSISTENT_CONNECTED if connected is None else bool(connected)
        default = ((min_area, max_area) == (PERSISTENT_MIN_AREA, PERSISTENT_MAX_AREA)
                   and connected == PERSISTENT_CONNECTED)
        if default and self._persistent is not None:
            return self._persistent.copy()
        pers = self.segment_persistence(min_area)
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

