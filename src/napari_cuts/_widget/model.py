"""The state model of the CUTS dock widget: what the result layers show, in numpy only.

Nothing here imports Qt or napari, so the rules below are tested without a viewer.

:class:`LevelsDisplay` turns a hierarchy level (or the persistent map) into the values
of the "CUTS levels" Labels layer, through one lookup table over the hierarchy's base
partition (``np.take(lut, finest, out=layer.data)``: one pass over the voxels, about
30 ms for the 8.7 M voxels of a 1 mm brain, no per-level recomputation):

- **values**: cluster id + 1; 0 is napari's transparent background.
- **background** (volumes): the cluster that covers at least half of the voxels on the
  volume's outer faces (the air around a head) is shown as 0, so it is transparent in
  both views, and the body is what the 3D view renders. At fine levels the air is often
  split into several clusters: then the background is also every cluster of that level
  lying inside the next coarser level's background (levels are nested, so this is
  exact) that lies on the outer faces at least a quarter as densely as the whole volume
  (air does; a head that reaches one face at the neck does not). The coarsest level
  (one cluster) hides nothing.
- **cut-away** (3D view): the Labels layer of the levels is rendered as iso surfaces
  (one opaque colour per cluster), so the body alone would be a closed, opaque surface.
  In the 3D view the half of the volume on the camera's side of one axial slice is
  removed (set to 0): the slice through the selected structure (its middle slice) when
  there is a mask, else the slice the 2D view was showing. The user then looks at the
  cut face, where the levels are read as in the 2D view, and the mask (its own layer,
  not cut, one colour) stands out of that face as a 3D structure. The side follows the
  camera: turning the volume over moves the cut to the other half.

:func:`first_hit` finds the voxel a 3D click lands on: the first voxel along the view
ray (from napari's ``get_ray_intersections``) that shows something (a level cluster
that is not background or cut away, or the mask).

:class:`MaskModel` keeps the mask and the clicks that made it (replace / add /
remove through :func:`napari_cuts.selection.update_mask`) and measures it.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

#: A cluster is the background when it has at least this share of the outer-face voxels.
BACKGROUND_BORDER_SHARE = 0.5


def border_values(labels: np.ndarray) -> np.ndarray:
    """The values of ``labels`` (2D or 3D) on its outer faces (edges in 2D), 1D."""
    arr = np.asarray(labels)
    parts = []
    for ax in range(arr.ndim):
        parts.append(np.take(arr, 0, axis=ax).ravel())
        if arr.shape[ax] > 1:
            parts.append(np.take(arr, arr.shape[ax] - 1, axis=ax).ravel())
    return np.concatenate(parts)


def display_dtype(n_values: int):
    """The smallest unsigned dtype napari gets for ``n_values`` display values (0..n-1)."""
    return np.uint8 if n_values <= 255 else np.uint16 if n_values <= 65535 else np.uint32


class LevelsDisplay:
    """Display values of the levels layer for one base map and its level lookup tables.

    ``base``: ``(H, W)`` or ``(Z, Y, X)`` ids ``0..n0-1``; ``luts[l]``: ``(n0,)`` cluster of
    each base id at level ``l`` (level 0 finest, nested). Build one with
    :meth:`from_hierarchy` or :meth:`from_map` (a single label map, e.g. persistent).
    """

    def __init__(self, base: np.ndarray, luts: Sequence[np.ndarray], *,
                 hide_background: bool = True) -> None:
        self.base = np.asarray(base)
        self.luts = [np.asarray(t).astype(np.int64, copy=False) for t in luts]
        self.shape = tuple(self.base.shape)
        n0 = int(self.luts[0].shape[0])
        self.n_clusters = np.array([int(t.max()) + 1 if t.size else 0 for t in self.luts])
        self.dtype = display_dtype(int(self.n_clusters.max()) + 1)
        self.hide_background = bool(hide_background)
        self._border = np.bincount(border_values(self.base).astype(np.int64),
                                   minlength=n0).astype(np.float64)
        self._own: dict = {}
        self._bg: dict = {}
        self._size = None

    def _parent(self, level: int) -> np.ndarray:
        """Cluster of ``level + 1`` holding each cluster of ``level``."""
        parent = np.zeros(int(self.n_clusters[level]), np.int64)
        parent[self.luts[level]] = self.luts[level + 1]
        return parent

    @classmethod
    def from_hierarchy(cls, hierarchy, **kw) -> "LevelsDisplay":
        return cls(hierarchy.finest, [hierarchy.lut(lv) for lv in range(hierarchy.n_levels)], **kw)

    @classmethod
    def from_map(cls, labels: np.ndarray, **kw) -> "LevelsDisplay":
        lab = np.asarray(labels)
        if lab.dtype.kind in "ui" and lab.size and 0 <= int(lab.min()) and int(lab.max()) < 2**24:
            used = np.bincount(lab.ravel()) > 0          # ids in use, without a sort
            remap = (np.cumsum(used) - 1).astype(np.int64)
            return cls(remap[lab], [np.arange(int(used.sum()))], **kw)
        uniq, inv = np.unique(lab, return_inverse=True)
        return cls(inv.reshape(lab.shape), [np.arange(uniq.size)], **kw)

    @property
    def n_levels(self) -> int:
        return len(self.luts)

    # ------------------------------------------------------------ background
    def _dominant(self, level: int) -> Optional[int]:
        """The cluster with >= half of the outer-face voxels at ``level`` (or None)."""
        if level not in self._own:
            lut = self.luts[level]
            n = int(self.n_clusters[level])
            own = None
            if n >= 2:
                counts = np.bincount(lut, weights=self._border, minlength=n)
                c = int(np.argmax(counts))
                if counts[c] >= BACKGROUND_BORDER_SHARE * counts.sum():
                    own = c
            self._own[level] = own
        return self._own[level]

    def background(self, level: int) -> np.ndarray:
        """Bool ``(n_clusters[level],)``: which clusters of ``level`` are background."""
        level = int(level)
        if level in self._bg:
            return self._bg[level]
        n = int(self.n_clusters[level])
        bg = np.zeros(n, bool)
        own = self._dominant(level)
        if own is not None:
            bg[own] = True
        if n >= 2 and level + 1 < self.n_levels:
            # where the air is split, a cluster inside the coarser level's background is
            # background too if it lies on the outer faces at least a quarter as densely as the
            # volume does (air does; a head that reaches a face at the neck does not)
            up = self.background(level + 1)
            if up.any() and not up.all():
                inside = up[self._parent(level)]
                if self._size is None:
                    self._size = np.bincount(self.base.ravel(), minlength=self.luts[0].shape[0])
                size = np.bincount(self.luts[level], weights=self._size, minlength=n)
                face = np.bincount(self.luts[level], weights=self._border, minlength=n)
                avg = self._border.sum() / max(float(self._size.sum()), 1.0)
                bg |= inside & (face >= 0.25 * avg * np.maximum(size, 1))
        if bg.all():
            bg[:] = False
        self._bg[level] = bg
        return bg

    # ---------------------------------------------------------------- values
    def lut(self, level: int, *, hide_background: Optional[bool] = None) -> np.ndarray:
        """``(n0,)`` display value of every base id at ``level``: cluster + 1, 0 for the background."""
        level = int(level)
        hide = self.hide_background if hide_background is None else hide_background
        cluster_values = np.arange(1, int(self.n_clusters[level]) + 1, dtype=self.dtype)
        if hide:
            cluster_values[self.background(level)] = 0
        return cluster_values[self.luts[level]]

    def fill(self, out: np.ndarray, level: int, *, cut: Optional[tuple[int, int]] = None,
             hide_background: Optional[bool] = None) -> np.ndarray:
        """Write the display values of ``level`` into ``out`` (in place, the layer's data).

        ``cut=(z, side)`` removes (sets to 0) the slices beyond axial slice ``z`` on
        ``side`` (+1: ``z+1..``, -1: ``..z-1``): the 3D cut-away."""
        np.take(self.lut(level, hide_background=hide_background), self.base, out=out)
        if cut is not None and out.ndim == 3:
            z, side = int(cut[0]), int(cut[1])
            z = int(np.clip(z, 0, out.shape[0] - 1))
            if side > 0:
                out[z + 1:] = 0
            else:
                out[:z] = 0
        return out

    def values(self, level: int, **kw) -> np.ndarray:
        """A new array of the display values of ``level`` (see :meth:`fill`)."""
        return self.fill(np.empty(self.shape, self.dtype), level, **kw)


def cut_side(view_direction) -> int:
    """Which half of a volume faces the camera along z: +1 (high z) or -1 (low z).

    ``view_direction`` points from the camera into the scene (napari's
    ``camera.view_direction``, world z, y, x of the displayed axes)."""
    vz = float(np.asarray(view_direction, float)[0])
    return -1 if vz > 0 else 1


def first_hit(occupied: Callable[[np.ndarray], np.ndarray], start, end, shape,
              step: float = 0.5) -> Optional[tuple[int, int, int]]:
    """The first voxel along the segment ``start`` -> ``end`` (data coordinates, (z, y, x))
    for which ``occupied(idx)`` is True; ``idx`` is an ``(n, 3)`` int array of voxels in
    ray order. None when the ray shows nothing."""
    if start is None or end is None:
        return None
    a, b = np.asarray(start, float)[-3:], np.asarray(end, float)[-3:]
    n = max(2, int(np.ceil(np.linalg.norm(b - a) / step)) + 1)
    pts = a[None] + np.linspace(0.0, 1.0, n)[:, None] * (b - a)[None]
    idx = np.round(pts).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(shape[-3:])[None]), axis=1)
    idx = idx[inside]
    if not len(idx):
        return None
    hit = np.nonzero(np.asarray(occupied(idx), bool))[0]
    if not len(hit):
        return None
    return tuple(int(v) for v in idx[hit[0]])


class MaskModel:
    """The mask (bool, the result layers' shape) and the clicks that made it.

    ``labels_for(z)`` gives the cluster map a click at slice ``z`` reads: the whole
    ``(Z, Y, X)`` (or ``(H, W)``) map for one hierarchy (``z`` ignored), a slice's
    ``(H, W)`` map for a stack of images segmented one by one (``per_slice=True``).
    """

    def __init__(self, shape: tuple, per_slice: bool = False) -> None:
        self.shape = tuple(shape)
        self.per_slice = bool(per_slice)
        self.mask: Optional[np.ndarray] = None
        self.clicks: list = []          # (mode, point) with point the full index

    def click(self, labels_for: Callable, point: tuple, mode: str) -> None:
        """Apply one click at ``point`` (one int index per axis of ``shape``)."""
        if mode == "replace" or self.mask is None:
            self.clicks = []
            self.mask = np.zeros(self.shape, bool)
        self.clicks.append((mode, tuple(int(v) for v in point)))
        self._apply(labels_for, mode, tuple(point))

    def _apply(self, labels_for: Callable, mode: str, point: tuple) -> None:
        from ..selection import update_mask

        if self.per_slice:
            z = point[0]
            self.mask[z] = update_mask(self.mask[z], labels_for(z), point[1:], mode=mode)
        else:
            labels = labels_for(point[0] if len(point) == 3 else 0)
            if mode == "replace":
                self.mask = labels == labels[point]
            else:
                self.mask = np.asarray(update_mask(self.mask, labels, point, mode=mode), bool)

    def replay(self, labels_for: Callable, valid: Callable = lambda p: True) -> None:
        """Rebuild the mask from the stored clicks (after the level changed)."""
        clicks, self.clicks = self.clicks, []
        self.mask = np.zeros(self.shape, bool)
        for mode, point in clicks:
            if valid(point):
                self.clicks.append((mode, point))
                self._apply(labels_for, mode, point)

    def centre_slice(self) -> Optional[int]:
        """The middle axial slice of the mask (for the 3D cut-away), None if empty/2D."""
        if self.mask is None or self.mask.ndim != 3:
            return None
        zs = np.nonzero(self.mask.any(axis=(1, 2)))[0]
        return int((zs[0] + zs[-1]) // 2) if len(zs) else None

    def stats(self, scale, volume: bool) -> dict:
        """``pixels`` and ``mm2`` (2D) or ``ml`` (3D) from ``scale`` (mm per voxel)."""
        n = int(np.count_nonzero(self.mask)) if self.mask is not None else 0
        sc = np.asarray(scale, float)
        if volume:
            return {"pixels": n, "ml": n * float(np.prod(sc[-3:])) / 1000.0}
        return {"pixels": n, "mm2": n * float(np.prod(sc[-2:]))}
