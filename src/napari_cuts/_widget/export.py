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
from .settings import layer_geometry


class Exporter:
    """Export from ``state``: the mask layer (``mask_layer()``, "CUTS mask"), the levels
    (``state.levels_layer``; a volume's every cluster from ``cluster_labels(0)``) or the
    objects (``state.objects``). ``notify(level, text)`` reports; ``parent`` is the
    dialogs' parent widget."""

    def __init__(self, state, viewer, *, notify, mask_layer, cluster_labels,
                 parent=None) -> None:
        self.state = state
        self.viewer = viewer
        self.notify = notify
        self.mask_layer = mask_layer
        self.cluster_labels = cluster_labels
        self.parent = parent

    def export(self, path, what: str = "mask") -> list[str]:
        return export(self, path, what)

    def dialog(self, what: str) -> None:
        export_dialog(self, what)


def export(x: Exporter, path, what: str = "mask") -> list[str]:
    """Write the mask (``what="mask"``) or the shown labels (``"labels"``) to ``path``.
    Returns the written paths ([] after a notification on failure)."""
    from .._writer import write_labels

    if what == "objects":
        return export_objects(x, path)
    if what == "object":
        what = "mask"
    st = x.state
    layer = {"mask": x.mask_layer(), "labels": st.levels_layer}.get(what, False)
    if layer is False:
        raise InputError(f"what must be 'mask', 'object', 'labels' or 'objects', not {what!r}.")
    if layer is None or layer not in x.viewer.layers:
        x.notify("error", f"Nothing to export: {'click a cluster' if what == 'mask' else 'segment'} first.")
        return []
    data, meta, _ = layer.as_layer_data_tuple()
    if what == "labels" and st.one_volume:
        data = x.cluster_labels(0).astype(np.uint32) + 1   # every cluster, no cut-away
    meta = dict(meta)
    meta["metadata"] = {**(meta.get("metadata") or {}), "napari_cuts": provenance(st, what)}
    try:
        written = write_labels(str(path), np.asarray(data), meta)
    except CutsError as exc:
        x.notify("error", str(exc))
        return []
    x.notify("info", f"Saved {what} to {', '.join(map(str, written))}")
    return list(written)


def export_objects(x: Exporter, path) -> list[str]:
    """Every object in one file: ``.nii.gz`` / ``.nii`` / ``.png`` hold one
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

    st = x.state
    model = st.objects
    objs = [o for o in (model.objects if model is not None else []) if o.mask is not None]
    if not objs:
        x.notify("error", "Nothing to export: click a structure into an object first.")
        return []
    labels = model.labels()
    meta = layer_geometry(st.source.layer)
    like, affine = _geometry(labels, meta)
    prov = provenance(st, "objects")
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
        x.notify("error", str(exc))
        return []
    x.notify("info", f"Saved {len(objs)} object(s) to {out}")
    return [str(out)]


def provenance(st, what: str) -> dict:
    """What made this output (``st``: the widget's state): version, seed, level, encoder
    (for the sidecar JSON)."""
    from .. import __version__

    enc = getattr(st.encoder, "metadata", None) or {}
    return {"napari_cuts_version": __version__, "what": what, "seed": int(st.settings.seed),
            "level": "persistent" if st.persistent else int(st.level),
            "encoder": {k: enc.get(k) for k in ("in_channels", "seed", "version", "params",
                                                  "context_slices")
                        if k in enc},
            "source": (st.source.layer.metadata or {}).get("source")
            if st.source is not None else None}


def export_dialog(x: Exporter, what: str) -> None:
    path, _ = QFileDialog.getSaveFileName(
        x.parent, f"Export {what}", f"cuts_{what}.nii.gz",
        "NIfTI (*.nii.gz *.nii);;PNG (*.png)" + (";;DICOM SEG (*.dcm)" if what == "objects" else ""))
    if path:
        export(x, path, what)
