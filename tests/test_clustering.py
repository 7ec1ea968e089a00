"""Spectral k-means: k labels, determinism, recovery of synthetic regions, hooks."""

import numpy as np
import pytest

from napari_cuts.clustering import spectral_kmeans
from napari_cuts.errors import Cancelled, InputError


def blobs(h=40, w=48, d=16, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), dtype=int)
    lab[:, w // 2:] = 1
    lab[h // 2:, : w // 3] = 2
    emb = rng.normal(size=(3, d))[lab] * 2 + rng.normal(scale=noise, size=(h, w, d))
    return emb.astype(np.float32), lab


def test_gives_k_labels():
    emb, _ = blobs()
    lab = spectral_kmeans(emb, k=10)
    assert lab.shape == emb.shape[:2]
    assert lab.dtype == np.uint16
    assert np.array_equal(np.unique(lab), np.arange(10))


def test_deterministic_with_a_seed():
    emb, _ = blobs()
    a = spectral_kmeans(emb, k=6, seed=1)
    b = spectral_kmeans(emb, k=6, seed=1)
    assert np.array_equal(a, b)


def test_k3_recovers_the_regions():
    emb, truth = blobs()
    lab = spectral_kmeans(emb, k=3, seed=0)
    for r in range(3):
        c = np.bincount(lab[truth == r]).argmax()
        m, t = lab == c, truth == r
        assert 2 * (m & t).sum() / (m.sum() + t.sum()) >= 0.95


def test_fewer_distinct_points_than_k():
    emb = np.zeros((20, 20, 3), dtype=np.float32)
    emb[:, 10:] = 1.0
    lab = spectral_kmeans(emb, k=10)
    assert np.unique(lab).size == 2


def test_progress_and_cancel():
    emb, _ = blobs(h=24, w=24)
    seen = []
    spectral_kmeans(emb, k=4, progress=lambda d, t, m: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled):
        spectral_kmeans(emb, k=4, cancel=cancel)


def test_bad_input():
    with pytest.raises(InputError):
        spectral_kmeans(np.full((10, 10, 2), np.inf))
    with pytest.raises(InputError):
        spectral_kmeans(np.zeros((10, 10, 2)), k=0)
    with pytest.raises(InputError):
        spectral_kmeans(np.random.default_rng(0).normal(size=(10, 10, 2)), method="nope")


def test_phate_reference_method_runs():
    pytest.importorskip("phate")
    emb, truth = blobs(h=24, w=24, d=8)
    lab = spectral_kmeans(emb, k=3, method="phate")
    assert lab.shape == truth.shape and np.unique(lab).size == 3
