"""Connected structures of a hierarchy (`Hierarchy.structure`, `structure_lineage`,
`click_level(connected=True)`, `step_level(connected=True)`): the part of the clicked
cluster that is connected to the click (4-connected in 2D, 6-connected in 3D), checked
against `scipy.ndimage.label` on every level."""

import numpy as np
import pytest
from scipy import ndimage

from napari_cuts.hierarchy import Hierarchy
from napari_cuts.errors import InputError


def _random_hierarchy(shape, seed, n0=60, levels=6):
    """A nested hierarchy over a random blocky base map: base ids merged at random."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, n0, size=tuple(-(-s // 3) for s in shape))
    finest = np.kron(small, np.ones((3,) * len(shape), int))[tuple(slice(0, s) for s in shape)]
    ids = np.unique(finest)
    finest = np.searchsorted(ids, finest)
    n = ids.size
    luts = [np.arange(n)]
    for _ in range(levels - 1):
        cur = luts[-1]
        k = int(cur.max()) + 1
        if k == 1:
            break
        target = max(1, k // 2)
        parent = np.sort(rng.integers(0, target, size=k))
        parent[:target] = np.arange(target)           # every coarser id is used
        luts.append(parent[cur])
    luts.append(np.zeros(n, int))
    return Hierarchy(finest, luts)


@pytest.mark.parametrize("shape", [(23, 31), (9, 12, 14)])
def test_structure_is_the_connected_component_of_the_cluster(shape):
    for seed in range(3):
        h = _random_hierarchy(shape, seed)
        rng = np.random.default_rng(seed + 10)
        for _ in range(4):
            pt = tuple(int(rng.integers(0, s)) for s in shape)
            lin = h.structure_lineage(pt)
            assert [lv for lv, _, _ in lin] == list(range(h.n_levels))
            sizes = []
            for lv, cid, size in lin:
                lab = h.labels(lv)
                assert lab[pt] == cid
                comp, _ = ndimage.label(lab == cid)        # 4- / 6-connected
                want = comp == comp[pt]
                got = h.structure(pt, lv, connected=True)
                np.testing.assert_array_equal(got, want)
                assert size == want.sum()
                np.testing.assert_array_equal(h.structure(pt, lv), lab == cid)
                sizes.append(size)
            assert sizes == sorted(sizes)                  # nested: never shrinks upwards
            assert sizes[-1] == np.prod(shape)             # the root is everything


def test_two_blobs_of_one_cluster_are_two_structures_and_diagonal_is_not_adjacent():
    lab = np.zeros((3, 8, 8), int)
    lab[:, 1:3, 1:3] = 1
    lab[:, 5:7, 5:7] = 1                       # the same cluster, far away
    lab[1, 3, 3] = 1                           # touches the first blob only diagonally
    h = Hierarchy.from_labels(np.stack([lab, lab, np.zeros_like(lab)]))
    m = h.structure((1, 1, 1), 0, connected=True)
    assert m.sum() == 12 and not m[:, 5:7, 5:7].any() and not m[1, 3, 3]
    assert h.structure((1, 1, 1), 0).sum() == 25
    assert h.structure((1, 3, 3), 0, connected=True).sum() == 1
    # the connected click is one piece holding the click
    cm = h.click_mask((1, 1, 1), connected=True)
    assert cm[1, 1, 1] and ndimage.label(cm)[1] == 1


def test_connected_steps_walk_strictly_growing_connected_structures():
    h = _random_hierarchy((30, 30), 4, n0=80, levels=8)
    pt = (15, 15)
    lv = 0
    seen = [h.structure(pt, lv, connected=True).sum()]
    while True:
        nxt = h.step_level(pt, lv, +1, connected=True)
        if nxt == lv:
            break
        m = h.structure(pt, nxt, connected=True)
        assert m[pt] and m.sum() > seen[-1]
        seen.append(int(m.sum()))
        back = h.step_level(pt, nxt, -1, connected=True)
        assert h.structure(pt, back, connected=True).sum() < m.sum()
        lv = nxt
    assert seen[-1] == 900


def test_structure_outside_the_map_is_a_clear_error():
    h = _random_hierarchy((10, 10), 0)
    with pytest.raises(InputError, match="outside"):
        h.structure((10, 0), 0, connected=True)
    with pytest.raises(InputError, match="outside"):
        h.structure_lineage((0, -1))


@pytest.mark.parametrize("shape", [(30, 36), (9, 15, 18)])
def test_the_tools_click_is_the_connected_part_by_default(shape):
    """`click_mask` (the tool's answer) takes the connected part at the level chosen on
    the connected sizes; `connected=False` the whole cluster at the whole-cluster level."""
    from napari_cuts import hierarchy as H

    assert H.CLICK_CONNECTED
    h = _random_hierarchy(shape, seed=3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        pt = tuple(int(rng.integers(0, s)) for s in shape)
        lv = h.click_level(pt, connected=True)
        lab = np.asarray(h.labels(lv))
        comp, _ = ndimage.label(lab == lab[pt])
        np.testing.assert_array_equal(h.click_mask(pt), comp == comp[pt])
        lw = h.click_level(pt, connected=False)
        lab = np.asarray(h.labels(lw))
        np.testing.assert_array_equal(h.click_mask(pt, connected=False), lab == lab[pt])
