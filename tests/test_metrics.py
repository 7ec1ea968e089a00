"""Metrics on cases with known answers."""

import math

import numpy as np
import pytest
from skimage.metrics import hausdorff_distance, structural_similarity

from napari_cuts import metrics as M
from napari_cuts.errors import InputError


def square(shape=(40, 40), top=10, left=10, size=8):
    m = np.zeros(shape, dtype=bool)
    m[top:top + size, left:left + size] = True
    return m


def test_dice_identical_and_disjoint():
    a = square()
    assert M.dice(a, a) == 1.0
    b = square(top=25, left=25)
    assert M.dice(a, b) == 0.0
    # half overlap: shift by half the side along one axis
    c = square(left=14)
    assert M.dice(a, c) == pytest.approx(2 * 32 / 128)


def test_dice_accepts_int_masks_and_both_empty():
    a = square().astype(np.uint8) * 3
    assert M.dice(a, a > 0) == 1.0
    z = np.zeros((10, 10))
    assert M.dice(z, z) == 1.0


@pytest.mark.parametrize("dy,dx", [(0, 5), (3, 0), (3, 4)])
def test_hausdorff_of_shifted_squares_is_the_shift(dy, dx):
    a = square()
    b = square(top=10 + dy, left=10 + dx)
    assert M.hausdorff(a, b) == pytest.approx(math.hypot(dy, dx))
    assert M.hausdorff(a, b) == pytest.approx(hausdorff_distance(a, b))
    assert M.hd95(a, b) <= M.hausdorff(a, b) + 1e-9


def test_hausdorff_matches_skimage_on_random_blobs():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.random((30, 30)) > 0.9
        b = rng.random((30, 30)) > 0.8
        assert M.hausdorff(a, b) == pytest.approx(hausdorff_distance(a, b))


def test_hd95_ignores_a_few_outliers():
    a = square(shape=(64, 64), top=10, left=10, size=20)
    b = a.copy()
    b[60, 60] = True  # one far pixel
    assert M.hausdorff(a, b) > 40
    assert M.hd95(a, b) < 1.0


def test_empty_masks():
    a = square()
    z = np.zeros_like(a)
    diag = math.hypot(*a.shape)
    assert M.hausdorff(z, a) == pytest.approx(diag)
    assert M.hausdorff(a, z) == pytest.approx(diag)
    assert M.hd95(z, a) == pytest.approx(diag)
    assert M.hausdorff(z, z) == 0.0
    r = M.all_metrics(z, a)
    assert r["empty_pred"] is True and r["dice"] == 0.0
    assert M.all_metrics(a, a)["empty_pred"] is False


def test_ssim_rmse_ergas_known_cases():
    a = square()
    assert M.ssim(a, a) == pytest.approx(1.0)
    assert M.rmse(a, a) == 0.0
    assert M.ergas(a, a) == 0.0
    b = ~a
    assert M.rmse(b, a) == 1.0
    assert M.ssim(b, a) < 0.1
    assert M.ssim(b, a) == pytest.approx(
        structural_similarity(a.astype(float), b.astype(float), data_range=1.0))
    c = square(left=12)
    assert 0 < M.ergas(c, a) < M.ergas(b, a)
    assert M.rmse(c, a) == pytest.approx(np.sqrt(2 * 16 / 1600))


def test_all_metrics_keys_and_shape_check():
    a = square()
    r = M.all_metrics(a, square(left=11))
    assert set(M.METRIC_KEYS) <= set(r)
    with pytest.raises(InputError):
        M.dice(a, a[:-1])
