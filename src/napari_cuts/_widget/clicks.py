"""Objects and clicks of the CUTS dock widget: the "CUTS mask" layer.

:class:`Objects` is composed into :class:`~napari_cuts._widget.panel.CutsWidget`
(``widget.objects``). It turns mouse clicks on the result layers into mask updates
(:class:`~napari_cuts._widget.model.MaskModel`): a click replaces the mask with the
cluster under it, shift-click adds one, alt-click (or ctrl-click: many Linux desktops
take alt-click) removes one. In the 2D view the click is the data point under the
cursor (any slice of a volume: the mask is the 3D structure); in the 3D view it is the
voxel the user sees along the view ray (:func:`model.first_hit`): the first mask voxel
when the ray crosses the mask (the mask layer is drawn over the levels, one colour, as
an iso surface), else the first voxel of the cut-away levels that is not background.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InputError
from .model import MaskModel, first_hit
from .settings import MASK_NAME, click_mode, single_colour


class Objects:
    """Clicks -> mask, the mask layer and its size label, for widget ``w``."""

    def __init__(self, w) -> None:
        self.w = w
        self.model: Optional[MaskModel] = None
        self.layer = None

    # ---------------------------------------------------------------- state
    def reset(self, shape=None, per_slice: bool = False) -> None:
        self.model = MaskModel(shape, per_slice) if shape is not None else None
        self.layer = None

    @property
    def mask(self) -> Optional[np.ndarray]:
        return None if self.model is None else self.model.mask

    @property
    def clicks(self) -> list:
        return [] if self.model is None else self.model.clicks

    # ---------------------------------------------------------------- mouse
    def on_mouse(self, layer, event):
        """Mouse drag callback: a click (press and release without a drag) binarises."""
        w = self.w
        if getattr(layer, "mode", "pan_zoom") != "pan_zoom" or not w.results:
            return
        if getattr(event, "button", 1) != 1:
            return
        pos0 = np.asarray(event.position, float)
        displayed = tuple(getattr(event, "dims_displayed", ()) or ())
        three_d = len(displayed) == 3 and w.source is not None and w.source.volume
        view_direction = getattr(event, "view_direction", None)
        mode = click_mode(event.modifiers)
        dragged = False
        yield
        while event.type == "mouse_move":
            now = np.asarray(event.position, float)
            dragged = dragged or bool(np.max(np.abs(now - pos0)) > 1.0)
            yield
        if dragged:
            return
        if three_d and view_direction is not None:
            point = self.pick_3d(pos0, view_direction, displayed)
            if point is not None:
                w.click(point, mode)
        else:
            w.click(np.asarray(w.levels_layer.world_to_data(pos0), float), mode)

    def pick_3d(self, position, view_direction, dims_displayed=(0, 1, 2)):
        """The voxel (z, y, x) a click at world ``position`` along ``view_direction``
        lands on in the 3D view: the first shown voxel (levels or mask), or None."""
        w = self.w
        lay = w.levels_layer
        start, end = lay.get_ray_intersections(np.asarray(position, float),
                                               np.asarray(view_direction, float),
                                               list(dims_displayed), world=True)
        shown = lay.data
        mask = self.mask
        if mask is not None:
            # the mask is drawn over the levels (no depth test): a ray through it picks it
            hit = first_hit(lambda idx: mask[tuple(idx.T)], start, end, shown.shape)
            if hit is not None:
                return hit
        return first_hit(lambda idx: np.asarray(shown[tuple(idx.T)]) != 0, start, end,
                         shown.shape)

    # ---------------------------------------------------------------- click
    def click(self, point, mode: str = "replace") -> bool:
        """Binarise at ``point`` (data coordinates of the result layers). False if outside."""
        w = self.w
        if mode not in ("replace", "add", "remove"):
            raise InputError(f"mode must be 'replace', 'add' or 'remove', not {mode!r}.")
        if not w.results or self.model is None:
            return False
        idx = tuple(int(round(float(p))) for p in point)[-len(self.model.shape):]
        if len(idx) != len(self.model.shape) or any(
                not 0 <= i < n for i, n in zip(idx, self.model.shape)):
            return False
        if self.model.per_slice and idx[0] not in w.results:
            return False
        self.model.click(w.cluster_labels, idx, mode)
        self.show()
        return True

    def replay(self) -> None:
        """Replay the stored clicks at the current level ("mask follows slider")."""
        if self.model is None or not self.model.clicks:
            return
        w = self.w
        self.model.replay(w.cluster_labels,
                          (lambda p: p[0] in w.results) if self.model.per_slice else
                          (lambda p: True))
        self.show()

    # ----------------------------------------------------------------- layer
    def show(self) -> None:
        """Put the mask into the "CUTS mask" layer (made on first use) and the size label."""
        w = self.w
        mask = self.model.mask
        if self.layer is None or self.layer not in w.viewer.layers:
            self.layer = w.viewer.add_labels(mask.astype(np.uint8), name=MASK_NAME,
                                             opacity=0.7, **w._geometry())
            single_colour(self.layer)
            w._hook(self.layer)
            w.view3d.style_mask(self.layer)
            w.view3d.sync_image()
            # keep clicks going to the levels layer, not the new mask layer
            w.viewer.layers.selection.active = w.levels_layer
        else:
            data = self.layer.data
            if data.shape == mask.shape and data.dtype == np.uint8:
                np.copyto(data, mask, casting="unsafe")   # in place: no new layer data
                self.layer.refresh()
            else:
                self.layer.data = mask.astype(np.uint8)
        w.view3d.mask_changed()
        stats = self.stats()
        physical = w._has_physical_scale()
        if w.source.volume:
            w.area_label.setText(f"Mask: {stats['pixels']} voxels"
                                 + (f", {stats['ml']:.2f} mL" if physical else ""))
        else:
            w.area_label.setText(f"Mask: {stats['pixels']} pixels"
                                 + (f", {stats['mm2']:.2f} mm\u00b2" if physical else ""))
        w._recolor_phate()
        w._update_buttons()

    def stats(self) -> dict:
        """Mask size: ``pixels``, and ``mm2`` (2D) or ``ml`` (3D) from the layer scale."""
        w = self.w
        scale = w.levels_layer.scale if w.levels_layer is not None else (1.0, 1.0, 1.0)
        volume = w.source is not None and w.source.volume
        if self.model is None:
            return {"pixels": 0, "ml" if volume else "mm2": 0.0}
        return self.model.stats(scale, volume)
