"""Embedding images with a trained encoder: ``embed`` (tiled, optionally pooled),
``embed_volume`` (slice by slice, with slice context for a 2.5D encoder) and
``normalised_image`` (the image scaled as the encoder sees it).

torch and the network (:mod:`napari_cuts.encoder_network`) are imported inside the
functions that run it.
"""

from __future__ import annotations

import math

import numpy as np

from .encoder_weights import MAX_INPUT_CHANNELS, Encoder, _check_channels
from .errors import InputError, WeightsError
from .images import Cancel, Progress, check_cancel, check_image, report


def _normalise(image: np.ndarray, lo, hi) -> np.ndarray:
    """float32 (H, W, C) -> float32 (C, H, W) in [0, 1] (clipped)."""
    lo = np.asarray(lo, np.float32)
    hi = np.asarray(hi, np.float32)
    out = (image - lo) / (hi - lo)
    np.clip(out, 0.0, 1.0, out=out)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _prepare(encoder: Encoder, image, name: str = "image", allow_constant: bool = False) -> np.ndarray:
    """Check ``image`` (:func:`check_image`), then :func:`_scaled`: ``(C, H, W)`` in [0, 1]."""
    img = check_image(image, name, max_channels=max(MAX_INPUT_CHANNELS, encoder.in_channels),
                      allow_constant=allow_constant)
    return _scaled(encoder, img)


def _scaled(encoder: Encoder, img: np.ndarray) -> np.ndarray:
    """A checked float32 ``(H, W, C)`` image scaled by the encoder's recorded percentiles:
    float32 ``(C, H, W)`` in [0, 1], the network's input. Not checked again; raises
    :class:`WeightsError` for another channel count than the encoder's."""
    _check_channels(encoder, img.shape[-1])
    return _normalise(img, encoder.metadata["norm_low"], encoder.metadata["norm_high"])


def _channels_last(x: np.ndarray) -> np.ndarray:
    """The network's input ``(C, H, W)`` as the image ``(H, W, C)`` float32 (contiguous)."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(x), 0, -1), dtype=np.float32)


def normalised_image(encoder: Encoder, image, allow_constant: bool = False) -> np.ndarray:
    """The image as the encoder sees it: ``(H, W, C)`` float32 scaled by the recorded
    percentiles into [0, 1]. Raises :class:`WeightsError` for another channel count."""
    return _channels_last(_prepare(encoder, image, allow_constant=allow_constant))


def embed(encoder: Encoder, image, *, pool: int = 1, batch_tiles: int = 4,
          tile_size: int = 256, progress: Progress = None, cancel: Cancel = None,
          _slice: bool = False) -> np.ndarray:
    """Per-pixel embeddings of one image.

    Parameters
    ----------
    encoder : Encoder
    image : (H, W) or (H, W, C) array, C equal to ``encoder.in_channels``
        Normalised with the percentiles recorded at training time.
    pool : int
        1: full resolution. k > 1: means over k x k blocks (aligned at the top-left
        corner, edge blocks averaged over the pixels they hold), shape
        ``(ceil(H/k), ceil(W/k), D)``, computed tile by tile so the full-resolution
        embedding never exists in memory.
    batch_tiles : int
        Tiles per forward pass.
    tile_size : int
        Side of the tiles (rounded up to a multiple of ``pool``). Each tile is run
        with an 8-pixel overlap (the receptive-field margin), so the result equals
        the untiled one up to float rounding.
    progress, cancel : the usual hooks (one step per tile).

    Returns
    -------
    np.ndarray
        float32 ``(H, W, D)`` (``D = encoder.embedding_dim = 128``), or pooled as above.
        With a 2.5D encoder (trained on a volume), ``image`` is a volume ``(Z, Y, X[, C])``
        and the result ``(Z, Y, X, D)`` (:func:`embed_volume`).
    """
    if not _slice and _reads_as_volume(encoder, image):
        # a 2.5D encoder only reads volumes: (Z, Y, X[, C]) -> (Z, Y, X, D)
        if pool != 1:
            raise InputError("pool is not supported for volumes; segment_volume chooses the grid.")
        return embed_volume(encoder, image, progress=progress, cancel=cancel)
    pool = int(pool)
    if pool < 1:
        raise InputError(f"pool must be a positive integer, got {pool}.")
    x = _prepare(encoder, image, allow_constant=_slice)  # a volume's edge slice may be empty
    return _embed_scaled(encoder, x, pool=pool, batch_tiles=batch_tiles, tile_size=tile_size,
                         progress=progress, cancel=cancel)


def _embed_scaled(encoder: Encoder, x: np.ndarray, *, pool: int = 1, batch_tiles: int = 4,
                  tile_size: int = 256, progress: Progress = None,
                  cancel: Cancel = None) -> np.ndarray:
    """:func:`embed` of an image already checked and scaled (:func:`_scaled`): ``x`` is the
    network's input ``(C, H, W)``, ``pool`` a positive int; nothing is checked again."""
    import torch
    import torch.nn.functional as F

    from .encoder_network import _use_all_cores, receptive_margin

    _, h, w = x.shape
    tile = max(int(tile_size), 1)
    tile = int(math.ceil(tile / pool) * pool)
    m = receptive_margin(encoder)
    d = encoder.embedding_dim
    oh, ow = -(-h // pool), -(-w // pool)
    out = np.empty((oh, ow, d), np.float32)
    if encoder.device == "cpu":
        _use_all_cores(None)

    # tiles: (y0, y1, x0, x1) output windows; inputs are widened by the margin
    tiles = [(y0, min(y0 + tile, h), x0, min(x0 + tile, w))
             for y0 in range(0, h, tile) for x0 in range(0, w, tile)]
    groups: dict[tuple, list] = {}
    for t in tiles:
        y0, y1, x0, x1 = t
        iy0, iy1, ix0, ix1 = max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)
        groups.setdefault((iy1 - iy0, ix1 - ix0), []).append((t, (iy0, iy1, ix0, ix1)))
    net = encoder.net
    net.eval()
    done = 0
    total = len(tiles)
    bt = max(1, int(batch_tiles))
    with torch.inference_mode():
        for _, items in groups.items():
            for k in range(0, len(items), bt):
                check_cancel(cancel)
                chunk = items[k:k + bt]
                inp = np.stack([x[:, a:b, c:e] for _, (a, b, c, e) in chunk])
                z = net(torch.from_numpy(inp).to(encoder.device))
                z = z.permute(0, 2, 3, 1)
                for j, ((y0, y1, x0, x1), (iy0, _, ix0, _)) in enumerate(chunk):
                    zt = z[j, y0 - iy0:y1 - iy0, x0 - ix0:x1 - ix0]
                    if pool == 1:
                        out[y0:y1, x0:x1] = zt.float().cpu().numpy()
                    else:
                        th, tw = y1 - y0, x1 - x0
                        bh, bw = -(-th // pool), -(-tw // pool)
                        pad_h, pad_w = bh * pool - th, bw * pool - tw
                        zt = zt.permute(2, 0, 1)[None]                     # (1, D, th, tw)
                        if pad_h or pad_w:
                            zt = F.pad(zt, (0, pad_w, 0, pad_h))
                        ones = torch.ones((1, 1, th, tw), device=zt.device, dtype=zt.dtype)
                        if pad_h or pad_w:
                            ones = F.pad(ones, (0, pad_w, 0, pad_h))
                        sums = F.avg_pool2d(zt, pool, stride=pool) * (pool * pool)
                        cnt = F.avg_pool2d(ones, pool, stride=pool) * (pool * pool)
                        blk = (sums / cnt)[0].permute(1, 2, 0)
                        out[y0 // pool:y0 // pool + bh, x0 // pool:x0 // pool + bw] = \
                            blk.float().cpu().numpy()
                    done += 1
                report(progress, done, total, f"embedding tile {done}/{total}")
    return out


def _reads_as_volume(encoder: Encoder, image) -> bool:
    """Whether ``embed`` takes ``image`` as a volume: always for a 2.5D encoder; for a
    volume-trained 2D encoder when the array has three spatial axes (plus channels)."""
    if int(encoder.metadata.get("context_slices", 0) or 0) > 0:
        return True
    if not encoder.metadata.get("volume"):
        return False
    nd = np.ndim(image)
    return nd == 3 + (1 if encoder.in_channels > 1 else 0)


def embed_volume(encoder: Encoder, volume, *, progress: Progress = None,
                 cancel: Cancel = None) -> np.ndarray:
    """Per-voxel embeddings of a volume ``(Z, Y, X)`` or ``(Z, Y, X, C)``: ``(Z, Y, X, D)``.

    A 2.5D encoder (``context_slices = k > 0``) gets every slice with its ``k``
    neighbours on each side as channels (:func:`napari_cuts.volume.context_stack`);
    a 2D encoder is applied to every slice on its own. Slices are embedded one by one,
    so memory holds the output and one slice's activations."""
    from .volume import check_volume

    vol = check_volume(volume)
    emb, _ = _embed_volume_checked(encoder, _volume_input(encoder, vol), progress=progress,
                                   cancel=cancel)
    return emb


def _volume_input(encoder: Encoder, vol: np.ndarray) -> np.ndarray:
    """A checked volume ``(Z, Y, X, C)`` as the encoder reads it: every slice with its
    context slices as channels (:func:`napari_cuts.volume.context_stack`) for a 2.5D
    encoder, the volume itself otherwise. Raises :class:`WeightsError` for a channel
    count the encoder was not trained on."""
    from .volume import context_stack

    k = int(encoder.metadata.get("context_slices", 0) or 0)
    x = context_stack(vol, k) if k else vol
    if x.shape[-1] != encoder.in_channels:
        per = encoder.in_channels // (2 * k + 1)
        raise WeightsError(
            f"the encoder was trained on volumes of {per} channel{'s' if per != 1 else ''} "
            f"(sequences){' with ' + str(k) + ' context slices each side' if k else ''}; this "
            f"volume has {vol.shape[-1]}: train a new encoder on these sequences or load "
            "weights trained on the same number.")
    return x


def _embed_volume_checked(encoder: Encoder, x: np.ndarray, *, progress: Progress = None,
                          cancel: Cancel = None, embed_slices: bool = True,
                          keep_scaled: bool = False):
    """Slice by slice over ``x`` ``(Z, Y, X, C_in)`` (:func:`_volume_input` of a checked
    volume; not checked again): each slice scaled by the encoder's percentiles once
    (:func:`_scaled`) and embedded (``embed_slices``). Returns ``(embeddings (Z, Y, X, D)
    or None, the scaled slices (Z, Y, X, C_in) float32 or None)``; ``keep_scaled`` keeps
    the scaled slices (the image condensation sees, :func:`normalised_image` of each)."""
    z = x.shape[0]
    out = np.empty(x.shape[:3] + (encoder.embedding_dim,), np.float32) if embed_slices else None
    scaled = np.empty(x.shape, np.float32) if keep_scaled else None
    for i in range(z):
        if embed_slices:
            check_cancel(cancel)
        xi = _scaled(encoder, x[i])
        if embed_slices:
            out[i] = _embed_scaled(encoder, xi, cancel=cancel)
            report(progress, i + 1, z, f"embedding slice {i + 1}/{z}")
        if keep_scaled:
            scaled[i] = xi.transpose(1, 2, 0)
    return out, scaled
