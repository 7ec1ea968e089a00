"""Benchmark of the CUTS encoder: training step time, throughput, retina quality, embed time.

``run(quick=False) -> dict`` (JSON-serialisable):

- ``step_seconds``: mean wall time of one training step (default options: a batch of
  8 random 64 x 64 crops with 256 anchors each) on synthetic RGB images;
- ``images_per_second``: training crops processed per second;
- ``retina``: on the 40 development retina images (``<data>/retina``), the wall time
  of a training run with a ``seconds`` budget (120 s; 10 s when quick), its steps and
  epochs, and the spectral k-means Dice reached (``napari_cuts.clustering.spectral_kmeans``, k = 10, on the
  per-pixel embeddings, label hint = the cluster most frequent under the ground-truth
  foreground, mean over images; quick mode trains 4 s and scores 2 images). ``{"skipped": reason}``
  when the data is absent;
- ``embed_512_seconds``: embedding one 512 x 512 RGB image (and ``embed_512_pool4_seconds``);
  quick mode embeds 256 x 256 (``embed_256_seconds``); ``embed_pixels_per_second``.

Shared data is found at ``../shared/data`` beside the repository, or ``$NAPARI_CUTS_DATA``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def _data_dir() -> Path:
    env = os.environ.get("NAPARI_CUTS_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _load_retina(root: Path):
    from skimage.io import imread

    images, masks = [], []
    for p in sorted((root / "image_with_GA").glob("image*.png")):
        n = p.stem[len("image"):]
        m = root / "label_with_GA" / f"label{n}.npy"
        if not m.is_file():
            continue
        im = imread(p)
        if im.ndim == 3:
            im = im[..., :3]
        images.append(im)
        masks.append(np.load(m) > 0)
    return images, masks


def kmeans_dice(encoder, images, masks, k: int = 10, seed: int = 0) -> float:
    """Mean label-hint Dice of spectral k-means (k clusters) on the embeddings."""
    from napari_cuts.clustering import spectral_kmeans
    from napari_cuts.encoder import embed
    from napari_cuts.metrics import dice
    from napari_cuts.selection import label_hint

    scores = []
    for im, m in zip(images, masks):
        z = embed(encoder, im)
        if not m.any():
            continue
        lab = spectral_kmeans(z, k=k, seed=seed)
        scores.append(float(dice(label_hint(lab, m), m)))
    return float(np.mean(scores)) if scores else float("nan")


def run(quick: bool = False) -> dict:
    from napari_cuts.encoder import DEFAULTS, embed, train_encoder

    out: dict = {"quick": bool(quick)}
    rng = np.random.default_rng(0)

    # --- training step time on synthetic images (fixed number of steps)
    synth = (rng.random((8, 128, 128, 3)) * 255).astype(np.uint8)
    steps = 2 if quick else 10
    crop, batch = DEFAULTS["crop_size"], DEFAULTS["batch_size"]
    steps_per_epoch = int(np.ceil(8 * 128 * 128 / (crop * crop) / batch))
    if not quick:
        train_encoder(synth, epochs=1 / steps_per_epoch, seed=0, device="cpu")  # warm-up
    t = time.perf_counter()
    enc = train_encoder(synth, epochs=steps / steps_per_epoch, seed=0, device="cpu")
    dt = time.perf_counter() - t
    n = enc.metadata["steps"]
    out["step_seconds"] = dt / n
    out["images_per_second"] = n * batch / dt
    out["batch_size"] = batch
    out["crop_size"] = crop
    out["anchors_per_crop"] = DEFAULTS["anchors"]

    # --- the 40 development retina images
    root = _data_dir() / "retina"
    if not (root / "image_with_GA").is_dir():
        out["retina"] = {"skipped": f"retina data not found at {root} (set NAPARI_CUTS_DATA)"}
    else:
        images, masks = _load_retina(root)
        budget = 4.0 if quick else 120.0
        t = time.perf_counter()
        enc = train_encoder(images, seconds=budget, seed=0, device="cpu")
        wall = time.perf_counter() - t
        res = {
            "n_images": len(images),
            "seconds_budget": budget,
            "train_wall_seconds": wall,
            "steps": enc.metadata["steps"],
            "epochs": enc.metadata["epochs_done"],
        }
        sub = 2 if quick else len(images)
        t = time.perf_counter()
        res["kmeans_dice"] = kmeans_dice(enc, images[:sub], masks[:sub])
        res["kmeans_dice_images"] = sub
        res["dice_seconds"] = time.perf_counter() - t
        out["retina"] = res

    # --- embedding time for a 512 x 512 RGB image
    img = (rng.random((512, 512, 3)) * 255).astype(np.uint8)
    if quick:
        img = img[:256, :256]  # keep the smoke run short; the key says which size
    embed(enc, img[:64, :64])  # warm-up
    t = time.perf_counter()
    z = embed(enc, img)
    side = img.shape[0]
    out[f"embed_{side}_seconds"] = time.perf_counter() - t
    out[f"embed_{side}_shape"] = list(z.shape)
    out["embed_pixels_per_second"] = side * side / out[f"embed_{side}_seconds"]
    del z
    if not quick:
        t = time.perf_counter()
        embed(enc, img, pool=4)
        out[f"embed_{side}_pool4_seconds"] = time.perf_counter() - t
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
