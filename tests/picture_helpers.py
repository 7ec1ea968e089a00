"""Small synthetic pictures shared by the cohort tests."""

from __future__ import annotations

import numpy as np


def pale_disk(size: int, centre, radius: int, seed: int) -> np.ndarray:
    """A (size, size, 3) uint8 picture: a pale disk of ``radius`` at ``centre`` on a
    reddish gradient, with Gaussian noise (sigma 6) drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size, 3), np.float64)
    img[..., 0] = 120 + 40 * xx / size
    img[..., 1] = 50 + 20 * yy / size
    img[..., 2] = 30
    img[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius * radius] = (230, 210, 160)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)
