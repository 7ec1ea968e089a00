"""The shared pipeline: planning, pooled grids for large images, cancel, provenance."""

import numpy as np
import pytest

from napari_cuts import pipeline
from napari_cuts.errors import Cancelled, InputError


def test_plan_pools_only_large_images():
    small = pipeline.plan((512, 512, 3))
    assert small.pool == 1 and small.grid_shape == (512, 512) and not small.notes
    hrf = pipeline.plan((2336, 3504, 3))
    assert hrf.pool == 6 and hrf.grid_shape[0] * hrf.grid_shape[1] <= pipeline.MAX_POINTS
    assert "grid" in hrf.notes[0]
    assert hrf.estimated_mb < 8000


@pytest.fixture(scope="module")
def tiny_encoder():
    rng = np.random.default_rng(0)
    imgs = [rng.random((48, 48)).astype(np.float32) for _ in range(2)]
    enc, trained = pipeline.get_encoder(imgs, epochs=1, seed=0)
    assert trained
    return enc


def test_pooled_grid_maps_back_to_full_resolution(tiny_encoder):
    yy, xx = np.mgrid[:90, :70]
    img = ((xx > 35).astype(np.float32) + 0.05 * np.random.default_rng(1).random((90, 70)))
    res = pipeline.segment_image(tiny_encoder, img, max_points=30 * 24, seed=0)
    assert res.pool == 3
    assert res.embeddings.shape[:2] == (30, 24)
    h = res.hierarchy
    for lv in (0, h.n_levels - 1):
        assert h.labels(lv).shape == (90, 70)
    assert h.persistent().shape == (90, 70)
    assert h.metadata["pool"] == 3 and h.metadata["seed"] == 0
    assert "napari_cuts_version" in h.metadata
    assert any("grid" in n for n in res.notes)


def test_pooled_grid_labels_follow_an_edge_between_blocks(tiny_encoder):
    # the edge at x = 35 falls inside the 3-pixel block of columns 33-35: nearest blocks
    # would put column 35 on the dark side; the refinement gives it to the bright side
    yy, xx = np.mgrid[:90, :70]
    img = ((xx >= 35).astype(np.float32) + 0.05 * np.random.default_rng(1).random((90, 70)))
    res = pipeline.segment_image(tiny_encoder, img, max_points=30 * 24, seed=0)
    h = res.hierarchy
    assert res.pool == 3 and "refine" in res.seconds
    halves = []
    for lv in range(h.n_levels):
        lab = h.labels(lv)
        left, right = np.unique(lab[:, :35]), np.unique(lab[:, 35:])
        if left.size == 1 and right.size == 1 and left[0] != right[0]:
            halves.append(lv)
    assert halves, "no level separates the two halves at the pixel edge"
    near = h.finest[:, 33:36]
    assert np.all(near[:, 2] != near[:, 1])      # column 35 left its block's region


def test_segment_image_cancel(tiny_encoder):
    img = np.random.default_rng(2).random((48, 48)).astype(np.float32)
    with pytest.raises(Cancelled):
        pipeline.segment_image(tiny_encoder, img, cancel=lambda: True)


def test_2d_features_are_the_unit_embeddings_joined_to_the_image(tiny_encoder):
    """2D embeddings go to condensation as they are (no smoothing): unit length, the
    image channel after them."""
    img = np.full((40, 40), 0.2, np.float32)
    img[10:30, 12:28] = 0.9
    res = pipeline.segment_image(tiny_encoder, img, seed=0)
    emb = res.embeddings
    unit = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    np.testing.assert_allclose(res.features[..., :-1], unit, atol=1e-6)
    assert "guided_smoothing" not in res.hierarchy.metadata and "smooth" not in res.seconds


def test_segment_image_rejects_bad_input(tiny_encoder):
    with pytest.raises(InputError, match="constant"):
        pipeline.segment_image(tiny_encoder, np.zeros((40, 40)))


def test_volume_helpers():
    vol = np.zeros((10, 20, 20))
    assert len(pipeline.volume_slices(vol)) == 10
    sub = pipeline.training_subset(list(range(100)), max_images=5)
    assert sub[0] == 0 and sub[-1] == 99 and len(sub) == 5
    with pytest.raises(InputError):
        pipeline.volume_slices(np.zeros((5, 5)))


def test_plan_refuses_what_does_not_fit(monkeypatch):
    from napari_cuts.errors import ResourceError

    monkeypatch.setattr(pipeline, "available_memory_mb", lambda: 500.0)
    with pytest.raises(ResourceError, match="max-points"):
        pipeline.check_fits(pipeline.plan((2336, 3504, 3)))
    pipeline.check_fits(pipeline.plan((64, 64)))


def test_block_mean_matches_pooled_grid():
    x = np.random.default_rng(0).random((7, 5, 2)).astype(np.float32)
    m = pipeline.block_mean(x, 3)
    assert m.shape == (3, 2, 2)
    np.testing.assert_allclose(m[0, 0], x[:3, :3].mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(m[2, 1], x[6:, 3:].mean(axis=(0, 1)), rtol=1e-6)


def test_clustering_features_join_unit_embeddings_and_image():
    rng = np.random.default_rng(1)
    emb, img = rng.random((4, 4, 8)) * 5, rng.random((4, 4, 1))
    f = pipeline.clustering_features(emb, img, weight=8.0)
    assert f.shape == (4, 4, 9) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f[..., :8], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(f[..., 8], 8.0 * img[..., 0], rtol=1e-5)
