"""The paper's classical baselines, written with scikit-image.

Each baseline is a function ``(image (H, W, C) float, *, seed=0) -> (H, W) int64``
label map. ``image`` is scaled to [0, 1] first if it is not already in that range
(min-max); grey images may be ``(H, W)`` or ``(H, W, 1)``.

How the CUTS paper's table computed them (settings of its official code, measured
on the 56 retina images; the brief that set up this module lists them):

- ``random``: two labels drawn uniformly per pixel, scored *without* the label hint
  (label 1 = foreground), paper Dice 0.132.
- ``watershed``: an Otsu threshold of the grey image after a 3 x 3 grey opening; the
  darker side is then split by a distance-transform watershed (as the official
  code's markers do). Scored with the label hint, which picks a side of the
  threshold, so it is in effect a threshold: paper Dice 0.187.
- ``felzenszwalb``: ``skimage.segmentation.felzenszwalb(scale=1500)`` (the
  repository's early setting, the one behind the paper's table, 0.222);
  ``felzenszwalb_s200`` uses the repository's later setting ``scale=200, sigma=1.0,
  min_size=10``, much better (about 0.55 on the 56 images).
- ``slic``: ``skimage.segmentation.slic(n_segments=10)``, paper Dice 0.567.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import InputError


def _prepare(image) -> np.ndarray:
    """Float64 (H, W, C) in [0, 1]."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise InputError(f"image has shape {np.shape(image)}; expected (H, W) or (H, W, C).")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise InputError("image has NaN or infinite values; replace them first.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return arr


def _grey(img: np.ndarray) -> np.ndarray:
    if img.shape[-1] >= 3:
        from skimage.color import rgb2gray

        return rgb2gray(img[..., :3])
    return img[..., 0]


def _channel_args(img: np.ndarray) -> tuple[np.ndarray, int | None]:
    if img.shape[-1] == 1:
        return img[..., 0], None
    return img, -1


def random_labels(image, *, seed: int = 0, n_labels: int = 2) -> np.ndarray:
    """Labels drawn uniformly from ``0..n_labels-1`` per pixel (seeded)."""
    img = _prepare(image)
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_labels, size=img.shape[:2]).astype(np.int64)


def otsu_watershed(image, *, seed: int = 0) -> np.ndarray:
    """Otsu threshold (label 0 = brighter side), the darker side split by a watershed."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.morphology import opening
    from skimage.segmentation import watershed

    img = _prepare(image)
    grey = np.round(_grey(img) * 255.0)
    grey = opening(grey, np.ones((3, 3), dtype=bool))
    if grey.max() == grey.min():
        return np.zeros(grey.shape, dtype=np.int64)
    dark = grey <= threshold_otsu(grey)
    dist = ndimage.distance_transform_edt(dark)
    peaks = peak_local_max(dist, labels=dark.astype(np.int32), threshold_rel=0.9)
    markers = np.zeros(dist.shape, dtype=np.int64)
    markers[tuple(peaks.T)] = 1
    markers, _ = ndimage.label(markers)
    if markers.max() == 0:
        return dark.astype(np.int64)
    labels = watershed(-dist, markers, mask=dark).astype(np.int64)
    # Pixels of the dark side no basin reached stay with the first basin.
    labels[dark & (labels == 0)] = 1
    return labels


def felzenszwalb(image, *, seed: int = 0, scale: float = 1500.0, sigma: float = 0.8,
                 min_size: int = 20) -> np.ndarray:
    """Felzenszwalb-Huttenlocher graph segmentation (skimage; defaults: the paper's table)."""
    from skimage.segmentation import felzenszwalb as _fz

    img, axis = _channel_args(_prepare(image))
    return _fz(img, scale=scale, sigma=sigma, min_size=min_size,
               channel_axis=axis).astype(np.int64)


def felzenszwalb_s200(image, *, seed: int = 0) -> np.ndarray:
    """Felzenszwalb with the official repository's later settings (scale 200, sigma 1, min_size 10)."""
    return felzenszwalb(image, seed=seed, scale=200.0, sigma=1.0, min_size=10)


def slic(image, *, seed: int = 0, n_segments: int = 10) -> np.ndarray:
    """SLIC superpixels (skimage, ``n_segments=10`` as in the paper)."""
    from skimage.segmentation import slic as _slic

    img, axis = _channel_args(_prepare(image))
    return _slic(img, n_segments=n_segments, start_label=0,
                 channel_axis=axis).astype(np.int64)


#: name -> (function, uses the seed, scored with the label hint)
BASELINES: dict[str, tuple[Callable[..., np.ndarray], bool, bool]] = {
    "random": (random_labels, True, False),
    "watershed": (otsu_watershed, False, True),
    "felzenszwalb": (felzenszwalb, False, True),
    "felzenszwalb_s200": (felzenszwalb_s200, False, True),
    "slic": (slic, False, True),
}


def run_baseline(name: str, image, *, seed: int = 0) -> np.ndarray:
    """Run the baseline called ``name`` (a key of :data:`BASELINES`) on one image."""
    if name not in BASELINES:
        raise InputError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}.")
    return BASELINES[name][0](image, seed=seed)


# --------------------------------------------------------------------------- volumes

#: The settings :func:`slic3d_best` searches (per case, with the labels: an oracle).
SLIC3D_N_SEGMENTS = (50, 200, 800, 3200)
SLIC3D_COMPACTNESS = (0.05, 0.1, 0.3)


def _prepare_volume(volume) -> np.ndarray:
    """Float64 ``(Z, Y, X)`` or ``(Z, Y, X, C)`` in [0, 1] (min-max if outside)."""
    arr = np.asarray(volume, dtype=np.float64)
    if arr.ndim not in (3, 4):
        raise InputError(f"volume has shape {np.shape(volume)}; expected (Z, Y, X) or "
                         "(Z, Y, X, C).")
    if not np.all(np.isfinite(arr)):
        raise InputError("volume has NaN or infinite values; replace them first.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return arr


def slic3d(volume, *, spacing=None, n_segments: int = 800, compactness: float = 0.1,
           seed: int = 0) -> np.ndarray:
    """3D SLIC supervoxels: ``skimage.segmentation.slic`` on the whole volume with the
    voxel ``spacing`` (sz, sy, sx), ``channel_axis=None`` for a grey ``(Z, Y, X)``
    volume (``-1`` for ``(Z, Y, X, C)``). Intensities in [0, 1], so ``compactness`` is
    on that scale (0.05-0.3 balances intensity against distance on MRI). Returns
    ``(Z, Y, X)`` int64 labels from 0."""
    from skimage.segmentation import slic as _slic

    vol = _prepare_volume(volume)
    sp = np.ones(3) if spacing is None else np.asarray(spacing, dtype=np.float64)[:3]
    return _slic(vol, n_segments=int(n_segments), compactness=float(compactness),
                 spacing=sp, start_label=0,
                 channel_axis=None if vol.ndim == 3 else -1).astype(np.int64)


def slic3d_best(volume, gt, point, *, spacing=None,
                n_segments=SLIC3D_N_SEGMENTS, compactness=SLIC3D_COMPACTNESS):
    """The ``slic3d`` baseline of ``napari-cuts evaluate``: the supervoxel under ``point``
    (one click, e.g. the innermost ground-truth voxel), best over the grid of
    ``n_segments`` x ``compactness`` by 3D Dice against ``gt``: an oracle like
    ``cuts_best`` (the setting is chosen per case with the labels).

    Returns ``(mask (Z, Y, X) bool, {"n_segments", "compactness", "dice"})``."""
    from .metrics import dice

    truth = np.asarray(gt) != 0
    idx = tuple(int(v) for v in point)
    best, best_info = None, None
    for n in n_segments:
        for c in compactness:
            lab = slic3d(volume, spacing=spacing, n_segments=n, compactness=c)
            m = lab == lab[idx]
            d = dice(m, truth)
            if best_info is None or d > best_info["dice"]:
                best, best_info = m, {"n_segments": int(n), "compactness": float(c),
                                      "dice": float(d)}
    return best, best_info
