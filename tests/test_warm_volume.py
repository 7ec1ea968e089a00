"""The packaged start point of the volume encoder (``weights/warm_volume_grey.pt``): it
loads, it is marked as a volume encoder with the layout ``train_volume_encoder`` uses,
``packaged_weights`` finds it only for grey volumes, and a warm-started training on a
volume's training slices runs. No timed tests."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from napari_cuts.encoder import WEIGHTS_DIR, file_sha256, load_encoder, packaged_weights, train_encoder
from napari_cuts.pipeline_volume import VOLUME_INPUT, volume_grid, volume_training_slices
from napari_cuts.volume import CONTEXT_SLICES

K = CONTEXT_SLICES
TINY = dict(crop_size=32, batch_size=2, anchors=32)


def _volume(seed=0, shape=(12, 40, 40)):
    """A small grey volume: a bright ball and a dark slab in noisy tissue."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    vol = 100.0 + rng.normal(0, 5, shape)
    vol[(z - 6) ** 2 + (y - 14) ** 2 + (x - 14) ** 2 < 36] = 180.0
    vol[:, 28:34, :] = 30.0
    return vol.astype(np.float32)


def test_packaged_volume_start_point_loads_with_volume_metadata():
    path = packaged_weights(1, context_slices=K)
    assert path == WEIGHTS_DIR / "warm_volume_grey.pt" and path.is_file()
    enc = load_encoder(path, device="cpu")
    assert enc.metadata["volume"] is True
    assert enc.metadata["volume_input"] == VOLUME_INPUT
    assert int(enc.metadata.get("context_slices", 0)) == K
    assert enc.in_channels == 2 * K + 1                     # 1 channel with its k neighbours
    assert enc.head is not None
    src = enc.metadata["warm_start_source"]
    assert src["kind"] == "volume"
    origin = json.dumps(src["data"]).lower()
    assert "mri_volume.nii.gz" in origin
    for kept_out in ("hippocampus", "msd", "decathlon", "task0", "retina", "image_with_ga"):
        assert kept_out not in origin                     # permissive data only
    z = enc.net(torch.zeros(1, enc.in_channels, 24, 24))
    assert z.shape == (1, 128, 24, 24)
    assert len(file_sha256(path)) == 64


def test_packaged_weights_volume_and_image_lookups():
    assert packaged_weights(1) == WEIGHTS_DIR / "warm_grey.pt"    # 2D images unchanged
    assert packaged_weights(3) == WEIGHTS_DIR / "warm_rgb.pt"
    assert packaged_weights(1, context_slices=K) != packaged_weights(1)
    for channels in (2, 3, 4):                                    # multi-channel volumes: none
        assert packaged_weights(channels, context_slices=K) is None
    assert packaged_weights(1, context_slices=K + 1) is None     # another slice context: none


def test_warm_started_volume_training_runs():
    path = packaged_weights(1, context_slices=K)
    _, grid = volume_grid(_volume())
    imgs = volume_training_slices(grid, K)
    assert imgs and imgs[0].shape[-1] == 2 * K + 1
    enc = train_encoder(imgs, epochs=0.2, seed=0, device="cpu", init=path, context_slices=K, **TINY)
    ws = enc.metadata["warm_start"]
    assert ws["file"] == "warm_volume_grey.pt" and ws["packaged"] and ws["head"]
    assert ws["sha256"] == file_sha256(path)
    assert enc.metadata["steps"] >= 1 and enc.in_channels == 2 * K + 1
    assert all(math.isfinite(v) for v in enc.metadata["history"]["loss"])
    # started from the packaged weights: the first layer is still close to them
    w0 = load_encoder(path, device="cpu").net.state_dict()["layers.0.weight"]
    w1 = enc.net.state_dict()["layers.0.weight"].cpu()
    assert (w1 - w0).norm() < 0.5 * w0.norm()
