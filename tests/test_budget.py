"""The default training budget (napari_cuts.budget): steps that follow the data, an
early stop once the loss has settled, and the same answer from the same seed."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_cuts import budget
from napari_cuts.encoder import train_encoder
from napari_cuts.errors import InputError

TINY = dict(crop_size=24, batch_size=2, anchors=16)


def test_a_smaller_input_gets_a_smaller_budget():
    crop = budget.default_steps(35 * 50 * 40)
    fundus = budget.default_steps(512 * 512, 3)
    brain = budget.default_steps(189 * 233 * 197)
    assert crop < brain and crop < fundus
    # more channels, more steps; a warm start, fewer, and they do not grow with the size
    assert budget.default_steps(512 * 512, 3) > budget.default_steps(512 * 512, 1)
    assert budget.default_steps(512 * 512, 3, warm=True) > budget.default_steps(512 * 512, warm=True)
    for v in (128 * 128, 512 * 512, 189 * 233 * 197):
        assert budget.default_steps(v, warm=True) < budget.default_steps(v)
    assert budget.default_steps(128 * 128, warm=True) == budget.default_steps(10**7, warm=True)
    # always within the bounds
    assert budget.default_steps(1) == budget.MIN_STEPS
    assert budget.default_steps(10**12) == budget.MAX_STEPS
    assert budget.steps_for([(35, 50, 40)], ndim=3, warm=False) == budget.default_steps(70000)
    assert budget.steps_for([(64, 64, 3), (32, 32, 3)], ndim=2, warm=True) == \
        budget.default_steps(64 * 64 + 32 * 32, 3, warm=True)


def test_settled_needs_three_windows_and_a_flat_loss():
    w = budget.SETTLE_WINDOW
    falling = list(np.linspace(1.0, 0.1, 3 * w))
    assert not budget.settled(falling)
    flat = [1.0] * w + [0.5] * w + [0.499] * w
    assert budget.settled(flat)
    assert not budget.settled(flat[:-1])          # only at whole windows
    assert not budget.settled([0.5] * (2 * w))     # not before the third window


def _texture(seed=0, n=48):
    rng = np.random.default_rng(seed)
    img = rng.normal(0.5, 0.05, (n, n, 1)).astype(np.float32)
    img[8:30, 10:34] += 0.4
    return img


def test_a_settled_loss_stops_training(monkeypatch):
    """With the loss reported flat, training ends at the first check (three windows),
    long before the budget; without ``settle`` it runs the whole budget."""
    monkeypatch.setattr(budget, "settled", lambda losses: len(losses) >= 3)
    enc = train_encoder([_texture()], steps=50, seed=0, device="cpu", **TINY)
    assert enc.metadata["steps"] == 3 and enc.metadata["stopped"] == "settled"
    assert enc.metadata["budget_steps"] == 50
    enc = train_encoder([_texture()], steps=5, settle=False, seed=0, device="cpu", **TINY)
    assert enc.metadata["steps"] == 5 and enc.metadata["stopped"] == "steps"


def test_steps_must_be_a_whole_positive_number():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError, match="steps"):
            train_encoder([_texture()], steps=bad, device="cpu", **TINY)


def _tiny_volume(path):
    rng = np.random.default_rng(3)
    vol = rng.normal(100, 6, (28, 28, 18)).astype(np.float32)   # nibabel order (i, j, k)
    vol[8:20, 6:18, 4:12] += 60
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    return path


def test_two_default_runs_give_identical_hierarchies_and_steps_replays(tmp_path):
    """Default settings twice on a tiny volume: equal arrays under every key of
    hierarchy.npz. run.json records the steps; --steps with them replays the run."""
    from napari_cuts.cli import main

    src = _tiny_volume(tmp_path / "v.nii.gz")
    runs = []
    for name in ("a", "b"):
        assert main(["segment", str(src), "--out", str(tmp_path / name)]) == 0
        runs.append(json.loads((tmp_path / name / "run.json").read_text()))
    assert runs[0]["steps"] == runs[1]["steps"] >= 1
    a, b = (np.load(tmp_path / n / "hierarchy.npz") for n in ("a", "b"))
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key
    budget_steps = runs[0]["steps"]
    assert main(["segment", str(src), "--out", str(tmp_path / "c"),
                 "--steps", str(budget_steps)]) == 0
    c = np.load(tmp_path / "c" / "hierarchy.npz")
    assert json.loads((tmp_path / "c" / "run.json").read_text())["steps"] == budget_steps
    assert np.array_equal(a["labels"], c["labels"])


def test_fine_tuning_a_2d_image_draws_two_crops_a_step():
    """Fine-tuning the packaged RGB weights draws WARM_CROPS_PER_STEP crops a step
    (half the fundus's time at the same click Dice, decision 0013); from scratch the
    default stays."""
    from napari_cuts.encoder_network import DEFAULTS
    from napari_cuts.pipeline import WARM_CROPS_PER_STEP, get_encoder

    img = np.random.default_rng(0).random((48, 48, 3)).astype(np.float32)
    warm, _ = get_encoder([img], steps=2, device="cpu")
    cold, _ = get_encoder([img], steps=2, device="cpu", warm_start=False)
    assert warm.metadata["warm_start"] is not None and cold.metadata["warm_start"] is None
    assert warm.metadata["params"]["batch_size"] == WARM_CROPS_PER_STEP == 2
    assert cold.metadata["params"]["batch_size"] == DEFAULTS["batch_size"] == 8
