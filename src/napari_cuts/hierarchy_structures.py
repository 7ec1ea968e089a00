"""Connected-structure queries of a hierarchy: what one click selects.

The *structure* under a click at a level is the clicked cluster, or with
``connected`` only its part connected to the click (4-connected in 2D, 6-connected in
3D). :meth:`StructureMixin.click_choice` walks the clicked lineage and picks the level
where that structure is most persistent; :meth:`StructureMixin.step_level` walks it
to the next larger or smaller structure.

:class:`StructureMixin` is part of :class:`napari_cuts.hierarchy.Hierarchy`; it reads
the hierarchy's storage (``_finest``, ``_luts``, ``n_clusters``, ``_cluster_sizes``)
and its persistence counts (:class:`napari_cuts.persistence.PersistenceMixin`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import InputError
from .persistence import PERSISTENT_MAX_AREA, PERSISTENT_MIN_AREA

#: A clicked structure lasts while its cluster grows by at most this fraction
#: (see :meth:`StructureMixin.click_level`).
CLICK_TOLERANCE = 0.1
#: The tool's one-click answer (:meth:`StructureMixin.click_mask`) is the part of the
#: clicked cluster connected to the click, as a magic wand's "contiguous" mode: far-away
#: parts of the same cluster (other tissue of the same look) are left out; a positive
#: prompt on another part adds it (:mod:`napari_cuts.prompt_solver`).
CLICK_CONNECTED = True
#: Connected-structure lineages kept per hierarchy (one per clicked base piece): the
#: prompts of the objects being edited.
PIECES_CACHE = 256
#: ... holding at most this many region ids in all (8 bytes each).
PIECES_CACHE_IDS = 20_000_000


class StructureMixin:
    """The clicked lineage, connected structures and the one-click level."""

    def lineage(self, point) -> list[tuple[int, int, int]]:
        """The clicked pixel's clusters from fine to coarse: ``[(level, cluster id,
        pixel count), ...]`` (``point``: one index per axis)."""
        idx = self._index(point)
        b = int(self._finest[idx])
        sizes = self._cluster_sizes()
        return [(lv, int(self._luts[lv][b]), int(sizes[lv][self._luts[lv][b]]))
                for lv in range(self.n_levels)]


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
        cached = self._pieces_cache
        if r0 in cached:
            # a piece asked before (a click, its grow / shrink steps, every prompt of an
            # object re-solved): every level's answer is the same
            return cached[r0][0]
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
        size = sum(a.size for a in {id(e[3]): e[3] for e in out}.values())
        while cached and (len(cached) >= PIECES_CACHE or
                          sum(v[1] for v in cached.values()) + size > PIECES_CACHE_IDS):
            cached.pop(next(iter(cached)))
        cached[r0] = (out, size)
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
                    max_area: float = PERSISTENT_MAX_AREA, connected: bool = False) -> int:
        """The level at which the structure under ``point`` is most persistent
        (:meth:`click_choice`'s level)."""
        return self.click_choice(point, tolerance=tolerance, min_area=min_area,
                                 max_area=max_area, connected=connected)[0]

    def click_choice(self, point, *, tolerance: float = CLICK_TOLERANCE,
                     min_area: float = PERSISTENT_MIN_AREA,
                     max_area: float = PERSISTENT_MAX_AREA, connected: bool = False) -> tuple[int, float]:
        """``(level, persistence)``: the level at which the structure under ``point`` is
        most persistent, and that persistence (``-inf`` where no structure competes).

        Walking the clicked pixel's lineage from fine to coarse, a *structure* lasts
        while its cluster grows by at most ``tolerance`` (a fraction of its size when it
        appeared: specks joining it do not end it); its persistence is
        ``ln(n_birth / n_death)``, the span of the hierarchy in log count it survives,
        counted in structures (clusters of at least ``min_area``,
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
        pcounts = self.persistence_counts(min_area)
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

