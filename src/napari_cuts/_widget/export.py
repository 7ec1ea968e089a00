"""Export of the CUTS dock widget: the mask or the shown labels through the npe2 writer,
and every object at once (:func:`export_objects`).

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

    if what == "objects":
        return export_objects(w, path)
    if what == "object":
        what = "mask"
    layer = {"mask": w.mask_layer, "labels": w.levels_layer}.get(what, False)
    if layer is False:
        raise InputError(f"what must be 'mask', 'object', 'labels' or 'objects', not {what!r}.")
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


def export_objects(w, path) -> list[str]:
    """Every object of widget ``w`` in one file: ``.nii.gz`` / ``.nii`` / ``.png`` hold one
    label map that keeps the object ids (8- or 16-bit grey, the later object on top where
    objects overlap), with ``<name>.json`` beside it naming each id; ``.dcm`` (DICOM
    source) is a DICOM SEG with one segment per object, overlapping where they overlap.
    Returns the written paths ([] after a notification on failure)."""
    from pathlib import Path

    from .. import io
    from .._writer import _geometry
    from ..fileutil import write_json
    from ..io._base import stem
    from ..io.writers import atomic_write, png_bytes

    model = w.objects.model
    objs = [o for o in (model.objects if model is not None else []) if o.mask is not None]
    if not objs:
        w._notify("error", "Nothing to export: click a structure into an object first.")
        return []
    labels = model.labels()
    meta = w._geometry()
    like, affine = _geometry(labels, meta)
    prov = provenance(w, "objects")
    prov["objects"] = [{"id": o.id, "name": o.name, "colour": list(o.colour),
                        "level": o.level, "prompts": o.prompts.to_json(),
                        "pixels": o.pixels()} for o in objs]
    prov["names"] = {str(o.id): o.name for o in objs}
    p = Path(str(path))
    low = p.name.lower()
    try:
        if low.endswith(".dcm"):
            out = io.write_segments(p, [o.mask for o in objs], [o.name for o in objs],
                                    like=like, provenance=prov)
        elif low.endswith(".png"):
            if labels.ndim != 2:
                raise InputError("a PNG holds one 2D image; export a volume's objects as "
                                 ".nii.gz (or .dcm for a DICOM source).")
            # raw ids as 8/16-bit grey, even when only id 1 is used (never 0/255)
            atomic_write(p, png_bytes(labels, binary=False, colour=False, name="objects"))
            from .. import __version__

            write_json(p.with_name(stem(p) + ".json"),
                       {"napari_cuts_version": __version__, "file": p.name, "kind": "labels",
                        "shape": list(labels.shape), "dtype": str(labels.dtype), **prov})
            out = p
        else:
            out = io.write_labels(p, labels, like=like, affine=affine, provenance=prov,
                                  colour=False, names={o.id: o.name for o in objs})
    except CutsError as exc:
        w._notify("error", str(exc))
        return []
    w._notify("info", f"Saved {len(objs)} object(s) to {out}")
    return [str(out)]


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
        w, f"Export {what}", f"cuts_{what}.nii.gz",
        "NIfTI (*.nii.gz *.nii);;PNG (*.png)" + (";;DICOM SEG (*.dcm)" if what == "objects" else ""))
    if path:
        export(w, path, what)
