"""The input of the CUTS dock widget: the "Image" layer and the layers used with it.

Co-registered MRI sequences (T1, T2, FLAIR ...) open as separate image layers (one per
file, or one per volume of a 4D NIfTI). Ticking layers in the "Also use" list beside
the chosen image makes them ONE input, one channel each: :func:`source_from_layers`
checks them with :func:`napari_cuts.sequences.stack_sequences` (one grid: the same
shape, the same position in space) and stacks them; the encoder normalises every
channel on its own, and there is one hierarchy. The first layer (the "Image") gives
the geometry of the result layers and exports; a click works in any of the layers.

:class:`Inputs` (composed into the widget as ``widget.inputs``) keeps the list: every
other grey image layer is offered (a layer on another grid is refused at Segment, with
the message naming both layers); when the image is one sequence of a 4D NIfTI, its
sibling sequences are ticked at first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from ..images import MAX_CHANNELS
from .settings import Source, source_from_layer


def _data(layer):
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def spatial_ndim(layer) -> int:
    return _data(layer).ndim - (1 if getattr(layer, "rgb", False) else 0)


def world_affine(layer, n: int) -> np.ndarray:
    """4x4 index ``(z, y, x, 1)`` (``(0, y, x, 1)`` in 2D) -> napari world coordinates of
    ``layer`` (its scale, translate, rotation and affine together)."""
    o = np.asarray(layer.data_to_world(np.zeros(n)), float)[-n:]
    cols = [np.asarray(layer.data_to_world(np.eye(n)[i]), float)[-n:] - o for i in range(n)]
    m = np.eye(4)
    k = 3 - n
    m[k:3, k:3] = np.stack(cols, axis=1)
    m[k:3, 3] = o
    return m


def layer_image_data(layer, file_affine: bool):
    """An :class:`~napari_cuts.io.ImageData` of an image layer for
    :func:`~napari_cuts.sequences.stack_sequences`, named after the layer.
    ``file_affine``: use the affine its file gave (our reader's metadata), else the
    layer's own transform."""
    from ..io import ImageData

    arr = np.asarray(_data(layer))
    rgb = bool(getattr(layer, "rgb", False))
    n = arr.ndim - (1 if rgb else 0)
    md = getattr(layer, "metadata", None) or {}
    affine = None
    if n in (2, 3):
        affine = (np.asarray(md["affine"], float) if file_affine
                  else world_affine(layer, n))
    label = f"layer '{layer.name}'".replace("/", "_")
    return ImageData(data=arr, affine=affine,
                     spacing=tuple(abs(float(v)) for v in np.asarray(layer.scale, float)[-n:]),
                     rgb=rgb, source=label, format=str(md.get("format") or "napari"),
                     metadata={"name": layer.name})


def source_from_layers(layers) -> Source:
    """One :class:`Source` from one image layer, or from several co-registered ones (one
    channel each, the first layer's geometry). Raises :class:`InputError` naming the
    layers when they are not on one grid, or one is RGB, constant or all NaN."""
    from ..sequences import stack_sequences
    from ..volume import check_volume

    layers = list(layers)
    if len(layers) == 1:
        return source_from_layer(layers[0])
    file_affine = all(isinstance((lay.metadata or {}).get("affine"), (list, tuple, np.ndarray))
                      for lay in layers)
    images = [layer_image_data(lay, file_affine) for lay in layers]
    stacked = stack_sequences(images)
    data = np.asarray(stacked.data, np.float32)
    names = list(stacked.sequences or [])
    first = layers[0]
    if stacked.ndim_spatial == 2:
        if data.shape[-1] > MAX_CHANNELS:
            raise InputError(f"{data.shape[-1]} layers chosen together ({', '.join(names)}); "
                             f"2D slices take at most {MAX_CHANNELS}: untick some in "
                             "'Also use'.")
        return Source(first, [data], False, kind="image", layers=layers, sequences=names)
    check_volume(data, f"layers {', '.join(repr(n) for n in names)}")
    spacing = tuple(abs(float(v)) for v in np.asarray(first.scale, float)[-3:])
    return Source(first, list(data), True, kind="volume", array=data, spacing=spacing,
                  layers=layers, sequences=names)


def layer_sources(layers) -> list[dict]:
    """What a session records of each layer of a source: ``{"name", "path",
    "sequence_index"}`` (path: the file the layer was read from, or None)."""
    out = []
    for lay in layers:
        md = getattr(lay, "metadata", None) or {}
        src = md.get("source")
        path = str(Path(str(src)).expanduser().resolve()) if src and Path(str(src)).exists() \
            else None
        idx = md.get("sequence_index")
        out.append({"name": lay.name, "path": path,
                    "sequence_index": None if idx is None else int(idx)})
    return out


class Inputs:
    """The "Also use" list (``also_list``, a checkable QListWidget, and its label
    ``also_label``): which other image layers join the chosen one.

    ``image_layer()`` gives the chosen "Image" layer (or None), ``image_layers()`` the
    open image layers."""

    def __init__(self, also_list, also_label, *, image_layer, image_layers) -> None:
        self.also_list = also_list
        self.also_label = also_label
        self.image_layer = image_layer
        self.image_layers = image_layers
        self._primary: Optional[str] = None
        self._offered: set = set()         # candidates already shown for this image

    def candidates(self) -> list:
        """Image layers that can join the chosen one: grey, not the chosen one."""
        primary = self.image_layer()
        return [lay for lay in self.image_layers()
                if lay is not primary and not getattr(lay, "rgb", False)]

    def refresh(self) -> None:
        """Rebuild the list after the layers or the chosen image changed (ticks kept)."""
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QListWidgetItem

        lst = self.also_list
        primary = self.image_layer()
        pname = None if primary is None else primary.name
        ticked = set(self.ticked_names())
        if pname != self._primary:
            ticked, self._offered = set(), set()
        self._primary = pname
        cands = self.candidates() if primary is not None and not getattr(primary, "rgb", False) \
            else []
        # a sibling sequence of the image (same 4D file) is ticked when it is first offered
        siblings = set(self._siblings(primary)) if primary is not None else set()
        ticked |= {lay.name for lay in cands if lay.name in siblings
                   and lay.name not in self._offered}
        self._offered = {lay.name for lay in cands}
        lst.blockSignals(True)
        lst.clear()
        for lay in cands:
            item = QListWidgetItem(lay.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if lay.name in ticked
                               else Qt.CheckState.Unchecked)
            shape = " x ".join(str(s) for s in _data(lay).shape)
            item.setToolTip(f"{lay.name}: {shape}; tick to segment it together with "
                            f"'{pname}' (one channel each, one grid).")
            lst.addItem(item)
        lst.blockSignals(False)
        visible = bool(cands)
        lst.setVisible(visible)
        self.also_label.setVisible(visible)

    def _siblings(self, primary) -> list[str]:
        """The other sequences of the 4D file ``primary`` is one sequence of."""
        md = primary.metadata or {}
        if md.get("sequence_index") is None or not md.get("source"):
            return []
        return [lay.name for lay in self.candidates()
                if (lay.metadata or {}).get("source") == md["source"]
                and (lay.metadata or {}).get("sequence_index") is not None]

    def ticked_names(self) -> list[str]:
        from qtpy.QtCore import Qt

        lst = self.also_list
        return [lst.item(i).text() for i in range(lst.count())
                if lst.item(i).checkState() == Qt.CheckState.Checked]

    def set_also(self, names) -> None:
        """Tick exactly the layers ``names`` (as the user would)."""
        from qtpy.QtCore import Qt

        want = set(names)
        lst = self.also_list
        missing = want - {lst.item(i).text() for i in range(lst.count())}
        if missing:
            raise InputError(f"no grey image layer named {', '.join(sorted(missing))} to use "
                             "with the chosen image.")
        for i in range(lst.count()):
            it = lst.item(i)
            it.setCheckState(Qt.CheckState.Checked if it.text() in want
                             else Qt.CheckState.Unchecked)

    def chosen(self) -> list:
        """The chosen image layer first, then the ticked ones (in layer-list order)."""
        primary = self.image_layer()
        if primary is None:
            return []
        names = set(self.ticked_names())
        return [primary] + [lay for lay in self.candidates() if lay.name in names]
