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

This module holds the storage (construction, labels, resolution, files). What one
click selects lives in :mod:`napari_cuts.hierarchy_structures`, persistence and the
persistent map in :mod:`napari_cuts.persistence`; :class:`Hierarchy` has all of it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import InputError, ReadError
from .fileutil import atomic_path, jsonable
from .hierarchy_structures import CLICK_CONNECTED, CLICK_TOLERANCE, StructureMixin
from .labelids import contiguous as _contiguous
from .labelids import label_dtype as _label_dtype
from .persistence import (PERSISTENT_CONNECTED, PERSISTENT_MAX_AREA, PERSISTENT_MIN_AREA,
                          PIECE_SPECK, PersistenceMixin)

__all__ = ["Hierarchy", "CLICK_CONNECTED", "CLICK_TOLERANCE", "PERSISTENT_CONNECTED",
           "PERSISTENT_MAX_AREA", "PERSISTENT_MIN_AREA", "PIECE_SPECK", "FORMAT_VERSION"]

#: Format version written into the metadata of saved hierarchies.
FORMAT_VERSION = 1


class Hierarchy(StructureMixin, PersistenceMixin):
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
                 check: bool = True) -> None:
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
        self._pieces_cache = {}

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


    # ------------------------------------------------------------------ sizes
    def _cluster_sizes(self) -> list[np.ndarray]:
        """Per level, each cluster's pixel (voxel) count (cached)."""
        if getattr(self, "_sizes", None) is None:
            px = np.bincount(self._finest.ravel(), minlength=self._luts[0].shape[0])
            self._sizes = [np.bincount(t, weights=px, minlength=int(n)).astype(np.int64)
                           for t, n in zip(self._luts, self.n_clusters)]
        return self._sizes

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
                         iterations_total=self.iterations_total, metadata=meta, check=False)

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
        (L, n0), ``iterations`` (L,), ``iterations_total`` (), ``metadata`` (JSON str).
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
                )

    @classmethod
    def load(cls, path) -> "Hierarchy":
        """Read a hierarchy written by :meth:`save`, or any ``.npz`` with ``labels``
        (L, H, W) and ``n_clusters`` (L,); other arrays in the file are ignored. Raises :class:`~napari_cuts.errors.ReadError`
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
                # files may hold arrays this version does not use (a per-cluster
                # "reproducibility" score): they are ignored
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


