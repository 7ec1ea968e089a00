"""Warm start: the packaged generic weights, fine-tuning from them, their origin in the
metadata, and what happens for another channel count. No timed tests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_cuts import pipeline
from napari_cuts.encoder import (
    PACKAGED_WEIGHTS,
    WEIGHTS_DIR,
    file_sha256,
    load_encoder,
    packaged_weights,
    train_encoder,
)
from napari_cuts.errors import WeightsError

TINY = dict(crop_size=32, batch_size=2, anchors=32)
RGB = packaged_weights(3)
needs_rgb = pytest.mark.skipif(RGB is None, reason="no packaged warm_rgb.pt")


def _img(seed=0, size=48, channels=3):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 0.5 + 0.5 * np.sin(xx / 2.0) * (xx < size // 2) + rng.normal(0, 0.05, (size, size))
    if not channels:
        return base.astype(np.float32)
    return np.stack([base * (0.6 + 0.2 * c) for c in range(channels)], -1).astype(np.float32)


def _net_params(enc):
    return {k: v.detach().cpu().clone() for k, v in enc.net.state_dict().items()}


@needs_rgb
def test_packaged_weights_load_and_match_channel_count():
    for channels, name in PACKAGED_WEIGHTS.items():
        path = packaged_weights(channels)
        if path is None:
            continue
        assert path == WEIGHTS_DIR / name
        enc = load_encoder(path, device="cpu")
        assert enc.in_channels == channels
        assert enc.metadata.get("context_slices", 0) == 0
        assert "warm_start_source" in enc.metadata           # data origin recorded
        origin = json.dumps(enc.metadata["warm_start_source"]["data"])
        assert "data/retina" not in origin and "image_with_GA" not in origin  # never the dev set
        z = enc.net(torch.zeros(1, channels, 24, 24))
        assert z.shape == (1, 128, 24, 24)
    assert (WEIGHTS_DIR / "README.md").is_file()
    assert packaged_weights(5) is None


@needs_rgb
def test_fine_tune_changes_weights_and_records_origin():
    start = load_encoder(RGB, device="cpu")
    enc = train_encoder([_img(0), _img(1)], epochs=1, seed=0, device="cpu", init=RGB, **TINY)
    before, after = _net_params(start), _net_params(enc)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # started from the packaged weights, not from a random init: still close to them
    w0 = before["layers.0.weight"]
    rand = train_encoder([_img(0)], epochs=0.01, seed=0, device="cpu", **TINY)
    assert (after["layers.0.weight"] - w0).norm() < (_net_params(rand)["layers.0.weight"] - w0).norm()
    ws = enc.metadata["warm_start"]
    assert ws["file"] == RGB.name and ws["packaged"] is True
    assert ws["sha256"] == file_sha256(RGB)
    assert ws["head"] is True
    json.dumps(enc.metadata)                                   # still JSON


def test_scratch_records_no_warm_start():
    enc = train_encoder([_img(0)], epochs=0.5, seed=0, device="cpu", **TINY)
    assert enc.metadata["warm_start"] is None


def test_init_from_encoder_object_and_saved_file(tmp_path):
    base = train_encoder([_img(0)], epochs=0.5, seed=0, device="cpu", **TINY)
    enc = train_encoder([_img(1)], epochs=0.5, seed=1, device="cpu", init=base, **TINY)
    assert enc.metadata["warm_start"]["file"] is None
    base.save(tmp_path / "w.pt")
    enc = train_encoder([_img(1)], epochs=0.5, seed=1, device="cpu", init=tmp_path / "w.pt", **TINY)
    assert enc.metadata["warm_start"]["sha256"] == file_sha256(tmp_path / "w.pt")
    assert enc.metadata["warm_start"]["packaged"] is False


def test_explicit_init_with_other_channel_count_raises(tmp_path):
    grey = train_encoder([_img(0, channels=0)], epochs=0.5, seed=0, device="cpu", **TINY)
    with pytest.raises(WeightsError, match="1-channel.*these have 3.*--no-warm-start"):
        train_encoder([_img(0)], epochs=0.5, device="cpu", init=grey, **TINY)


def test_dilations_follow_the_start_point_or_must_match():
    dil = train_encoder([_img(0)], epochs=0.5, device="cpu", dilations=(1, 2, 2, 1), **TINY)
    enc = train_encoder([_img(1)], epochs=0.5, device="cpu", init=dil, **TINY)
    assert enc.metadata["params"]["dilations"] == [1, 2, 2, 1]
    with pytest.raises(WeightsError, match="dilations"):
        train_encoder([_img(1)], epochs=0.5, device="cpu", init=dil, dilations=(1, 1, 1, 1), **TINY)


def test_get_encoder_policy(monkeypatch):
    """Default (no budget) or a budget in steps: packaged weights for the channel count
    and the step rule's warm budget; no packaged file for that count: scratch at the
    scratch budget; a budget in seconds or epochs, or warm_start=False: scratch."""
    from napari_cuts.budget import steps_for

    calls = []

    def fake_train(images, **kw):
        calls.append(kw)
        return train_encoder(images, epochs=0.2, seed=0, device="cpu",
                             init=kw["init"], **TINY)

    monkeypatch.setattr("napari_cuts.encoder.train_encoder", fake_train)
    rgb, grey = [_img(0)], [_img(0, channels=0)]
    four = [np.concatenate([_img(0), _img(1)[..., :1]], -1)]
    shape = rgb[0].shape

    pipeline.get_encoder(rgb, device="cpu")
    assert calls[-1]["init"] == packaged_weights(3)
    if packaged_weights(3) is not None:
        assert calls[-1]["steps"] == steps_for([shape], ndim=2, warm=True)
    pipeline.get_encoder(four, device="cpu")                   # no 4-channel weights
    assert calls[-1]["init"] is None
    assert calls[-1]["steps"] == steps_for([four[0].shape], ndim=2, warm=False)
    pipeline.get_encoder(rgb, device="cpu", warm_start=False)
    assert calls[-1]["init"] is None and calls[-1]["steps"] == steps_for([shape], ndim=2, warm=False)
    pipeline.get_encoder(rgb, device="cpu", steps=7)
    assert calls[-1]["init"] == packaged_weights(3) and calls[-1]["steps"] == 7
    pipeline.get_encoder(rgb, device="cpu", seconds=5)
    assert calls[-1]["init"] is None and calls[-1]["seconds"] == 5 and calls[-1]["steps"] is None
    pipeline.get_encoder(rgb, device="cpu", seconds=5, warm_start=True)
    assert calls[-1]["init"] == packaged_weights(3) and calls[-1]["seconds"] == 5
    pipeline.get_encoder(grey, device="cpu")
    assert calls[-1]["init"] == packaged_weights(1)


def test_packaged_weights_are_package_data():
    """pyproject.toml installs weights/*.pt and the README beside them."""
    import tomllib
    from pathlib import Path

    cfg = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    data = cfg["tool"]["setuptools"]["package-data"]["napari_cuts"]
    assert "weights/*.pt" in data and "weights/README.md" in data


@needs_rgb
def test_cli_segment_default_warm_start_and_no_warm_start(tmp_path, monkeypatch):
    """``segment`` with a budget in steps (as by default) fine-tunes the packaged
    weights and records them in run.json; --no-warm-start and a budget in seconds train
    from scratch."""
    import imageio.v3 as iio

    from napari_cuts.cli import main

    img = tmp_path / "rgb.png"
    iio.imwrite(img, (np.clip(_img(0, 64), 0, 1) * 255).astype(np.uint8))
    assert main(["segment", str(img), "--out", str(tmp_path / "a"), "--steps", "3"]) == 0
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["warm_start"]["file"] == RGB.name
    assert run["warm_start"]["sha256"] == file_sha256(RGB)
    saved = load_encoder(tmp_path / "a" / "encoder.pt", device="cpu")
    assert saved.metadata["warm_start"]["sha256"] == file_sha256(RGB)
    assert main(["segment", str(img), "--out", str(tmp_path / "b"), "--steps", "3",
                 "--no-warm-start"]) == 0
    assert json.loads((tmp_path / "b" / "run.json").read_text())["warm_start"] is None
    assert main(["segment", str(img), "--out", str(tmp_path / "c"), "--seconds", "1"]) == 0
    assert json.loads((tmp_path / "c" / "run.json").read_text())["warm_start"] is None


@needs_rgb
def test_evaluate_warm_start_records_origin(tmp_path):
    """``evaluate --warm-start`` fine-tunes every seed's encoder from the packaged weights
    and says so in results.json; without it, from scratch."""
    import imageio.v3 as iio

    from napari_cuts.cli import main

    root = tmp_path / "retina_like"
    (root / "image_with_GA").mkdir(parents=True)
    (root / "label_with_GA").mkdir()
    for n in (1, 2):
        img = _img(n, 48)
        iio.imwrite(root / "image_with_GA" / f"image{n}.png",
                    (np.clip(img, 0, 1) * 255).astype(np.uint8))
        mask = np.zeros((48, 48), np.uint8)
        mask[:, :24] = 1                                        # the striped half
        np.save(root / "label_with_GA" / f"label{n}.npy", mask)
    common = ["evaluate", "--data", str(root), "--seeds", "1", "--epochs", "1",
              "--methods", "cuts_best"]
    assert main([*common, "--out", str(tmp_path / "w"), "--warm-start"]) == 0
    res = json.loads((tmp_path / "w" / "results.json").read_text())
    assert res["warm_start"]["sha256"] == file_sha256(RGB)
    assert main([*common, "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "results.json").read_text())["warm_start"] is None
