"""benchmarks/bench_first_click.py: its stand-in inputs and determinism check (nothing
is timed here; the benchmark itself is run with ``napari-cuts bench first-click``)."""

import hashlib
import inspect
from pathlib import Path

import numpy as np
import pytest

from napari_cuts.cli import _load_bench

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_first_click.py"


@pytest.fixture(scope="module")
def bench():
    return _load_bench(BENCH)           # the loader `napari-cuts bench` uses


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_takes_quick_and_device(bench):
    params = inspect.signature(bench.run).parameters
    assert params["quick"].default is False and params["device"].default == "auto"
    assert set(bench.TARGETS) == {"fundus", "hippocampus", "oblique", "glioma", "mni"}
    assert set(bench.QUICK_ROWS) == {"fundus", "hippocampus"}


def test_oblique_stand_in_grid_and_ground_truth(bench, tmp_path):
    from napari_cuts.io import read_image

    img, seg = bench.make_oblique(tmp_path / "a")
    src, gt = read_image(img), read_image(seg)
    assert src.data.shape == (58, 206, 176) == gt.data.shape
    assert np.allclose(src.spacing, (3.0, 1.0, 1.0)) and np.allclose(gt.spacing, src.spacing)
    assert np.count_nonzero(gt.data) > 1000           # the ventricles survive the resampling
    again, again_seg = bench.make_oblique(tmp_path / "b")
    assert _digest(img) == _digest(again) and _digest(seg) == _digest(again_seg)


def test_glioma_stand_in_grid_and_ground_truth(bench, tmp_path):
    import nibabel as nib

    from napari_cuts.io import read_image

    img, seg = bench.make_glioma(tmp_path / "a")
    assert nib.load(img).shape == (240, 240, 155)
    src, gt = read_image(img), read_image(seg)
    assert src.data.shape == (155, 240, 240) == gt.data.shape
    assert np.allclose(src.spacing, 1.0)
    # the ventricles keep their voxels (the crop along the head's axis keeps the head)
    mni = np.asarray(nib.load(bench.SAMPLE / "mri_volume_seg.nii.gz").dataobj)
    assert np.count_nonzero(gt.data) == np.count_nonzero(mni) > 0
    # a world point of the ventricles is the same in both files (the affine follows the pad)
    k, j, i = np.argwhere(gt.data > 0)[0]
    world = nib.load(seg).affine @ [i, j, k, 1]
    vox = np.linalg.inv(nib.load(bench.SAMPLE / "mri_volume_seg.nii.gz").affine) @ world
    assert mni[tuple(np.rint(vox[:3]).astype(int))] == gt.data[k, j, i]
    again, _ = bench.make_glioma(tmp_path / "b")
    assert _digest(img) == _digest(again)


def test_hippocampus_case_is_the_closest_shape(bench, shared_data):
    import nibabel as nib

    name, img, lab, shape = bench.hippocampus_case(shared_data)
    assert img.is_file() and lab.is_file() and name in img.name
    best = min(sum((a - b) ** 2 for a, b in zip(nib.load(p).shape, bench.HIPPOCAMPUS_SHAPE))
               for p in (shared_data / "msd_hippocampus" / "imagesTr").glob("*.nii.gz"))
    assert sum((a - b) ** 2 for a, b in zip(shape, bench.HIPPOCAMPUS_SHAPE)) == best


def test_differing_keys_finds_a_changed_array(bench, tmp_path):
    labels = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    meta = np.array('{"seed": 0}')
    a, b, c, d = (tmp_path / f"{x}.npz" for x in "abcd")
    np.savez(a, labels=labels, n_clusters=np.array([4, 2]), metadata=meta)
    np.savez(b, labels=labels.copy(), n_clusters=np.array([4, 2]), metadata=meta)
    changed = labels.copy()
    changed[1, 2, 3] += 1
    np.savez(c, labels=changed, n_clusters=np.array([4, 2]), metadata=meta)
    np.savez(d, labels=labels, n_clusters=np.array([4, 2]))
    assert bench.differing_keys(a, b) == []
    assert bench.differing_keys(a, c) == ["labels"]
    assert bench.differing_keys(a, d) == ["metadata"]


def test_a_skipped_input_is_a_row_that_is_not_met(bench, tmp_path):
    row = bench.measure("hippocampus", {"skipped": "no data"}, tmp_path, 1, "auto")
    assert row["skipped"] == "no data" and row["met"] is False
    assert row["target_seconds"] == 15.0 and row["target_mb"] is None
