"""Volumes as volumes: the working grid, slice context and checks for 3D input.

A volume ``(Z, Y, X)`` (or ``(Z, Y, X, C)``) with voxel ``spacing`` (sz, sy, sx) is
segmented as ONE object (see :func:`napari_cuts.pipeline_volume.segment_volume`):

1. **Working grid.** The volume is reduced to at most ``max_points`` voxels by block
   means whose sides are chosen per axis so that the grid is as close to isotropic in
   millimetres as the slices allow (:func:`volume_plan`): a 1 mm brain of 197 x 233 x
   189 becomes a 2 mm grid of about 1.1 M voxels, a 0.5 x 0.5 x 5 mm scan keeps every
   slice and pools in-plane only. Encoder, embeddings and condensation all work on that
   grid (8 times fewer voxels to embed at 2 mm, and the encoder's 17-voxel view then
   covers 34 mm); labels are mapped back to every voxel (nearest block).
2. **Encoder.** The Table S1 network on every slice of the grid, trained on a subset
   of slices (by default, see ``CONTEXT_SLICES``), or with
   ``context = k`` each slice with its ``k`` neighbours as extra channels (2.5D, edges
   repeated), so the network sees across slices; :func:`context_stack`.
3. **One hierarchy.** Condensation pre-merges 6-connected voxel neighbours, with the
   grid spacing weighting each axis, so label ids are one structure across the volume.

Nothing here imports torch, Qt or napari.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

__all__ = ["VolumePlan", "volume_plan", "block_reduce", "context_stack", "check_volume",
           "MAX_VOLUME_POINTS", "CONTEXT_SLICES", "MIN_VOLUME_SIDE"]

#: Condensation and the encoder work on at most this many voxels of a volume.
MAX_VOLUME_POINTS = 1_200_000
#: Neighbouring slices on each side given to the encoder as channels (2.5D) by default.
#: 0: the 2D network on every slice (docs/decisions/0006); ``context=1`` gives 2.5D.
CONTEXT_SLICES = 0
#: Guided smoothing of a volume's embeddings before condensation (:func:`guided_smooth`):
#: range bandwidth in the [0, 1] image and the number of iterations (0: off).
GUIDE_SIGMA = 0.05
GUIDE_ITERATIONS = 5
#: The smallest in-plane side of a volume's working grid (the encoder's reach).
MIN_VOLUME_SIDE = 17


@dataclass
class VolumePlan:
    """How a volume of ``shape`` with ``spacing`` is segmented, before doing it."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    pools: tuple[int, int, int]
    grid_shape: tuple[int, int, int]
    grid_spacing: tuple[float, float, float]
    estimated_mb: float
    estimated_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def points(self) -> int:
        return int(np.prod(self.grid_shape))


def _grid(shape, pools):
    return tuple(-(-int(n) // int(p)) for n, p in zip(shape, pools))


def volume_plan(shape, spacing=None, max_points: int = MAX_VOLUME_POINTS) -> VolumePlan:
    """Choose the working grid of a volume ``shape`` (Z, Y, X[, C]) with ``spacing``.

    The target voxel side ``v`` (mm) grows from the finest spacing until the grid of
    block means with sides ``pool_i = max(1, round(v / spacing_i))`` has at most
    ``max_points`` voxels; in-plane sides never drop below 17 voxels (the encoder's
    reach) unless the volume itself is smaller."""
    zyx = tuple(int(n) for n in shape[:3])
    sp = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing[:3])
    if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise InputError(f"voxel spacing {spacing!r} must be three positive numbers (sz, sy, sx).")
    max_points = int(max_points)
    if max_points < 4096:
        raise InputError(f"max_points {max_points} is too small for a volume (>= 4096).")
    pools = (1, 1, 1)
    v = min(sp)
    for _ in range(400):
        pools = tuple(max(1, int(round(v / s))) for s in sp)
        # keep enough in-plane context for the encoder
        pools = (pools[0],) + tuple(max(1, min(p, n // MIN_VOLUME_SIDE)) if n >= MIN_VOLUME_SIDE else 1
                                    for p, n in zip(pools[1:], zyx[1:]))
        if int(np.prod(_grid(zyx, pools))) <= max_points:
            break
        v *= 1.05
    grid = _grid(zyx, pools)
    points = int(np.prod(grid))
    if points > max_points:
        raise InputError(f"a {' x '.join(map(str, zyx))} volume cannot be reduced to "
                         f"{max_points} voxels; pass a larger max_points.")
    gsp = tuple(float(s * p) for s, p in zip(sp, pools))
    n_vox = int(np.prod(zyx))
    # grid: embeddings (128 float32) + features + PCA copies + kNN working set, ~3 KB a
    # point measured on the MNI volume; full resolution: input copies, the finest map
    # (int64) and label maps for the layers, ~40 B a voxel.
    est_mb = points * 3000 / 2**20 + n_vox * 40 / 2**20 + 400
    est_s = points * 2.5e-5 + n_vox * 2e-7
    notes = []
    if pools != (1, 1, 1):
        notes.append(
            f"The volume has {n_vox / 1e6:.1f} million voxels: segmenting on a "
            f"{' x '.join(map(str, grid))} grid of {' x '.join(map(str, pools))} block means "
            f"({' x '.join(f'{s:g}' for s in gsp)} mm), labels mapped back to every voxel.")
    return VolumePlan(zyx, sp, pools, grid, gsp, est_mb, est_s, notes)


def block_reduce(volume: np.ndarray, pools) -> np.ndarray:
    """Means over blocks of ``pools`` (pz, py, px) of ``(Z, Y, X[, C])``, top-left aligned,
    edge blocks averaged over the voxels they have; float32."""
    arr = np.asarray(volume, dtype=np.float32)
    pools = tuple(int(p) for p in pools)
    if pools == (1, 1, 1):
        return arr
    out = arr.astype(np.float64)
    counts = []
    for ax, p in enumerate(pools):
        n = arr.shape[ax]
        starts = np.arange(0, n, p)
        out = np.add.reduceat(out, starts, axis=ax)
        counts.append(np.diff(np.append(starts, n)).astype(np.float64))
    cnt = counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]
    if out.ndim == 4:
        cnt = cnt[..., None]
    return (out / cnt).astype(np.float32)


def context_stack(volume: np.ndarray, context: int = CONTEXT_SLICES) -> np.ndarray:
    """``(Z, Y, X, C)`` -> ``(Z, Y, X, (2k+1) C)``: every slice with its ``k`` neighbours
    on each side as channels, ordered z-k .. z+k (edge slices repeated)."""
    arr = np.asarray(volume, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[..., None]
    k = int(context)
    if k <= 0:
        return arr
    z = arr.shape[0]
    parts = [arr[np.clip(np.arange(z) + o, 0, z - 1)] for o in range(-k, k + 1)]
    return np.concatenate(parts, axis=-1)


def guided_smooth(features: np.ndarray, guide: np.ndarray, *, sigma: float = GUIDE_SIGMA,
                  iterations: int = GUIDE_ITERATIONS, spacing=None,
                  chunk: int = 16, inplace: bool = False, cancel=None) -> np.ndarray:
    """Edge-aware diffusion of grid features ``(Z, Y, X, D)`` (or a 2D ``(H, W, D)``)
    guided by the image.

    Each iteration replaces every voxel's vector by the weighted mean of itself
    (weight 1) and its face neighbours (six in 3D, four in 2D), a neighbour's weight being
    ``exp(-|g_i - g_j|^2 / (2 sigma^2))`` for the guide ``(Z, Y, X, C)`` in [0, 1] (a
    bilateral filter in the image's range, times ``(finest step / step)^2`` along an
    axis of coarser ``spacing``, so a 3 mm neighbour of a 1 mm grid counts a ninth).
    Across an edge of the image the weight is near 0; inside a region of one intensity
    the vectors average, over about ``sqrt(iterations)`` voxels.

    Why: an encoder sees a patch, so a voxel in the core of a ventricle and one on its
    rim (whose patch holds tissue) get different embeddings although both are CSF; the
    condensation then split each ventricle between clusters in one MNI draw out of
    three. Smoothing within the image's regions joins them without blurring the edge.
    Returns a new float32 array (``inplace``: writes into ``features``, a float32 array
    or view, and returns it). ``cancel``: checked between iterations
    (:class:`napari_cuts.errors.Cancelled`)."""
    from .images import check_cancel

    u = features if inplace else np.array(features, dtype=np.float32, copy=True)
    g = np.asarray(guide, dtype=np.float32)
    if g.ndim == u.ndim - 1:
        g = g[..., None]
    nd = u.ndim - 1
    sp = np.ones(nd) if spacing is None else np.asarray(spacing, dtype=np.float64)[-nd:]
    axis_w = (sp.min() / sp) ** 2
    inv = 1.0 / (2.0 * float(sigma) ** 2)
    weights = []
    for ax in range(nd):
        if u.shape[ax] < 2:
            weights.append(None)
            continue
        lo = [slice(None)] * nd
        hi = [slice(None)] * nd
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        d = np.square(g[tuple(hi)] - g[tuple(lo)]).sum(-1)
        weights.append((tuple(lo), tuple(hi), (axis_w[ax] * np.exp(-inv * d)).astype(np.float32)))
    wsum = np.ones(u.shape[:-1], dtype=np.float32)
    for item in weights:
        if item is not None:
            lo, hi, w = item
            wsum[lo] += w
            wsum[hi] += w
    # channels are independent: smooth a few at a time, so the temporaries stay small
    # (a 1 mm brain's 2 mm grid at 128-d is 0.46 GB; 16 channels at a time add 0.17 GB)
    for c0 in range(0, u.shape[-1], chunk):
        part = u[..., c0:c0 + chunk].copy()
        for _ in range(int(iterations)):
            check_cancel(cancel)
            acc = part.copy()
            for item in weights:
                if item is None:
                    continue
                lo, hi, w = item
                acc[lo] += w[..., None] * part[hi]
                acc[hi] += w[..., None] * part[lo]
            acc /= wsum[..., None]
            part = acc
        u[..., c0:c0 + chunk] = part
    return u


def check_volume(volume, name: str = "volume") -> np.ndarray:
    """Validate a volume ``(Z, Y, X)`` or ``(Z, Y, X, C)`` (C <= 8) and return float32
    ``(Z, Y, X, C)``; clear :class:`InputError` messages for what cannot be segmented."""
    arr = np.asarray(volume)
    if arr.dtype == object or arr.dtype.kind in "USVOcmM":
        raise InputError(f"{name} has dtype {arr.dtype}; give a real-valued array "
                         "(uint8, uint16, int or float).")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or not 1 <= arr.shape[-1] <= 8:
        raise InputError(f"{name} has shape {np.shape(volume)}; expected a volume (Z, Y, X) "
                         "or (Z, Y, X, C) with at most 8 channels.")
    z, y, x = arr.shape[:3]
    if z < 2:
        raise InputError(f"{name} has {z} slice; a volume needs at least 2 (segment a single "
                         "slice as a 2D image).")
    if min(y, x) < MIN_VOLUME_SIDE:
        raise InputError(f"{name} is {z} x {y} x {x} voxels; CUTS needs slices of at least "
                         f"{MIN_VOLUME_SIDE} x {MIN_VOLUME_SIDE} voxels (the encoder looks at "
                         "17 x 17 neighbourhoods).")
    out = arr.astype(np.float32, copy=False)
    finite = np.isfinite(out)
    if not finite.all():
        bad = int(out.size - np.count_nonzero(finite))
        raise InputError(f"{name} has {bad} NaN or infinite values; replace them "
                         "(e.g. np.nan_to_num) or crop them away before segmenting.")
    if float(out.max()) == float(out.min()):
        raise InputError(f"{name} is constant (every voxel is {float(out.flat[0]):g}); "
                         "there is nothing to segment.")
    return out


def estimate_note(p: VolumePlan) -> str:
    """One line for the log: sizes and estimates."""
    return (f"working grid {' x '.join(map(str, p.grid_shape))} "
            f"({' x '.join(f'{s:g}' for s in p.grid_spacing)} mm), estimated peak memory "
            f"~{p.estimated_mb:.0f} MB, segmentation ~{math.ceil(p.estimated_seconds)} s after training")


def normalise_volume(volume: np.ndarray, percentiles=(0.5, 99.5)) -> np.ndarray:
    """``(Z, Y, X[, C])`` -> float32 ``(Z, Y, X, C)`` scaled per channel to [0, 1] between
    its robust ``percentiles`` (clipped)."""
    arr = np.asarray(volume, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[..., None]
    out = np.empty(arr.shape, np.float32)
    for c in range(arr.shape[-1]):
        ch = arr[..., c]
        sample = ch.ravel()[:: max(1, ch.size // 2_000_000)]
        lo, hi = np.percentile(sample, percentiles)
        out[..., c] = np.clip((ch - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    return out


def refine_finest(grid_finest: np.ndarray, image01: np.ndarray, pools, *, margin: float = 0.8,
                  chunk: int = 8, luts=None) -> np.ndarray:
    """Map a working-grid base partition back to every voxel, guided by the image.

    ``grid_finest`` ``(z, y, x)`` holds the base region id of every grid block;
    ``image01`` ``(Z, Y, X, C)`` the full-resolution image in [0, 1]; ``pools`` the
    block sides. Nearest mapping would give every voxel its block's region, so an
    edge between structures follows the block grid (at 2 mm, a thin ventricle loses
    half its voxels to the blocks around it). Instead every voxel chooses, among the
    regions of its own block and of the nearest neighbouring block along each pooled
    axis (up to 8 candidates), the one whose mean intensity is closest to its own; a
    neighbour wins only when it is closer than ``margin`` times its own block's
    distance (noise inside a uniform region keeps the block's answer). Returns the
    ``(Z, Y, X)`` base map (int64), ids unchanged, so every level's lookup table and
    the nesting of the hierarchy stay valid.

    ``luts`` (the hierarchy's lookup tables, base id -> cluster, one per level): a base
    region is then judged by its whole lineage, the mean over those levels of the
    squared distance from the voxel to the mean intensity of the region's cluster at
    each level, instead of by its own mean alone. A thin region of mixed blocks along
    a wall (a 2 mm block half ventricle, half tissue has a mean between the two, and the
    condensation merges such blocks into the tissue) no longer keeps its voxels that
    look like the structure next to it: they go to the neighbouring block whose
    clusters they match at every scale (docs/decisions/0006). The cost is linear in the
    voxels, as the plain rule's (0.7 s for a 1 mm brain)."""
    pools = tuple(int(p) for p in pools)
    shape = image01.shape[:3]
    img = image01 if image01.ndim == 4 else image01[..., None]
    n0 = int(grid_finest.max()) + 1
    gidx = [np.minimum(np.arange(n) // p, g - 1) for n, p, g in zip(shape, pools, grid_finest.shape)]
    near = grid_finest[np.ix_(*gidx)]
    if pools == (1, 1, 1):
        return near.astype(np.int64)
    # region means over the nearest assignment
    cnt = np.bincount(near.ravel(), minlength=n0).astype(np.float64)
    means = np.stack([np.bincount(near.ravel(), weights=img[..., c].ravel(), minlength=n0)
                      for c in range(img.shape[-1])], axis=1) / np.maximum(cnt, 1)[:, None]
    const = np.zeros(n0, np.float32)
    if luts is not None and len(luts):
        # mean over levels of |v - m_l|^2 = |v - mean_l m_l|^2 + var_l(m_l): one
        # centre and one constant per base region
        s1 = np.zeros_like(means)
        s2 = np.zeros(n0)
        wsum = means * cnt[:, None]
        for lut in luts:
            lut = np.asarray(lut, dtype=np.int64)
            k = int(lut.max()) + 1
            c_cnt = np.bincount(lut, weights=cnt, minlength=k)
            c_mean = np.stack([np.bincount(lut, weights=wsum[:, c], minlength=k)
                               for c in range(means.shape[1])], axis=1) / np.maximum(c_cnt, 1)[:, None]
            a = c_mean[lut]
            s1 += a
            s2 += (a ** 2).sum(1)
        means = s1 / len(luts)
        const = np.maximum(s2 / len(luts) - (means ** 2).sum(1), 0.0).astype(np.float32)
    means = means.astype(np.float32)
    # the neighbouring block on the voxel's side of its block, per axis
    nbr = []
    for n, p, g in zip(shape, pools, grid_finest.shape):
        i = np.arange(n)
        b = np.minimum(i // p, g - 1)
        side = np.where((i % p) < p / 2.0, -1, 1) if p > 1 else np.zeros(n, int)
        nbr.append((b, np.clip(b + side, 0, g - 1)))
    out = np.empty(shape, np.int64)
    combos = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)
              if (a == 0 or pools[0] > 1) and (b == 0 or pools[1] > 1) and (c == 0 or pools[2] > 1)]
    for z0 in range(0, shape[0], chunk):
        z1 = min(shape[0], z0 + chunk)
        zsl = slice(z0, z1)
        v = img[zsl]
        best = near[zsl].astype(np.int64)
        d_own = ((v - means[best]) ** 2).sum(-1) + const[best]
        best_d = d_own * margin
        for a, b, c in combos[1:]:
            cand = grid_finest[np.ix_(nbr[0][a][zsl], nbr[1][b], nbr[2][c])]
            d = ((v - means[cand]) ** 2).sum(-1) + const[cand]
            win = d < best_d
            best[win] = cand[win]
            best_d[win] = d[win]
        out[zsl] = best
    return out
