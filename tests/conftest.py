"""Shared fixtures: where ../shared/data is, small sample images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    env = os.environ.get("NAPARI_CUTS_DATA")
    cand = Path(env) if env else REPO.parent / "shared" / "data"
    return cand if cand.is_dir() else None


@pytest.fixture
def shared_data():
    """``../shared/data`` beside the repository (or $NAPARI_CUTS_DATA); skips if absent."""
    d = shared_data_dir()
    if d is None:
        pytest.skip("shared data not found: put ../shared/data beside the repository or set "
                    "NAPARI_CUTS_DATA (the retina set is non-commercial and not shipped)")
    return d


@pytest.fixture
def small_fundus():
    """The sample fundus photograph downscaled to (64, 64, 3) uint8."""
    import imageio.v3 as iio
    from skimage.transform import resize

    im = iio.imread(REPO / "sample_data" / "fundus.png")
    return (resize(im, (64, 64), anti_aliasing=True, preserve_range=True)).round().astype(np.uint8)
