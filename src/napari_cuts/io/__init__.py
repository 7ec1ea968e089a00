"""Reading medical and ordinary images, and writing masks and label maps.

Used by the CLI, the pipeline and the napari reader/writer contributions alike.
No napari, no Qt. One module per format family around one :class:`ImageData`:

* :mod:`._base`: ``ImageData``, the axis / affine convention (read its docstring),
  shared checks and geometry, ``label_colours``;
* :mod:`.pictures`: PNG / JPEG / TIFF (grey or RGB, 8 or 16 bit; RGBA -> RGB,
  palette -> RGB), and a folder of PNG/TIFF files as a stack ``(N, H, W[, 3])``;
* :mod:`.nifti`: ``.nii`` / ``.nii.gz`` (2D, 3D; 4D+ -> the first volume);
* :mod:`.dicom`: one file, a multi-frame file, or a folder of series;
* :mod:`.dicom_seg`: DICOM SEG, read as labels on the source grid and written
  (highdicom) referencing the source series;
* :mod:`._dicom_common`: what those two share (dataset reading, attribute parsing, the
  slice geometry); neither imports the other, :mod:`.readers` sends a file to one;
* :mod:`.writers`: ``write_mask`` / ``write_labels`` / ``write_segments`` to NIfTI,
  PNG or DICOM SEG, atomically, with the permissions of the user's umask.
"""

from __future__ import annotations

import os  # noqa: F401 - tests patch io.os.replace to simulate a failing rename

from ._base import (
    MAX_ARRAY_BYTES, SUPPORTED_EXTENSIONS, WRITE_EXTENSIONS, ImageData, label_colours,
)
from .readers import is_supported, read_all, read_image
from .writers import like_from_metadata, write_labels, write_mask, write_segments

__all__ = [
    "ImageData",
    "read_image",
    "read_all",
    "write_mask",
    "write_labels",
    "write_segments",
    "like_from_metadata",
    "is_supported",
    "label_colours",
    "SUPPORTED_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "MAX_ARRAY_BYTES",
]
