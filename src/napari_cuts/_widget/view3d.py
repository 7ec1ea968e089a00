"""The 3D view of a volume in the CUTS dock widget (composed as ``widget.view3d``).

What the 3D view shows (the rules are in :mod:`napari_cuts._widget.model`):

- the levels layer without the background (air outside the body is label 0, i.e.
  transparent), rendered as iso surfaces, with a cut-away: the half of the volume on
  the camera's side of one axial slice is removed (the middle slice of the mask, else
  the slice the 2D view showed), so the levels are read on the cut face;
- the mask as its own layer, in its object's colour, iso surface, not cut, drawn over
  the levels (no depth test), opaque in 3D: the selected structure is seen whole, in
  3D, through the cut face;
- the grey image layer is hidden while the 3D view shows a segmented volume (its
  maximum-intensity rendering is a white fog over everything) and shown again in 2D
  (unless the user changed its visibility in between).

The cut is recomputed when the view switches between 2D and 3D, when the mask moves
to other slices, and when the camera turns to the other side of the volume (only
then: the camera's angle events fire while dragging, a side change is rare).
"""

from __future__ import annotations

import logging
from typing import Optional

from .model import cut_side

log = logging.getLogger(__name__)


class View3D:
    """Follows the viewer's 2D/3D mode and camera for widget ``w``."""

    def __init__(self, w) -> None:
        self.w = w
        self._cut: Optional[tuple[int, int]] = None
        self._hidden_image = None          # the image layers hidden for the 3D view (list)
        try:
            w.viewer.dims.events.ndisplay.connect(self._on_ndisplay)
            self.camera.events.angles.connect(self._on_camera)
        except Exception:  # noqa: BLE001 - a viewer stand-in without these events
            log.debug("napari-cuts: no ndisplay/camera events", exc_info=True)

    @property
    def camera(self):
        """The viewer's camera (``viewer.scene.camera`` from napari 0.9)."""
        scene = getattr(self.w.viewer, "scene", None)
        return getattr(scene, "camera", None) or self.w.viewer.camera

    @property
    def active(self) -> bool:
        """True when a volume's results are shown in the 3D view."""
        w = self.w
        try:
            return (w.source is not None and w.source.one_volume
                    and int(w.viewer.dims.ndisplay) == 3)
        except RuntimeError:
            return False

    def cut(self) -> Optional[tuple[int, int]]:
        """``(z, side)`` of the cut-away for the levels layer, or None (2D view)."""
        if not self.active:
            return None
        w = self.w
        z = w.objects.model.centre_slice() if w.objects.model is not None else None
        if z is None:
            z = w._current_slice(w.source)
        return int(z), cut_side(self.camera.view_direction)

    def style_levels(self, layer) -> None:
        try:
            layer.rendering = "iso_categorical"
        except Exception:  # noqa: BLE001 - cosmetic only
            pass

    def style_mask(self, layer) -> None:
        try:
            layer.rendering = "iso_categorical"
            layer.blending = "translucent_no_depth"   # drawn over the levels in 3D
        except Exception:  # noqa: BLE001 - cosmetic only
            pass

    def _changed(self) -> bool:
        return self.cut() != self._cut

    def refresh_if_changed(self) -> None:
        w = self.w
        if w.levels_layer is not None and w.results and self._changed():
            w._refresh_levels()

    def shown(self, cut) -> None:
        """The levels layer now shows ``cut``."""
        self._cut = cut

    def mask_changed(self) -> None:
        self.refresh_if_changed()

    def sync_image(self) -> None:
        """Hide the grey image in 3D (shown again in 2D); the mask opaque in 3D."""
        w = self.w
        mask = w.mask_layer
        if mask is not None and mask in w.viewer.layers:
            mask.opacity = 1.0 if self.active else 0.7
        if self.active and w.results:
            hidden = list(self._hidden_image or [])
            for lay in w.source.layers:
                if lay.visible and lay in w.viewer.layers:
                    lay.visible = False
                    hidden.append(lay)
            self._hidden_image = hidden or None
        elif self._hidden_image is not None:
            layers, self._hidden_image = self._hidden_image, None
            for lay in layers:
                if lay in w.viewer.layers:
                    lay.visible = True

    def _on_ndisplay(self, *_args) -> None:
        try:
            self.sync_image()
            self.refresh_if_changed()
            self.w.objects.style_levels()     # outlines in the 2D view only
        except RuntimeError:  # the widget is gone
            pass

    def _on_camera(self, *_args) -> None:
        try:
            if self.active:
                self.refresh_if_changed()
        except RuntimeError:
            pass
