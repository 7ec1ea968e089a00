"""Ranking the persistent map's structures by how well a second condensation finds them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cuts.errors import InputError, ReadError
from napari_cuts.hierarchy import Hierarchy
from napari_cuts.pipeline import STABILITY_RUNS, segment_volume, train_volume_encoder
from tests.test_volume import blob_volume


def _two_squares(shape=(40, 40)):
    """Base regions: a square A (rows 5-14), a square B (rows 25-34), the rest C."""
    base = np.full(shape, 2, dtype=np.int64)
    base[5:15, 5:15] = 0
    base[25:35, 25:35] = 1
    return base


def test_a_structure_found_again_scores_one_and_a_lost_one_less():
    base = _two_squares()
    # run 1: A and B are structures; run 2 finds A again but cuts B in half
    h = Hierarchy.from_labels(np.stack([base, np.where(base == 1, 0, base)]))
    other_base = base.copy()
    other_base[25:30, 25:35] = 3
    o = Hierarchy.from_labels(other_base[None])
    rep = h.reproducibility_against([o], n_sample=10_000)
    a, b = h.labels(0)[10, 10], h.labels(0)[30, 30]
    assert rep[0][a] == pytest.approx(1.0)
    assert rep[0][b] == pytest.approx(0.5, abs=0.1)       # half of B is the best match
    # the background (over half the image) and the two-cluster level are not structures
    assert np.isnan(rep[0][h.labels(0)[0, 0]])
    assert np.all(np.isnan(rep[1]))
    with pytest.raises(InputError, match="same grid"):
        h.reproducibility_against([Hierarchy.from_labels(np.zeros((1, 8, 8), int))])


def test_the_persistent_map_ranks_by_reproducibility_when_scores_are_attached():
    base = np.zeros((40, 40), dtype=np.int64)
    base[:, 20:] = 1
    base[10:20, 5:15] = 2                                   # a small square inside the left half
    # levels: {square, left, right} -> {left+square, right} -> root
    h = Hierarchy.from_labels(np.stack([base, np.where(base == 2, 0, base), np.zeros_like(base)]))
    by_persistence = np.asarray(h.persistent(rank="persistence"))
    assert by_persistence[15, 10] == by_persistence[0, 0]     # persistence merges the square
    with pytest.raises(InputError, match="no reproducibility"):
        h.persistent(rank="reproducibility")
    scores = [np.full(int(n), np.nan) for n in h.n_clusters]
    sq, left = int(h.labels(0)[15, 10]), int(h.labels(0)[0, 0])
    scores[0][sq], scores[0][left] = 0.95, 0.4                 # the square is found again
    h.set_reproducibility(scores)
    by_repro = np.asarray(h.persistent())
    assert by_repro[15, 10] != by_repro[0, 0]                 # the square is its own structure
    assert np.array_equal(np.asarray(h.persistent(rank="persistence")), by_persistence)
    with pytest.raises(InputError, match="one value per cluster"):
        h.set_reproducibility(scores[:1])


def test_reproducibility_survives_save_and_load(tmp_path):
    h = Hierarchy.from_labels(np.stack([_two_squares(), np.where(_two_squares() == 1, 0, _two_squares())]))
    o = Hierarchy.from_labels(_two_squares()[None])
    h.set_reproducibility(h.reproducibility_against([o], n_sample=5_000))
    h.save(tmp_path / "h.npz")
    back = Hierarchy.load(tmp_path / "h.npz")
    for a, b in zip(h.reproducibility, back.reproducibility):
        np.testing.assert_allclose(a, b, rtol=1e-6, equal_nan=True)
    assert np.array_equal(back.persistent(), h.persistent())
    # a file whose scores do not match its levels is refused with a clear message
    z = dict(np.load(tmp_path / "h.npz"))
    z["reproducibility"] = z["reproducibility"][:-1]
    np.savez(tmp_path / "bad.npz", **z)
    with pytest.raises(ReadError, match="reproducibility"):
        Hierarchy.load(tmp_path / "bad.npz")


def test_segment_volume_scores_reproducibility_with_a_second_condensation():
    vol, blob = blob_volume()
    enc = train_volume_encoder(vol, epochs=1, seed=0)
    res = segment_volume(enc, vol, seed=0, stability_runs=2)
    h = res.hierarchy
    assert h.metadata["stability_runs"] == 2 and "stability" in res.seconds
    assert h.reproducibility is not None and len(h.reproducibility) == h.n_levels
    # the blob (one structure, clear in both runs) is found again almost exactly
    pt = (8, 20, 18)
    lv = next(lv for lv in range(h.n_levels) if np.isfinite(h.reproducibility[lv][h.labels(lv)[pt]]))
    assert h.reproducibility[lv][h.labels(lv)[pt]] >= 0.8
    pers = np.asarray(h.persistent())
    assert pers.shape == vol.shape
    assert STABILITY_RUNS == 1
    assert segment_volume(enc, vol, seed=0).hierarchy.reproducibility is None
