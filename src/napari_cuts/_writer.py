"""napari writer contribution: a Labels layer to NIfTI (.nii / .nii.gz), PNG, or
DICOM SEG (.dcm, for a layer on a DICOM source: the layer metadata's
``dicom_files`` / ``sop_instance_uids``, set by our reader, say which instances the
SEG references).

``napari-cuts.write_labels`` in napari.yaml points at :func:`write_labels`.
The geometry comes from the layer metadata's ``affine`` (set by our reader's
``layer_kwargs`` and copied onto label layers made from such an image), else from
the layer's ``scale`` / ``translate``; a binary layer is written with the mask
rules (uint8; PNG 0/255), others as label maps (smallest unsigned dtype; colour PNG).
"""

from __future__ import annotations

import numpy as np

from . import io


def _geometry(data: np.ndarray, meta: dict):
    """(like, affine) for io.write_* from napari layer attributes."""
    metadata = meta.get("metadata") or {}
    shape = tuple(int(s) for s in data.shape)
    src_shape = metadata.get("shape") if isinstance(metadata, dict) else None
    # the source may be RGB (H, W, 3): compare the leading (spatial) dims only
    src_spatial = shape if src_shape is None else tuple(int(s) for s in src_shape[: len(shape)])
    like = io.like_from_metadata(metadata, shape) if src_spatial == shape else None
    if like is not None:
        return like, None
    scale = meta.get("scale")
    translate = meta.get("translate")
    if scale is None or len(scale) != data.ndim:
        return None, None
    sp = [float(s) for s in scale]
    tr = [float(t) for t in translate] if translate is not None and len(translate) == data.ndim else [0.0] * data.ndim
    if data.ndim == 2:
        sp, tr = [1.0] + sp, [0.0] + tr
    # array index (z, y, x) -> world (x, y, z): the convention of napari_cuts.io
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = sp[2], sp[1], sp[0], 1.0
    affine[:3, 3] = [tr[2], tr[1], tr[0]]
    return None, affine


def write_labels(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels layers; returns the written path."""
    arr = np.asarray(data)
    like, affine = _geometry(arr, meta or {})
    binary = arr.dtype == bool or (arr.size > 0 and arr.min() >= 0 and arr.max() <= 1)
    writer = io.write_mask if binary else io.write_labels
    # A provenance record (version, seed, level...) put in the layer metadata by the
    # widget goes into a sidecar JSON and the NIfTI header description.
    provenance = ((meta or {}).get("metadata") or {}).get("napari_cuts")
    provenance = provenance if isinstance(provenance, dict) else None
    extra = {}
    if str(path).lower().endswith(".dcm"):
        # DICOM SEG: the segment is named after the object when the widget says which
        name = (provenance or {}).get("object") or (provenance or {}).get("name")
        if binary and isinstance(name, str) and name:
            extra["name"] = name
    out = writer(path, arr, like=like, affine=affine, provenance=provenance, **extra)
    return [str(out)]
