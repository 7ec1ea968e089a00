"""Click-to-binarise, the label hint and the innermost point."""

import numpy as np
import pytest

from napari_cuts import selection as S
from napari_cuts.errors import InputError


def quad_labels(h=20, w=30):
    lab = np.zeros((h, w), dtype=np.int32)
    lab[: h // 2, w // 2:] = 1
    lab[h // 2:, : w // 2] = 2
    lab[h // 2:, w // 2:] = 3
    return lab


def test_select_cluster_picks_the_cluster_under_the_point():
    lab = quad_labels()
    m = S.select_cluster(lab, (15, 20))
    assert m.dtype == bool and m.shape == lab.shape
    assert np.array_equal(m, lab == 3)
    # napari gives float coordinates
    assert np.array_equal(S.select_cluster(lab, (2.2, 3.7)), lab == 0)


def test_select_cluster_3d():
    vol = np.stack([quad_labels(), quad_labels() + 4])
    assert np.array_equal(S.select_cluster(vol, (1, 0, 0)), vol == 4)


def test_select_cluster_rejects_bad_points():
    lab = quad_labels()
    with pytest.raises(InputError):
        S.select_cluster(lab, (20, 0))
    with pytest.raises(InputError):
        S.select_cluster(lab, (1, 2, 3))
    with pytest.raises(InputError):
        S.select_cluster(lab.astype(float), (1, 2))


def test_update_mask_modes():
    lab = quad_labels()
    m = S.update_mask(None, lab, (0, 0), "replace")
    assert np.array_equal(m, lab == 0)
    m2 = S.update_mask(m, lab, (15, 20), "add")
    assert np.array_equal(m2, (lab == 0) | (lab == 3))
    assert np.array_equal(m, lab == 0)  # input untouched
    m3 = S.update_mask(m2, lab, (0, 0), "remove")
    assert np.array_equal(m3, lab == 3)
    # removing a cluster that is not in the mask changes nothing
    assert np.array_equal(S.update_mask(m3, lab, (0, 29), "remove"), m3)
    with pytest.raises(InputError):
        S.update_mask(m, lab, (0, 0), "xor")


def test_label_hint_picks_the_majority_cluster():
    lab = quad_labels()
    gt = np.zeros(lab.shape, dtype=np.uint8)
    gt[12:20, 10:30] = 1  # 8 rows: 5 columns in cluster 2, 15 in cluster 3
    assert np.array_equal(S.label_hint(lab, gt), lab == 3)


def test_label_hint_ties_go_to_the_lowest_id_and_empty_gt():
    lab = quad_labels()
    gt = np.zeros(lab.shape, dtype=bool)
    gt[9:11, 14:16] = True  # one pixel in each of the 4 clusters
    assert np.array_equal(S.label_hint(lab, gt), lab == 0)
    assert not S.label_hint(lab, np.zeros_like(gt)).any()


def test_label_hint_with_negative_and_huge_ids():
    lab = quad_labels().astype(np.int64)
    lab[lab == 3] = 10**12
    lab[lab == 0] = -5
    gt = np.zeros(lab.shape, dtype=bool)
    gt[15:, 20:] = True
    assert np.array_equal(S.label_hint(lab, gt), lab == 10**12)
    gt[:] = False
    gt[:3, :3] = True
    assert np.array_equal(S.label_hint(lab, gt), lab == -5)


def test_innermost_point_is_deep_inside():
    m = np.zeros((40, 40), dtype=bool)
    m[5:16, 20:31] = True  # 11 x 11 square, centre (10, 25)
    assert S.innermost_point(m) == (10, 25)
    # a C shape: the centroid is outside, the innermost point is inside
    c = np.zeros((40, 40), dtype=bool)
    c[5:35, 5:15] = True
    c[5:12, 5:35] = True
    c[28:35, 5:35] = True
    p = S.innermost_point(c)
    assert c[p]
    # a mask touching the border is not "deep" at the border
    b = np.zeros((20, 20), dtype=bool)
    b[:, :8] = True
    assert S.innermost_point(b)[1] in (3, 4)
    with pytest.raises(InputError):
        S.innermost_point(np.zeros((5, 5)))


def test_innermost_point_takes_the_middle_of_a_plateau():
    """A slab 8 slices thick and 48 x 24 voxels wide is deepest (4 voxels) on a whole
    plateau of its middle slices; the click is the plateau voxel nearest its centroid,
    not the plateau's first voxel (4 voxels inside one end)."""
    m = np.zeros((12, 60, 126), dtype=bool)
    m[2:10, 6:54, 51:75] = True
    z, y, x = S.innermost_point(m)
    assert z in (5, 6) and abs(y - 29.5) <= 1 and abs(x - 62.5) <= 1
    # a band of even width in 2D: the middle of its ridge, not its first pixel
    b = np.zeros((20, 60), dtype=bool)
    b[8:12, 5:55] = True
    assert abs(S.innermost_point(b)[1] - 29.5) <= 1
