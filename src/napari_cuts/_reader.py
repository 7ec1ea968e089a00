"""napari reader contribution: pictures (and folders of them), NIfTI, DICOM and DICOM
SEG through :mod:`napari_cuts.io`.

``napari-cuts.get_reader`` in napari.yaml points at :func:`napari_get_reader`.
"""

from __future__ import annotations

import os
import warnings

from . import io


def _single_path(path):
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, os.PathLike)):
        return None
    return path


def napari_get_reader(path):
    """Return a reader function for a supported path (str, or a list of one), else None.

    Never raises: napari asks every plugin about every path.
    """
    p = _single_path(path)
    if p is None or not io.is_supported(p):
        return None
    return read_layers


def read_layers(path) -> list[tuple]:
    """Read ``path`` (a file, or a DICOM folder: one layer per series).

    Returns ``[(data, layer_kwargs, layer_type), ...]``: ``"image"``, or ``"labels"``
    for a DICOM SEG (one labels layer, or one per segment when segments overlap),
    on the grid of its source series; the full affine, the source
    and the reader's notes are in ``layer_kwargs["metadata"]``. Notes (e.g. "4D
    image: using the first volume") are also issued as warnings, which napari shows
    as notifications. Raises :class:`napari_cuts.errors.ReadError` for a supported
    but unreadable file, with a message that names it.
    """
    p = _single_path(path)
    if p is None:
        p = path
    layers = []
    for image in io.read_all(p):
        for note in image.notes:
            warnings.warn(note, UserWarning, stacklevel=2)
        layers.append((image.data, image.layer_kwargs(), image.layer_type))
    return layers
