"""Checking and shaping input images, and the progress/cancel hooks.

Arrays at the boundary are numpy: one image is ``(H, W)`` (grey) or ``(H, W, C)``
(C <= 4 channels, e.g. RGB); a stack is ``(N, H, W)`` or ``(N, H, W, C)``. The
helpers here turn them into float32 ``(H, W, C)`` arrays, or raise an
:class:`~napari_cuts.errors.InputError` that says what is wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np

from .errors import Cancelled, InputError

Progress = Optional[Callable[[int, int, str], None]]
Cancel = Optional[Callable[[], bool]]

#: The smallest side the encoder can look at (its receptive field is 17 x 17).
MIN_SIDE = 17
#: The most channels an image may have to be treated as one image (RGB(A)).
MAX_CHANNELS = 4


def report(progress: Progress, done: int, total: int, message: str) -> None:
    """Call ``progress(done, total, message)`` if a callback was given."""
    if progress is not None:
        progress(int(done), int(total), str(message))


def check_cancel(cancel: Cancel) -> None:
    """Raise :class:`Cancelled` if ``cancel()`` says so."""
    if cancel is not None and cancel():
        raise Cancelled()


def check_image(image, name: str = "image", max_channels: int = MAX_CHANNELS,
                allow_constant: bool = False) -> np.ndarray:
    """Validate one 2D image and return it as float32 ``(H, W, C)``.

    Accepts ``(H, W)`` or ``(H, W, C)`` with C <= 4, of a real numeric or bool dtype.
    Raises :class:`InputError` for other shapes, complex/object/str dtypes, NaN or
    infinite values, constant images and images smaller than the network's reach.
    The values are not rescaled here (normalisation belongs to the encoder).
    """
    arr = np.asarray(image)
    if arr.dtype == object or arr.dtype.kind in "USVOcmM":
        raise InputError(
            f"{name} has dtype {arr.dtype}; give a real-valued array "
            "(uint8, uint16, int or float)."
        )
    if arr.ndim == 3 and arr.shape[-1] > max_channels and arr.shape[0] <= max_channels:
        raise InputError(
            f"{name} has shape {arr.shape}, which looks channels-first; "
            "give (H, W, C) with the channels last (np.moveaxis(image, 0, -1))."
        )
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] > max_channels or arr.shape[-1] < 1:
        raise InputError(
            f"{name} has shape {np.shape(image)}; expected one 2D image (H, W) or "
            f"(H, W, C) with at most {max_channels} channels. For a volume, use "
            "segment_volume (napari-cuts segment VOLUME); for a stack, give its images."
        )
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(
            f"{name} is {h} x {w} pixels; CUTS needs at least {MIN_SIDE} x {MIN_SIDE} "
            "(the encoder looks at 17 x 17 neighbourhoods)."
        )
    out = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(out)):
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
        raise InputError(
            f"{name} has {bad} NaN or infinite values; replace them "
            "(e.g. np.nan_to_num) or crop them away before segmenting."
        )
    if not allow_constant and float(out.max()) == float(out.min()):
        raise InputError(
            f"{name} is constant (every pixel is {float(out.flat[0]):g}); "
            "there is nothing to segment."
        )
    return out


def as_image_list(images, name: str = "images", max_channels: int = MAX_CHANNELS) -> list[np.ndarray]:
    """Turn a sequence of images, or one stacked array, into float32 ``(H, W, C)`` images.

    ``images`` is a sequence of 2D images ``(H, W)`` / ``(H, W, C)``, or one array
    ``(N, H, W)`` / ``(N, H, W, C)``, or a single 2D image. All images must have the
    same channel count.
    """
    if isinstance(images, np.ndarray):
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] <= max_channels
                                and images.shape[0] > max_channels):
            seq: Sequence = [images]
        elif images.ndim in (3, 4):
            seq = list(images)
        else:
            raise InputError(
                f"{name} has shape {images.shape}; expected (N, H, W), (N, H, W, C) "
                "or one image (H, W) / (H, W, C)."
            )
    else:
        try:
            seq = list(images)
        except TypeError:
            raise InputError(f"{name} must be an array or a sequence of arrays.") from None
    if len(seq) == 0:
        raise InputError(f"{name} is empty; give at least one image.")
    out = [check_image(im, name=f"{name}[{i}]", max_channels=max_channels)
           for i, im in enumerate(seq)]
    chans = {im.shape[-1] for im in out}
    if len(chans) > 1:
        raise InputError(
            f"{name} mix channel counts {sorted(chans)}; give all grey or all colour images."
        )
    return out


class CheckedImages(tuple):
    """Images that :func:`check_image` has already passed: float32 ``(H, W, C)`` arrays.

    The pipeline checks its input once, at the entrance of the ``segment`` job, and hands
    the checked images on in this wrapper; :func:`checked_list` (what
    :func:`napari_cuts.pipeline.get_encoder` and :func:`napari_cuts.encoder.train_encoder`
    read their images with) then takes them as they are instead of checking every image
    again. Anything else, a plain list or array included, is checked."""


def checked_list(images, name: str = "images",
                 max_channels: int = MAX_CHANNELS) -> list[np.ndarray]:
    """:func:`as_image_list` of ``images``, except that :class:`CheckedImages` of one
    channel count within ``max_channels`` come back as they are (the per-image checks
    already ran). Checked images that break the channel rules go through
    :func:`as_image_list`, which raises its usual :class:`InputError`."""
    if isinstance(images, CheckedImages) and len(images) > 0:
        chans = {int(im.shape[-1]) for im in images}
        if len(chans) == 1 and 1 <= min(chans) <= max_channels:
            return list(images)
    return as_image_list(images, name, max_channels)


def check_embeddings(embeddings, allow_volume: bool = False) -> np.ndarray:
    """Validate per-pixel embeddings ``(H, W, D)`` (``(H, W)`` is taken as D = 1) as float32;
    with ``allow_volume`` also per-voxel ``(Z, Y, X, D)``."""
    arr = np.asarray(embeddings)
    if arr.ndim == 2:
        arr = arr[..., None]
    ok = (3, 4) if allow_volume else (3,)
    if arr.ndim not in ok or min(arr.shape) < 1:
        want = "(H, W, D) or (Z, Y, X, D)" if allow_volume else "(H, W, D)"
        raise InputError(f"embeddings have shape {np.shape(embeddings)}; expected {want}.")
    if arr.dtype.kind not in "fiub":
        raise InputError(f"embeddings have dtype {arr.dtype}; expected real numbers.")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InputError("embeddings contain NaN or infinite values; check the encoder's input.")
    return arr
