"""Segmentation quality metrics, defined as the CUTS paper's evaluation code defines them.

Every function takes a predicted mask and the ground-truth mask (same shape, 2D
``(H, W)`` or nD, any dtype; non-zero = foreground) and returns a Python float.
The ground truth is the reference where a metric is asymmetric (SSIM, ERGAS).

Definitions (checked against the official CUTS analysis code and the ``sewar``
package it calls, re-implemented here with scipy/skimage):

- **Dice** ``2|P & T| / (|P| + |T|)``; two empty masks agree perfectly (1.0).
- **Hausdorff** the symmetric Hausdorff distance in pixels between the *sets of
  foreground pixels* (not only their contours), as
  ``skimage.metrics.hausdorff_distance`` computes it; here through exact Euclidean
  distance transforms (same value, faster). **HD95** takes the 95th percentile of
  each directed set of distances instead of the maximum, and the larger of the two.
- **Empty masks** (Hausdorff/HD95): if exactly one of the two masks is empty the
  distance is the image diagonal ``sqrt(sum(shape**2))``, the convention of the
  paper's code, so that an empty prediction is the worst case rather than a hole in
  the average; two empty masks give 0.0. :func:`all_metrics` also reports
  ``empty_pred`` so that callers can count such cases.
- **SSIM** ``skimage.metrics.structural_similarity`` between the masks as float,
  with ``data_range`` the ground truth's range (1.0 for a binary mask, 1.0 when
  constant), the window shrunk to the image for sides below 7 pixels.
- **ERGAS** as ``sewar.full_ref.ergas(truth, pred)`` with its defaults (ratio
  ``r=4``, window ``ws=8``): ``100 * r * mean(rmse_local / mean_local)`` over the
  image cropped by ``round(ws / 2)`` pixels, where ``rmse_local`` is the square root
  of the ``ws``-window mean of the squared error and ``mean_local`` the ``ws``-window
  mean of the ground truth divided by ``ws**2`` once more (sewar's formula, kept so
  that the numbers compare with the paper's); windows whose ground-truth mean is 0
  contribute 0. Lower is better; its scale is large (thousands) for binary masks.
  This is the ERGAS of sewar <= 0.4.5, the release current when the paper's numbers
  were made (its code installs sewar unpinned, 2022); verified equal to sewar 0.4.5
  on retina masks. sewar 0.4.6 and later compute a global ERGAS instead
  (``100 / 4 * rmse / mean``), which gives different numbers.
- **RMSE** ``sqrt(mean((T - P)**2))`` on the 0/1 masks.

On volumes (:func:`score_3d`): Dice over all voxels; Hausdorff and HD95 in mm between
the masks' *surfaces* with the voxel spacing (:func:`hausdorff_3d`); SSIM, ERGAS and
RMSE as above on the 3D masks.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .errors import InputError

#: The metric keys reported by :func:`all_metrics`, in table order.
METRIC_KEYS = ("dice", "hausdorff", "hd95", "ssim", "ergas", "rmse")
#: Whether a larger value of each metric is better.
HIGHER_IS_BETTER = {"dice": True, "hausdorff": False, "hd95": False, "ssim": True,
                    "ergas": False, "rmse": False}


def _pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred)
    t = np.asarray(truth)
    if p.shape != t.shape:
        raise InputError(
            f"prediction has shape {p.shape} but the ground truth has {t.shape}; "
            "give masks of the same shape."
        )
    if p.ndim == 0 or p.size == 0:
        raise InputError("masks must be non-empty arrays (e.g. (H, W)).")
    return p != 0, t != 0


def dice(pred, truth) -> float:
    """Dice coefficient of two masks (1.0 for two empty masks)."""
    p, t = _pair(pred, truth)
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / denom


def _directed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances from every foreground pixel of ``a`` to the nearest one of ``b``."""
    # distance_transform_edt gives, at each non-zero pixel, the distance to the
    # nearest zero; feeding ~b makes b's pixels the zeros.
    return ndimage.distance_transform_edt(~b)[a]


def _hausdorff(p: np.ndarray, t: np.ndarray, q: float | None) -> float:
    ep, et = not p.any(), not t.any()
    if ep and et:
        return 0.0
    if ep or et:
        return float(math.sqrt(sum(s * s for s in p.shape)))
    d1 = _directed(p, t)
    d2 = _directed(t, p)
    if q is None:
        return float(max(d1.max(), d2.max()))
    return float(max(np.percentile(d1, q), np.percentile(d2, q)))


def hausdorff(pred, truth) -> float:
    """Symmetric Hausdorff distance (pixels) between the foreground pixel sets.

    One empty mask: the image diagonal (the paper's convention); both empty: 0.0.
    """
    p, t = _pair(pred, truth)
    return _hausdorff(p, t, None)


def hd95(pred, truth) -> float:
    """95th-percentile Hausdorff distance (pixels); same empty-mask rules as :func:`hausdorff`."""
    p, t = _pair(pred, truth)
    return _hausdorff(p, t, 95.0)


def ssim(pred, truth) -> float:
    """SSIM between the masks as float (skimage), data range from the ground truth."""
    from skimage.metrics import structural_similarity

    p, t = _pair(pred, truth)
    pf = p.astype(np.float64)
    tf = t.astype(np.float64)
    data_range = float(tf.max() - tf.min()) or 1.0
    side = min(p.shape)
    win = None
    if side < 7:
        win = side if side % 2 == 1 else side - 1
        if win < 1:
            return float("nan")
    return float(structural_similarity(tf, pf, data_range=data_range, win_size=win))


def ergas(pred, truth, *, ratio: float = 4.0, window: int = 8) -> float:
    """ERGAS of the prediction against the ground truth, with sewar's defaults (see module doc)."""
    p, t = _pair(pred, truth)
    tf = t.astype(np.float64)
    pf = p.astype(np.float64)
    rmse_map = np.sqrt(ndimage.uniform_filter((tf - pf) ** 2, window))
    mean_map = ndimage.uniform_filter(tf, window) / window**2
    zero = mean_map == 0
    mean_map[zero] = 1.0
    rmse_map[zero] = 0.0
    ergas_map = 100.0 * ratio * np.abs(rmse_map / mean_map)
    s = int(round(window / 2))
    inner = ergas_map[tuple(slice(s, -s) if n > 2 * s else slice(None) for n in ergas_map.shape)]
    return float(inner.mean())


def rmse(pred, truth) -> float:
    """Root mean squared error between the 0/1 masks."""
    p, t = _pair(pred, truth)
    return float(np.sqrt(np.mean((t.astype(np.float64) - p.astype(np.float64)) ** 2)))


def all_metrics(pred, truth) -> dict:
    """Every metric of :data:`METRIC_KEYS` for one prediction, plus ``empty_pred`` (bool)."""
    p, t = _pair(pred, truth)
    out = {
        "dice": dice(p, t),
        "hausdorff": _hausdorff(p, t, None),
        "hd95": _hausdorff(p, t, 95.0),
        "ssim": ssim(p, t),
        "ergas": ergas(p, t),
        "rmse": rmse(p, t),
    }
    out["empty_pred"] = bool(not p.any())
    return out


def _surface(m: np.ndarray) -> np.ndarray:
    st = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=st, border_value=0)


def surface_distances(pred, truth, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances (mm) from every surface voxel of ``pred`` to the nearest
    surface voxel of ``truth``, and back. Surface: foreground voxels with a 6-connected
    background neighbour (outside the array counts as background). Exact Euclidean
    distance transforms with ``sampling=spacing`` on the two masks' bounding box."""
    p, t = np.asarray(pred) != 0, np.asarray(truth) != 0
    u = p | t
    sl = tuple(slice(int(np.min(ix)), int(np.max(ix)) + 1) for ix in np.nonzero(u))
    pc, tc = np.pad(p[sl], 1), np.pad(t[sl], 1)
    sp, st = _surface(pc), _surface(tc)
    sampling = tuple(float(v) for v in spacing)
    d_pt = ndimage.distance_transform_edt(~st, sampling=sampling)[sp]
    d_tp = ndimage.distance_transform_edt(~sp, sampling=sampling)[st]
    return d_pt, d_tp


def hausdorff_3d(pred, truth, spacing, q: float | None = None) -> float:
    """Symmetric Hausdorff distance (``q=None``) or HD95 (``q=95``: the larger of the two
    directed 95th percentiles, as :func:`hd95`) between the surfaces of two masks, in
    mm. One empty mask: the volume's diagonal in mm; both empty: 0."""
    p, t = np.asarray(pred) != 0, np.asarray(truth) != 0
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, spacing))))
    d1, d2 = surface_distances(p, t, spacing)
    if q is None:
        return float(max(d1.max(), d2.max()))
    return float(max(np.percentile(d1, q), np.percentile(d2, q)))


def score_3d(pred, truth, spacing) -> dict:
    """Every metric of :data:`METRIC_KEYS` on whole volumes: Dice over all voxels,
    Hausdorff/HD95 in mm between surfaces (:func:`hausdorff_3d`), SSIM/ERGAS/RMSE on
    the 3D masks; plus ``empty_pred``."""
    p, t = np.asarray(pred) != 0, np.asarray(truth) != 0
    if p.shape != t.shape:
        raise InputError(f"prediction has shape {p.shape} but the ground truth has {t.shape}.")
    return {
        "dice": dice(p, t),
        "hausdorff": hausdorff_3d(p, t, spacing),
        "hd95": hausdorff_3d(p, t, spacing, 95.0),
        "ssim": ssim(p, t),
        "ergas": ergas(p, t),
        "rmse": rmse(p, t),
        "empty_pred": bool(not p.any()),
    }
