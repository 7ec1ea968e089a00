"""Hierarchy: lookup-table labels, persistence, save/load, from_labels, upsampling."""

import os

import numpy as np
import pytest

from napari_cuts.condensation import condense
from napari_cuts.errors import InputError, ReadError, WriteError
from napari_cuts.hierarchy import Hierarchy


def toy():
    """6 base regions on an 8 x 12 image; levels 6 -> 4 -> 2 -> 1."""
    finest = np.repeat(np.repeat(np.arange(6).reshape(2, 3), 4, axis=0), 4, axis=1)
    luts = [np.arange(6), np.array([0, 0, 1, 2, 3, 3]), np.array([0, 0, 0, 1, 1, 1]),
            np.zeros(6, dtype=int)]
    return Hierarchy(finest, luts, iterations=[0, 3, 4, 10], iterations_total=12)


@pytest.fixture(scope="module")
def real():
    rng = np.random.default_rng(0)
    lab = np.zeros((40, 44), dtype=int)
    lab[:, 22:] = 1
    lab[25:, :] = 2
    emb = rng.normal(size=(3, 12))[lab] * 2 + rng.normal(scale=0.3, size=(40, 44, 12))
    return condense(emb.astype(np.float32), seed=3)


def test_labels_map_through_luts():
    h = toy()
    assert h.n_levels == 4
    assert h.n_clusters.tolist() == [6, 4, 2, 1]
    assert h.shape == (8, 12)
    l1 = h.labels(1)
    assert l1.dtype == np.uint16
    assert np.array_equal(np.unique(l1), np.arange(4))
    assert l1[0, 0] == l1[0, 4] and l1[0, 8] != l1[0, 0]
    assert np.array_equal(h.labels(-1), np.zeros((8, 12)))
    with pytest.raises(InputError):
        h.labels(4)


def test_constructor_rejects_bad_hierarchies():
    finest = np.arange(4).reshape(2, 2)
    with pytest.raises(InputError, match="increase"):
        Hierarchy(finest, [np.array([0, 0, 1, 1]), np.arange(4)])
    with pytest.raises(InputError, match="union"):
        Hierarchy(finest, [np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])])


def test_segment_lifetimes_and_persistence():
    h = toy()
    life = h.segment_lifetimes()
    # base region 2 stays alone from iteration 0 until the 2-cluster level (4): life 4
    assert life[0][2] == 4 and life[1][1] == 4
    # the 2-cluster level's clusters live from 4 to 10
    assert life[2].tolist() == [6, 6]
    pers = h.segment_persistence()
    # region 2: born with 6 clusters, merged at the 2-cluster level -> ln(6 / 2)
    assert np.isclose(pers[0][2], np.log(3)) and np.isclose(pers[1][1], np.log(3))
    # a 2-cluster level cluster: born with 2 clusters, merged into the root -> ln 2
    assert np.allclose(pers[2], np.log(2))
    areas = h.segment_areas()
    assert np.allclose(areas[0], 1 / 6) and np.allclose(areas[2], 0.5)
    assert all(np.isclose(a.sum(), 1.0) for a in areas)


def _same_partition(a, b):
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


def test_persistent_paints_most_persistent_segments():
    h = toy()
    p = h.persistent()
    assert p.shape == (8, 12)
    assert np.array_equal(np.unique(p), np.arange(np.unique(p).size))
    # reference: every pixel takes, among the segments containing it (root excluded),
    # the one ranked highest by (area in [1 %, 50 %], persistence, coarser level)
    pers, areas = h.segment_persistence(), h.segment_areas()
    roots = h._segment_roots()
    ref = np.zeros(h.shape, dtype=np.int64)
    for y in range(h.shape[0]):
        for x in range(h.shape[1]):
            cands = []
            for lv in range(h.n_levels - 1):
                c = h.labels(lv)[y, x]
                cands.append((bool(0.01 <= areas[lv][c] <= 0.5), round(pers[lv][c], 9), lv,
                              roots[0][lv][c] * 1000 + roots[1][lv][c]))
            ref[y, x] = max(cands)[3]
    assert _same_partition(p, ref)
    # the finest regions here outlive the 4-cluster level: more labels than level 2 has
    assert np.unique(p).size > h.n_clusters[2]


def test_persistent_prefers_a_long_lived_fine_segment():
    finest = np.arange(4).reshape(2, 2)
    # bases 0 and 3 survive alone until the last level; 1 and 2 merge early
    luts = [np.arange(4), np.array([0, 1, 1, 2]), np.array([0, 0, 0, 0])]
    h = Hierarchy(finest, luts, iterations=[0, 1, 9], iterations_total=10)
    # one id per structure (1 and 2 touch only diagonally: two connected pieces)
    p = h.persistent(connected=False)
    assert p[0, 0] != p[0, 1] and p[1, 1] != p[0, 1]
    assert p[0, 1] == p[1, 0]
    assert len(np.unique(h.persistent())) == 4       # by default: one id per piece


def speck_hierarchy():
    """20 x 20 image: a 1-pixel speck (0.25 %) that stays alone until the last merge, a
    left half that forms early and lives long, and a right half built up from 8 blocks."""
    finest = np.zeros((20, 20), dtype=int)
    finest[:, 10:] = 2 + (np.arange(20)[:, None] // 5) * 2 + (np.arange(10)[None, :] // 5)
    finest[:10, :10] = 10                   # left half = base 10 (top) + base 1 (bottom)
    finest[10:, :10] = 1
    finest[4, 4] = 0                        # the speck
    #            speck left-b right blocks 2..9          left-a
    luts = [np.arange(11),
            np.array([0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 1]),   # left forms; right pairs: n = 6
            np.array([0, 1, 2, 2, 2, 2, 3, 3, 3, 3, 1]),   # n = 4
            np.array([0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 1]),   # n = 3
            np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0]),   # speck joins the left: n = 2
            np.zeros(11, dtype=int)]
    return Hierarchy(finest, luts)


def test_persistent_large_structure_wins_over_a_tiny_long_lived_speck():
    h = speck_hierarchy()
    pers, areas = h.segment_persistence(), h.segment_areas()
    left = h.labels(1)[0, 0]
    # the speck outlives the left half in the hierarchy, but covers < 1 % of the image
    assert pers[0][0] > pers[1][left]
    assert areas[0][0] < 0.01 <= areas[1][left] <= 0.5
    p = h.persistent()
    speck = p[4, 4]
    # the speck is not a structure of its own: its pixel joins the structure it merges
    # into, the left half
    assert np.count_nonzero(p == speck) > 1
    assert speck == p[0, 0] == p[19, 0]
    assert np.bincount(p.ravel()).min() >= 0.01 * p.size
    # with no area limit the speck keeps its own label (the rule the default overrides)
    p0 = h.persistent(min_area=0.0)
    assert np.count_nonzero(p0 == p0[4, 4]) == 1


def test_persistent_never_paints_a_near_whole_image_segment():
    h = speck_hierarchy()
    p = h.persistent()
    # the 2-cluster level's halves are 50 % each; no label covers more than half
    assert np.bincount(p.ravel()).max() <= p.size // 2
    assert np.array_equal(np.unique(p), np.arange(np.unique(p).size))


def test_persistent_on_condensed_hierarchy_labels_every_pixel(real):
    p = real.persistent()
    assert p.shape == real.shape
    assert np.unique(p).size >= 2
    assert np.array_equal(np.unique(p), np.arange(np.unique(p).size))


def test_save_load_round_trip(tmp_path, real):
    real.metadata["note"] = "hello"
    path = tmp_path / "h.npz"
    real.save(path)
    back = Hierarchy.load(path)
    assert back.n_levels == real.n_levels
    assert np.array_equal(back.n_clusters, real.n_clusters)
    for lv in range(real.n_levels):
        assert np.array_equal(back.labels(lv), real.labels(lv))
    assert np.array_equal(back.persistent(), real.persistent())
    assert back.metadata["note"] == "hello"
    assert back.metadata["seed"] == 3
    with np.load(path) as z:
        assert z["labels"].shape == (real.n_levels, *real.shape)
        assert z["n_clusters"].tolist() == real.n_clusters.tolist()
    assert [f for f in os.listdir(tmp_path)] == ["h.npz"]


def test_load_accepts_only_labels_and_counts(tmp_path, real):
    path = tmp_path / "minimal.npz"
    stack = real.labels_stack()
    np.savez(path, labels=stack, n_clusters=real.n_clusters)
    back = Hierarchy.load(path)
    for lv in range(real.n_levels):
        assert np.array_equal(back.labels(lv), real.labels(lv))
    assert np.unique(back.persistent()).size >= 2


def test_from_labels_relabels_and_handles_non_nested():
    a = np.array([[5, 5, 9], [9, 7, 7]])
    b = np.array([[1, 1, 1], [2, 2, 2]])   # not nested with a
    h = Hierarchy.from_labels(np.stack([a, b]))
    assert h.n_clusters.tolist() == [3, 2]
    assert np.array_equal(np.unique(h.labels(0)), [0, 1, 2])
    # equal partitions up to renaming
    for lab, ref in ((h.labels(0), a), (h.labels(1), b)):
        pairs = set(zip(lab.ravel().tolist(), ref.ravel().tolist()))
        assert len(pairs) == len(np.unique(ref))


def test_load_corrupt_file_raises_read_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ReadError, match="bad.npz"):
        Hierarchy.load(bad)
    with pytest.raises(ReadError, match="missing.npz"):
        Hierarchy.load(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ReadError, match="other.npz"):
        Hierarchy.load(other)


def test_load_truncated_file_raises_read_error(tmp_path, real):
    path = tmp_path / "t.npz"
    real.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadError, match="t.npz"):
        Hierarchy.load(path)


def test_inconsistent_counts_raise_read_error(tmp_path):
    path = tmp_path / "inc.npz"
    np.savez(path, labels=np.zeros((1, 4, 4), dtype=np.uint16), n_clusters=np.array([3]))
    with pytest.raises(ReadError, match="inc.npz"):
        Hierarchy.load(path)


def test_save_to_missing_folder_raises_write_error(tmp_path, real):
    with pytest.raises(WriteError):
        real.save(tmp_path / "no" / "such" / "dir" / "h.npz")


def test_save_failure_leaves_old_file_untouched(tmp_path, real, monkeypatch):
    path = tmp_path / "h.npz"
    real.save(path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(WriteError):
        real.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["h.npz"]


def test_upsampled_maps_grid_labels_to_full_resolution(real):
    gh, gw = real.shape
    full = (gh * 3 - 2, gw * 3 - 1)
    up = real.upsampled(full, 3)
    assert up.shape == full
    assert np.array_equal(up.n_clusters, real.n_clusters)
    for lv in (0, real.n_levels // 2, real.n_levels - 1):
        small = real.labels(lv)
        big = up.labels(lv)
        expect = np.repeat(np.repeat(small, 3, axis=0), 3, axis=1)[: full[0], : full[1]]
        assert np.array_equal(big, expect)
    assert up.persistent().shape == full
    with pytest.raises(InputError):
        real.upsampled((gh * 5, gw * 5), 3)


def test_level_with(real):
    k = int(real.n_clusters[real.n_levels // 2])
    lv = real.level_with(k)
    assert real.n_clusters[lv] >= k
    assert lv == real.n_levels - 1 or real.n_clusters[lv + 1] < k


def _object_among_specks():
    """64 x 64: a 16 x 16 object (halves 16 x 8) in a background that starts as
    single-pixel specks and coarsens into 4 x 4, 8 x 8, 16 x 16 blocks, quadrants, one.
    The halves are born at the finest level while 3,840 specks merge around them; the
    object forms only once the background is in 8 x 8 blocks."""
    yy, xx = np.mgrid[:64, :64]
    obj = (yy < 16) & (xx < 16)
    half = xx < 8
    maps = []
    for block, merged, joined in [(1, False, False), (4, False, False), (8, False, False),
                                  (8, True, False), (16, True, False), (32, True, True),
                                  (64, True, True)]:
        lab = 10 ** 6 + (yy // block) * (64 // block) + xx // block
        if not joined:
            lab = np.where(obj, np.where(half | merged, 1, 2), lab)
        maps.append(lab)
    return Hierarchy.from_labels(np.stack(maps)), obj, obj & half


def test_persistence_counts_structures_not_specks():
    h, obj, half = _object_among_specks()
    assert h.n_clusters.tolist() == [3842, 242, 62, 61, 16, 4, 1]
    # 1 % of 4,096 pixels: the 128-pixel halves count from the start, the background
    # blocks once they are 8 x 8 (64 pixels)
    assert h.persistence_counts().tolist() == [2, 2, 62, 61, 16, 4, 1]


def test_click_and_persistent_are_not_fooled_by_merging_specks():
    """Counted in all clusters the half would look long-lived (3,842 -> 61 clusters);
    counted in structures it is not (2 -> 61), and the object is (61 -> 4)."""
    h, obj, half = _object_among_specks()
    pt = (10, 3)
    assert np.array_equal(h.click_mask(pt), obj)
    per = np.asarray(h.persistent())
    assert len(np.unique(per[obj])) == 1 and not np.any(per[~obj] == per[obj][0])


def test_load_ignores_arrays_it_does_not_use(tmp_path):
    """A hierarchy file with an extra per-cluster array (files of earlier versions held
    a "reproducibility" score) loads, the extra array ignored."""
    h, obj, half = _object_among_specks()
    h.save(tmp_path / "h.npz")
    with np.load(tmp_path / "h.npz") as z:
        arrays = dict(z)
    arrays["reproducibility"] = np.zeros(int(h.n_clusters.sum()), np.float32)
    np.savez(tmp_path / "old.npz", **arrays)
    back = Hierarchy.load(tmp_path / "old.npz")
    assert np.array_equal(back.labels_stack(), h.labels_stack())
    assert np.array_equal(back.persistent(), h.persistent())
    assert not hasattr(back, "reproducibility")


def test_persistent_gives_each_connected_piece_its_own_id():
    """One structure in two separate parts gets two ids; a piece under a tenth of the
    speck size joins the piece it touches most; connected=False keeps one id."""
    yy, xx = np.mgrid[:40, :40]
    left = (xx < 8) & (yy >= 10) & (yy < 30)          # part 1 of the structure
    right = (xx >= 32) & (yy >= 10) & (yy < 30)       # part 2, far away
    dot = (yy == 2) & (xx == 20)                      # one pixel of it on its own
    obj = left | right | dot
    maps = [np.where(obj, 1, 0), np.zeros((40, 40), int)]
    h = Hierarchy.from_labels(np.stack(maps))
    whole = np.asarray(h.persistent(connected=False))
    assert len(np.unique(whole[obj])) == 1
    p = np.asarray(h.persistent())
    assert p[15, 2] != p[15, 35]                      # two parts, two ids
    assert np.all(p[left] == p[15, 2]) and np.all(p[right] == p[15, 35])
    # the lone pixel (1/1600 < 0.1 % of the image) joined the background it touches
    assert p[2, 20] == p[0, 0] and not np.any(p[~obj] == p[15, 2])
    assert len(np.unique(p)) == 3
