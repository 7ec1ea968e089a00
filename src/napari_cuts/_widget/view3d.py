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
    """Follows the viewer's 2D/3D mode and camera for the results in ``state``.

    ``refresh_levels()`` rewrites the levels layer (the levels part's), ``mask_layer()``
    gives "CUTS mask" (or None), ``current_slice()`` the slice the 2D view shows. A
    change of the objects (``state.objects``) may move the cut."""

    def __init__(self, state, viewer, *, refresh_levels, mask_layer, current_slice) -> None:
        self.state = state
        self.viewer = viewer
        self.refresh_levels = refresh_levels
        self.mask_layer = mask_layer
        self.current_slice = current_slice
        self._cut: Optional[tuple[int, int]] = None
        self._hidden_image = None          # the image layers hidden for the 3D view (list)
        state.on("objects", self._on_objects)
        try:
            viewer.dims.events.ndisplay.connect(self._on_ndisplay)
            self.camera.events.angles.connect(self._on_camera)
        except Exception:  # noqa: BLE001 - a viewer stand-in without these events
            log.debug("napari-cuts: no ndisplay/camera events", exc_info=True)

    @property
    def camera(self):
        """The viewer's camera (``viewer.scene.camera`` from napari 0.9)."""
        scene = getattr(self.viewer, "scene", None)
        return getattr(scene, "camera", None) or self.viewer.camera

    @property
    def active(self) -> bool:
        """True when a volume's results are shown in the 3D view."""
        try:
            return self.state.one_volume and int(self.viewer.dims.ndisplay) == 3
        except RuntimeError:
            return False

    def cut(self) -> Optional[tuple[int, int]]:
        """``(z, side)`` of the cut-away for the levels layer, or None (2D view)."""
        if not self.active:
            return None
        objects = self.state.objects
        z = objects.centre_slice() if objects is not None else None
        if z is None:
            z = self.current_slice()
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
        st = self.state
        if st.levels_layer is not None and st.results and self._changed():
            self.refresh_levels()

    def shown(self, cut) -> None:
        """The levels layer now shows ``cut``."""
        self._cut = cut

    def mask_changed(self) -> None:
        self.refresh_if_changed()

    def _on_objects(self, _objects) -> None:
        try:
            self.mask_changed()          # the mask may have moved to other slices
        except RuntimeError:  # the widget is gone
            pass

    def sync_image(self) -> None:
        """Hide the grey image in 3D (shown again in 2D); the mask opaque in 3D."""
        st, layers = self.state, self.viewer.layers
        mask = self.mask_layer()
        if mask is not None and mask in layers:
            mask.opacity = 1.0 if self.active else 0.7
        if self.active and st.results:
            hidden = list(self._hidden_image or [])
            for lay in st.source.layers:
                if lay.visible and lay in layers:
                    lay.visible = False
                    hidden.append(lay)
            self._hidden_image = hidden or None
        elif self._hidden_image is not None:
            hidden, self._hidden_image = self._hidden_image, None
            for lay in hidden:
                if lay in layers:
                    lay.visible = True

    def _on_ndisplay(self, *_args) -> None:
        try:
            self.sync_image()
            self.refresh_if_changed()
        except RuntimeError:  # the widget is gone
            pass

    def _on_camera(self, *_args) -> None:
        try:
            if self.active:
                self.refresh_if_changed()
        except RuntimeError:
            pass
