"""Tests of the CUTS encoder: shapes, determinism, save/load, errors, losses, tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cuts.encoder import (
    Encoder,
    _patch_ssim,
    embed,
    load_encoder,
    resolve_device,
    train_encoder,
)
from napari_cuts.errors import Cancelled, InputError, WeightsError, WriteError

# tiny training settings so every run takes a fraction of a second
TINY = dict(crop_size=32, batch_size=2, anchors=32)


def _textured(seed: int = 0, size: int = 48, channels: int = 0) -> np.ndarray:
    """Left half vertical stripes, right half smooth noise blobs; (H, W) or (H, W, C)."""
    rng = np.random.default_rng(seed)
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = 0.5 + 0.5 * np.sin(xx * 2 * np.pi / 4.0)
    blobs = rng.random((h // 4 + 1, w // 4 + 1)).repeat(4, 0).repeat(4, 1)[:h, :w] * 0.4 + 0.1
    img = np.where(xx < w // 2, stripes, blobs) + rng.normal(0, 0.02, (h, w))
    if channels:
        img = np.stack([img * (0.5 + 0.5 * c / channels) for c in range(channels)], -1)
    return img.astype(np.float32)


@pytest.fixture(scope="module")
def rgb_encoder() -> Encoder:
    ims = np.stack([_textured(s, 40, 3) for s in range(3)])
    return train_encoder(ims, epochs=2, seed=0, device="cpu", **TINY)


@pytest.fixture(scope="module")
def grey_encoder() -> Encoder:
    ims = np.stack([_textured(s, 40) for s in range(3)])
    return train_encoder(ims, epochs=2, seed=0, device="cpu", **TINY)


# ------------------------------------------------------------------ shapes, dtypes


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [0, 3])
def test_shapes_and_dtypes(dtype, channels):
    base = np.stack([_textured(s, 36, channels) for s in range(2)])
    if np.issubdtype(dtype, np.integer):
        ims = (base / base.max() * np.iinfo(dtype).max * 0.9).astype(dtype)
    else:
        ims = base.astype(dtype)
    enc = train_encoder(ims, epochs=1, seed=1, device="cpu", **TINY)
    assert enc.in_channels == (channels or 1)
    assert enc.embedding_dim == 128
    z = embed(enc, ims[0])
    assert z.shape == (36, 36, 128)
    assert z.dtype == np.float32
    assert np.all(np.isfinite(z))
    lo, hi = enc.metadata["norm_low"], enc.metadata["norm_high"]
    assert len(lo) == len(hi) == (channels or 1)
    assert all(h > l for l, h in zip(lo, hi))


def test_images_of_different_sizes_and_list_input():
    ims = [_textured(0, 40, 3), _textured(1, 56, 3)[:, :50]]
    enc = train_encoder(ims, epochs=1, seed=0, device="cpu", **TINY)
    assert embed(enc, ims[1]).shape == (56, 50, 128)


def test_metadata_is_json_and_complete(rgb_encoder):
    import json

    meta = json.loads(json.dumps(rgb_encoder.metadata))
    for key in ("in_channels", "embedding_dim", "norm_low", "norm_high", "percentiles",
                "version", "seed", "params", "history"):
        assert key in meta
    assert meta["params"]["crop_size"] == TINY["crop_size"]


# ------------------------------------------------------------------- determinism


def _weights(enc: Encoder) -> dict:
    return {k: v.clone() for k, v in enc.net.state_dict().items()}


def test_same_seed_same_weights_different_seed_different():
    ims = np.stack([_textured(s, 36, 3) for s in range(2)])
    a = _weights(train_encoder(ims, epochs=1, seed=3, device="cpu", **TINY))
    b = _weights(train_encoder(ims, epochs=1, seed=3, device="cpu", **TINY))
    c = _weights(train_encoder(ims, epochs=1, seed=4, device="cpu", **TINY))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


# --------------------------------------------------------------------- save/load


def test_save_load_identical_embeddings(rgb_encoder, tmp_path):
    img = _textured(7, 44, 3)
    path = tmp_path / "enc.pt"
    rgb_encoder.save(path)
    loaded = load_encoder(path, device="cpu")
    assert loaded.in_channels == 3
    assert loaded.metadata == rgb_encoder.metadata
    np.testing.assert_array_equal(embed(loaded, img), embed(rgb_encoder, img))
    # plain torch can read it without unpickling arbitrary objects
    payload = torch.load(path, weights_only=True)
    assert isinstance(payload["metadata"], str)
    # no temporary files left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["enc.pt"]


def test_save_unwritable_raises_write_error(rgb_encoder, tmp_path):
    with pytest.raises(WriteError, match="missing_dir"):
        rgb_encoder.save(tmp_path / "missing_dir" / "enc.pt")


def test_wrong_channel_count_gives_clear_error(grey_encoder, rgb_encoder, tmp_path):
    path = tmp_path / "grey.pt"
    grey_encoder.save(path)
    loaded = load_encoder(path, device="cpu")
    with pytest.raises(WeightsError) as info:
        embed(loaded, _textured(0, 40, 3))
    msg = str(info.value)
    assert "1-channel" in msg and "3 channels" in msg and "train a new encoder" in msg
    with pytest.raises(WeightsError, match=r"3-channel \(RGB\).*1 channel;"):
        embed(rgb_encoder, _textured(0, 40))


def test_corrupt_truncated_and_foreign_files(rgb_encoder, tmp_path):
    good = tmp_path / "good.pt"
    rgb_encoder.save(good)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")

    for path in (truncated, garbage, text, foreign, empty, tmp_path / "missing.pt"):
        with pytest.raises(WeightsError) as info:
            load_encoder(path, device="cpu")
        assert path.name in str(info.value)


def test_weights_not_matching_metadata(rgb_encoder, tmp_path):
    import json

    path = tmp_path / "mismatch.pt"
    payload = {"format": "napari-cuts-encoder", "format_version": 1,
               "metadata": json.dumps({**rgb_encoder.metadata, "in_channels": 1}),
               "state": rgb_encoder._state()}
    torch.save(payload, path)
    with pytest.raises(WeightsError, match="mismatch.pt"):
        load_encoder(path, device="cpu")


# -------------------------------------------------------------------------- losses


def test_short_training_lowers_both_losses():
    ims = np.stack([_textured(s, 48, 3) for s in range(4)])
    enc = train_encoder(ims, epochs=10, seed=0, device="cpu", crop_size=32, batch_size=2,
                        anchors=64, lam=0.1)
    hist = enc.metadata["history"]
    n = len(hist["loss"])
    # every step of the 10 epochs recorded (no early stop with an epoch budget), enough
    # for a mean over a sixth of them at each end
    assert n == 10 * enc.metadata["steps_per_epoch"] and n >= 40
    k = max(3, n // 6)
    for term in ("contrastive", "reconstruction"):
        first = float(np.mean(hist[term][:k]))
        last = float(np.mean(hist[term][-k:]))
        assert last < first, (term, first, last)


def test_same_region_closer_than_other_region():
    img = _textured(0, 64, 3)
    enc = train_encoder([img, _textured(1, 64, 3)], epochs=20, seed=0, device="cpu",
                        crop_size=32, batch_size=4, anchors=64)
    z = embed(enc, img)
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    left = z[8:-8, 6:24].reshape(-1, 128)   # stripes, away from the boundary
    right = z[8:-8, 40:58].reshape(-1, 128)  # blobs
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(left), (2, 2000))
    within = 0.5 * (np.linalg.norm(left[i] - left[j], axis=1).mean()
                    + np.linalg.norm(right[i] - right[j], axis=1).mean())
    between = np.linalg.norm(left[i] - right[j], axis=1).mean()
    assert within < between


def test_patch_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = rng.random((6, 5, 5, 3)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    b[0] = a[0]
    ours = _patch_ssim(torch.from_numpy(a.reshape(6, 25, 3).transpose(0, 2, 1)),
                       torch.from_numpy(b.reshape(6, 25, 3).transpose(0, 2, 1))).numpy()
    ref = [structural_similarity(a[i], b[i], win_size=5, data_range=1.0, channel_axis=-1)
           for i in range(6)]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)
    assert ours[0] == pytest.approx(1.0)


# ------------------------------------------------------------------------- embed


def test_tiled_equals_untiled(rgb_encoder):
    img = _textured(3, 70, 3)[:, :61]
    full = embed(rgb_encoder, img, tile_size=1000)
    tiled = embed(rgb_encoder, img, tile_size=16, batch_tiles=3)
    assert full.shape == tiled.shape == (70, 61, 128)
    np.testing.assert_allclose(tiled, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [2, 3, 8])
def test_pool_equals_block_mean(rgb_encoder, k):
    img = _textured(4, 45, 3)[:, :38]
    full = embed(rgb_encoder, img)
    pooled = embed(rgb_encoder, img, pool=k, tile_size=12)
    h, w = full.shape[:2]
    oh, ow = -(-h // k), -(-w // k)
    assert pooled.shape == (oh, ow, 128)
    expect = np.empty_like(pooled)
    for by in range(oh):
        for bx in range(ow):
            expect[by, bx] = full[by * k:(by + 1) * k, bx * k:(bx + 1) * k].mean((0, 1))
    np.testing.assert_allclose(pooled, expect, rtol=1e-4, atol=1e-4)


def test_embed_rejects_bad_input(rgb_encoder):
    with pytest.raises(InputError):
        embed(rgb_encoder, np.zeros((40, 40, 3)))  # constant
    with pytest.raises(InputError):
        embed(rgb_encoder, _textured(0, 40, 3), pool=0)


# ------------------------------------------------------------ hooks and options


def test_cancel_raises_cancelled(rgb_encoder):
    ims = np.stack([_textured(s, 36, 3) for s in range(2)])
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        train_encoder(ims, epochs=50, seed=0, device="cpu", cancel=cancel, **TINY)
    assert len(calls) == 3
    with pytest.raises(Cancelled):
        embed(rgb_encoder, ims[0], tile_size=8, cancel=lambda: True)


def test_progress_reports_loss_terms():
    ims = np.stack([_textured(s, 36) for s in range(2)])
    seen = []
    enc = train_encoder(ims, epochs=3, seed=0, device="cpu",
                        progress=lambda d, t, m: seen.append((d, t, m)), **TINY)
    assert len(seen) == enc.metadata["steps"] > 0
    assert [d for d, _, _ in seen] == list(range(1, len(seen) + 1))
    assert all(d <= t for d, t, _ in seen)
    assert "contrastive" in seen[-1][2] and "reconstruction" in seen[-1][2]


def test_seconds_budget_stops():
    ims = np.stack([_textured(s, 36) for s in range(2)])
    enc = train_encoder(ims, seconds=0.5, seed=0, device="cpu", **TINY)
    # the time budget ended it (there is no step budget), after at least one step
    assert enc.metadata["stopped"] == "seconds" and enc.metadata["steps"] >= 1
    # with both budgets, whichever is used up first: here the epoch
    both = train_encoder(ims, epochs=1, seconds=1000, seed=0, device="cpu", **TINY)
    assert both.metadata["stopped"] == "steps"
    assert both.metadata["steps"] == both.metadata["steps_per_epoch"]


def test_bad_options_and_devices():
    ims = np.stack([_textured(s, 36) for s in range(2)])
    with pytest.raises(InputError, match="unknown training option"):
        train_encoder(ims, epochs=1, not_an_option=3)
    with pytest.raises(InputError):
        train_encoder(ims, epochs=0)
    with pytest.raises(InputError):
        train_encoder(ims, epochs=1, lam=2.0)
    with pytest.raises(InputError):
        resolve_device("tpu")
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            resolve_device("cuda")
