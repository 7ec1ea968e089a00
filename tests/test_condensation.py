"""Diffusion condensation: nesting, monotone counts, recovery of synthetic regions,
determinism, cancel, parameters and input checks."""

import numpy as np
import pytest

from napari_cuts.condensation import DEFAULTS, condense
from napari_cuts.errors import Cancelled, InputError
from napari_cuts.hierarchy import Hierarchy


def regions_image(h=48, w=56):
    """Four spatially contiguous regions: two halves of the top, a bottom band, a disk."""
    lab = np.zeros((h, w), dtype=np.int64)
    lab[: h // 2, w // 2:] = 1
    lab[h // 2:, :] = 2
    yy, xx = np.mgrid[:h, :w]
    lab[(yy - h * 0.7) ** 2 + (xx - w * 0.3) ** 2 < (h * 0.18) ** 2] = 3
    return lab


def regions_embedding(seed=0, d=32, noise=0.25, h=48, w=56):
    rng = np.random.default_rng(seed)
    lab = regions_image(h, w)
    centres = rng.normal(size=(lab.max() + 1, d)) * 2.0
    emb = centres[lab] + rng.normal(scale=noise, size=(h, w, d))
    return emb.astype(np.float32), lab


def dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def assert_nested(h: Hierarchy):
    for lv in range(1, h.n_levels):
        fine = h.labels(lv - 1).ravel().astype(np.int64)
        coarse = h.labels(lv).ravel().astype(np.int64)
        parent = np.full(fine.max() + 1, -1)
        parent[fine] = coarse
        assert np.array_equal(parent[fine], coarse), f"level {lv} is not a union of level {lv - 1}"


@pytest.fixture(scope="module")
def synthetic():
    emb, lab = regions_embedding()
    return emb, lab, condense(emb, seed=0)


def test_levels_are_nested_and_counts_never_increase(synthetic):
    emb, lab, h = synthetic
    assert h.n_levels >= 3
    assert h.shape == lab.shape
    assert len(h.n_clusters) == h.n_levels
    assert np.all(np.diff(h.n_clusters) <= 0)
    assert np.all(np.diff(h.n_clusters) < 0), "kept levels should differ in cluster count"
    assert_nested(h)


def test_labels_are_contiguous_per_level_and_unsigned(synthetic):
    _, lab, h = synthetic
    for lv in range(h.n_levels):
        m = h.labels(lv)
        assert m.shape == lab.shape
        assert m.dtype in (np.uint16, np.uint32)
        assert np.array_equal(np.unique(m), np.arange(h.n_clusters[lv]))


def test_coarsest_level_has_one_or_a_few_clusters(synthetic):
    _, _, h = synthetic
    assert h.n_clusters[-1] <= 3
    assert h.n_clusters[0] > h.n_clusters[-1]


def test_some_level_recovers_each_region(synthetic):
    _, lab, h = synthetic
    for r in range(lab.max() + 1):
        truth = lab == r
        best = 0.0
        for lv in range(h.n_levels):
            m = h.labels(lv)
            for c in np.unique(m[truth]):
                best = max(best, dice(m == c, truth))
        assert best >= 0.95, f"region {r}: best Dice {best:.3f}"


def test_one_level_recovers_all_regions_at_once(synthetic):
    _, lab, h = synthetic
    n_regions = lab.max() + 1
    lv = int(np.nonzero(h.n_clusters >= n_regions)[0][-1])
    m = h.labels(lv)
    for r in range(n_regions):
        truth = lab == r
        c = np.bincount(m[truth]).argmax()
        assert dice(m == c, truth) >= 0.9


def test_persistent_labels_every_pixel(synthetic):
    _, lab, h = synthetic
    p = h.persistent()
    assert p.shape == lab.shape
    assert p.dtype in (np.uint16, np.uint32)
    ids = np.unique(p)
    assert np.array_equal(ids, np.arange(ids.size))
    assert ids.size >= 2


def test_deterministic_with_a_seed(synthetic):
    emb, _, h = synthetic
    h2 = condense(emb, seed=0)
    assert np.array_equal(h.n_clusters, h2.n_clusters)
    for lv in range(h.n_levels):
        assert np.array_equal(h.labels(lv), h2.labels(lv))
    assert np.array_equal(h.persistent(), h2.persistent())


def test_cancel_stops_with_cancelled():
    emb, _ = regions_embedding()
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        condense(emb, cancel=cancel)
    assert calls["n"] == 4


def test_progress_is_reported():
    emb, _ = regions_embedding(h=32, w=32)
    seen = []
    condense(emb, progress=lambda d, t, m: seen.append((d, t, m)))
    assert len(seen) >= 3
    assert all(0 <= d <= t for d, t, _ in seen)
    assert all(isinstance(m, str) for _, _, m in seen)


def test_scale_invariance():
    """Parameters are relative to the data's own distances (the unit is the median
    neighbour distance, eps and the merge threshold follow it): a scaled embedding gives
    the same hierarchy.

    Without the unit-length step (normalize=False, which would remove the scale before
    the parameters see it) and without PCA, the only steps before everything is divided
    by the unit are centring and the median distance. Under a power-of-two factor these
    are exact in floating point (each product, sum, square root and median scales by the
    same power of two), so the divided embedding, and hence every level, is bit-identical.
    A factor such as 1000 changes the divided embedding by rounding, and condensation may
    resolve a near-tied merge the other way, so identity is asserted for 1024 only."""
    emb, _ = regions_embedding(h=32, w=40)
    params = dict(normalize=False, n_components=None)
    a = condense(emb, **params)
    b = condense(emb * np.float32(1024.0), **params)
    assert np.array_equal(a.n_clusters, b.n_clusters)
    for lv in range(a.n_levels):
        assert np.array_equal(a.labels(lv), b.labels(lv)), lv


@pytest.mark.parametrize("params", [dict(n_components=None), dict(dense_max=100000),
                                    dict(dense_max=64, premerge_points=0),
                                    dict(premerge_threshold=0)])
def test_paths_give_valid_hierarchies(params):
    emb, lab = regions_embedding(h=32, w=32, d=8)
    h = condense(emb, **params)
    assert np.all(np.diff(h.n_clusters) <= 0)
    assert h.n_clusters[-1] == 1
    assert_nested(h)


def test_max_levels_caps_levels():
    emb, _ = regions_embedding(h=40, w=40)
    h = condense(emb, max_levels=5)
    assert 2 <= h.n_levels <= 6
    assert h.n_clusters[-1] == 1


def test_grey_single_channel_embedding():
    rng = np.random.default_rng(1)
    lab = regions_image(32, 32)
    emb = (lab * 1.0 + rng.normal(scale=0.05, size=lab.shape))[..., None]
    h = condense(emb)
    assert_nested(h)
    assert h.n_clusters[-1] == 1
    # the 4 grey levels are found at some level
    lv = h.level_with(4)
    m = h.labels(lv)
    for r in range(4):
        c = np.bincount(m[lab == r]).argmax()
        assert dice(m == c, lab == r) >= 0.95


def test_normalize_ignores_vector_length():
    """With normalize=True every vector is scaled to unit length first, so each pixel's
    own length does not matter. The factors are powers of two (0.25 to 4), under which
    the unit-length vectors are bit-identical (x 2^k / sqrt(2^2k |x|^2) is exact in
    floating point), so every level is identical; other factors change them by rounding,
    which can flip a near-tied merge."""
    emb, _ = regions_embedding(h=32, w=32)
    scale = 2.0 ** np.random.default_rng(5).integers(-2, 3, size=emb.shape[:2] + (1,))
    a = condense(emb, normalize=True)
    b = condense(emb * scale.astype(np.float32), normalize=True)
    assert np.array_equal(a.n_clusters, b.n_clusters)
    for lv in range(a.n_levels):
        assert np.array_equal(a.labels(lv), b.labels(lv)), lv


def test_constant_embedding_is_one_cluster():
    h = condense(np.ones((20, 20, 4), dtype=np.float32))
    assert h.n_clusters[-1] == 1
    assert h.labels(-1).max() == 0


@pytest.mark.parametrize("bad", [np.zeros((5,)), np.full((8, 8, 3), np.nan), np.array([["a"]])])
def test_bad_embeddings_raise_input_error(bad):
    with pytest.raises(InputError):
        condense(bad)


def test_unknown_parameter_raises():
    with pytest.raises(InputError, match="unknown"):
        condense(np.random.default_rng(0).normal(size=(20, 20, 3)), bandwith=3)
    with pytest.raises(InputError):
        condense(np.random.default_rng(0).normal(size=(20, 20, 3)), eps_growth=1.0)


def test_defaults_are_documented():
    import napari_cuts.condensation as c

    for k in DEFAULTS:
        assert k in c.condense.__doc__ or k in c.__doc__


def test_step_control_keeps_the_middle_scales():
    """16-d noise: without step control one diffusion step merges 1,447 points into one
    cluster; with the default (min_keep 0.5) no level has more than twice the clusters of
    the next, so the hierarchy keeps every scale in between."""
    import numpy as np

    from napari_cuts.condensation import DEFAULTS, condense

    assert DEFAULTS["min_keep"] == 0.5
    emb = np.random.default_rng(0).normal(size=(40, 40, 16)).astype(np.float32)
    off = condense(emb, min_keep=0.0, normalize=False, premerge_points=1600).n_clusters
    on = condense(emb, normalize=False, premerge_points=1600).n_clusters
    assert np.max(off[:-1] / off[1:]) > 100
    assert np.max(on[:-1] / on[1:]) <= 2.0 + 1e-9 and on[-1] == 1 and len(on) >= 10
