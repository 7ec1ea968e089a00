"""Export of the CUTS dock widget: the mask or the shown labels through the npe2 writer.

``napari_cuts._writer.write_labels`` keeps the source geometry (NIfTI affine from the
layer's metadata, DICOM SEG from a DICOM source); PNG is 0/255 for a mask. Every
export records its provenance (version, seed, level, encoder) in the sidecar JSON.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QFileDialog

from ..errors import CutsError, InputError


def export(w, path, what: str = "mask") -> list[str]:
    """Write widget ``w``'s mask (``what="mask"``) or shown labels (``"labels"``) to
    ``path``. Returns the written paths ([] after a notification on failure)."""
    from .._writer import write_labels

    layer = {"mask": w.mask_layer, "labels": w.levels_layer}.get(what, False)
    if layer is False:
        raise InputError(f"what must be 'mask' or 'labels', not {what!r}.")
    if layer is None or layer not in w.viewer.layers:
        w._notify("error", f"Nothing to export: {'click a cluster' if what == 'mask' else 'segment'} first.")
        return []
    data, meta, _ = layer.as_layer_data_tuple()
    if what == "labels" and w.source is not None and w.source.one_volume:
        data = w.cluster_labels(0).astype(np.uint32) + 1   # every cluster, no cut-away
    meta = dict(meta)
    meta["metadata"] = {**(meta.get("metadata") or {}), "napari_cuts": provenance(w, what)}
    try:
        written = write_labels(str(path), np.asarray(data), meta)
    except CutsError as exc:
        w._notify("error", str(exc))
        return []
    w._notify("info", f"Saved {what} to {', '.join(map(str, written))}")
    return list(written)


def provenance(w, what: str) -> dict:
    """What made this output: version, seed, level, encoder (for the sidecar JSON)."""
    from .. import __version__

    enc = getattr(w.encoder, "metadata", None) or {}
    return {"napari_cuts_version": __version__, "what": what, "seed": int(w.settings.seed),
            "level": "persistent" if w.persistent_check.isChecked() else int(w.level),
            "encoder": {k: enc.get(k) for k in ("in_channels", "seed", "version", "params",
                                                  "context_slices")
                        if k in enc},
            "source": (w.source.layer.metadata or {}).get("source")
            if w.source is not None else None}


def export_dialog(w, what: str) -> None:
    path, _ = QFileDialog.getSaveFileName(
        w, f"Export {what}", f"cuts_{what}.nii.gz", "NIfTI (*.nii.gz *.nii);;PNG (*.png)")
    if path:
        export(w, path, what)
