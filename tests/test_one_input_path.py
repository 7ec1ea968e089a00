"""One input path: `napari-cuts segment` checks, plans and scales its input once.

The job checks the input at its entrance (check_image / check_volume), plans it and
checks the plan against the free memory once; every later stage takes the checked,
prepared data. These tests count the calls of those functions (wrapped wherever a
napari_cuts module holds them) on a tiny 2D image, a tiny volume and two slices of it
(--slices), each run through the real command with one training step.
"""

from __future__ import annotations

import collections
import functools
import importlib
import sys

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest

from napari_cuts.cli import main

COUNTED = {
    "napari_cuts.images": ["check_image", "as_image_list"],
    "napari_cuts.volume": ["check_volume", "volume_plan", "normalise_volume", "block_reduce"],
    "napari_cuts.pipeline": ["plan", "check_fits"],
    "napari_cuts.pipeline_volume": ["check_fits_volume", "volume_grid"],
    "napari_cuts.encoder_training": ["_norm_values"],
    "napari_cuts.encoder_embedding": ["_normalise", "normalised_image"],
}


@pytest.fixture
def calls(monkeypatch):
    """A Counter of calls by "module.function"; ``calls.by_caller`` counts
    normalise_volume by the module that called it."""
    for name in list(COUNTED) + ["napari_cuts.encoder", "napari_cuts.prompts", "napari_cuts.io",
                                 "napari_cuts.condensation"]:
        importlib.import_module(name)
    counts = collections.Counter()
    by_caller = collections.Counter()
    for modname, names in COUNTED.items():
        mod = sys.modules[modname]
        for n in names:
            f = getattr(mod, n)
            key = f"{modname.split('.')[-1]}.{n}"

            def wrapper(*a, _f=f, _key=key, **k):
                counts[_key] += 1
                if _key == "volume.normalise_volume":
                    by_caller[sys._getframe(1).f_globals.get("__name__")] += 1
                return _f(*a, **k)

            wrapped = functools.wraps(f)(wrapper)
            for m in list(sys.modules.values()):
                if getattr(m, "__name__", "").startswith("napari_cuts") and \
                        getattr(m, n, None) is f:
                    monkeypatch.setattr(m, n, wrapped)
    counts.by_caller = by_caller
    return counts


def _volume_file(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(100, 5, (24, 24, 8)).astype(np.float32)      # read as 8 x 24 x 24
    v[4:18, 4:18, 2:6] += 50
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(v, np.eye(4)), str(path))
    return path


def test_2d_input_is_checked_planned_and_scaled_once(tmp_path, calls):
    rng = np.random.default_rng(0)
    img = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
    img[10:30, 10:30] //= 3
    path = tmp_path / "img.png"
    iio.imwrite(path, img)
    calls.clear()
    assert main(["segment", str(path), "--out", str(tmp_path / "out"), "--steps", "1"]) == 0
    assert calls["images.check_image"] == 1
    assert calls["images.as_image_list"] == 0
    assert calls["pipeline.plan"] == 1
    assert calls["pipeline.check_fits"] == 1
    assert calls["encoder_training._norm_values"] == 1
    # one scaling of the training stack (the image) when the encoder is trained, one of
    # the image the encoder embeds; the embedding and the image channels condensation
    # sees share that one (normalised_image is not called again)
    assert calls["encoder_embedding._normalise"] <= 2
    assert calls["encoder_embedding.normalised_image"] == 0
    # the pipeline scales no volume; prompts.npz scales the image for the prompt solver
    assert calls.by_caller["napari_cuts.prompts"] <= 1
    assert sum(calls.by_caller.values()) - calls.by_caller["napari_cuts.prompts"] == 0


@pytest.mark.parametrize("max_points", [None, "4096"])
def test_volume_is_checked_planned_gridded_and_scaled_once(tmp_path, calls, max_points):
    path = _volume_file(tmp_path)
    z = 8
    calls.clear()
    args = ["segment", str(path), "--out", str(tmp_path / "out"), "--steps", "1"]
    if max_points:      # pooled: a 4 x 24 x 24 grid, labels mapped back to every voxel
        args += ["--max-points", max_points]
    assert main(args) == 0
    assert calls["volume.check_volume"] == 1
    assert calls["images.check_image"] == 0            # the volume check covers every slice
    assert calls["images.as_image_list"] == 0
    assert calls["volume.volume_plan"] == 1
    assert calls["pipeline_volume.check_fits_volume"] == 1
    assert calls["pipeline_volume.volume_grid"] <= 1
    assert calls["volume.block_reduce"] == 1           # the working grid, made once
    # the per-volume percentile scaling once in the pipeline (the grid and the mapping
    # back share it); prompts.npz scales the volume for the prompt solver
    pipeline_scalings = sum(calls.by_caller.values()) - calls.by_caller["napari_cuts.prompts"]
    assert pipeline_scalings == 1
    assert calls.by_caller["napari_cuts.prompts"] <= 1
    assert calls["encoder_training._norm_values"] == 1
    # each grid slice scaled once for the embedding and the image channels, plus once as
    # a training slice (at most every grid slice)
    grid_z = z if max_points is None else z // 2
    assert calls["encoder_embedding._normalise"] <= 2 * grid_z
    assert calls["encoder_embedding.normalised_image"] == 0
    with np.load(tmp_path / "out" / "hierarchy.npz") as h:
        assert h["labels"].shape[1:] == (z, 24, 24)


def test_slices_are_checked_once_each(tmp_path, calls):
    path = _volume_file(tmp_path)
    calls.clear()
    assert main(["segment", str(path), "--out", str(tmp_path / "out"), "--steps", "1",
                 "--slices", "3", "4"]) == 0
    assert calls["images.check_image"] == 2            # one per slice
    assert calls["images.as_image_list"] == 0
    assert calls["pipeline.plan"] == 1                 # every slice has the same size
    assert calls["pipeline.check_fits"] == 1
    assert calls["volume.check_volume"] == 0
    assert calls["encoder_training._norm_values"] == 1
    assert calls["encoder_embedding._normalise"] <= 4   # training stack + embedding, per slice
    assert calls["encoder_embedding.normalised_image"] == 0
    assert (tmp_path / "out" / "slices" / "z0003" / "hierarchy.npz").is_file()
