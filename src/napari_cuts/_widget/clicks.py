"""Objects and clicks of the CUTS dock widget: the "CUTS labels" and "CUTS mask" layers.

:class:`Objects` is composed into :class:`~napari_cuts._widget.panel.CutsWidget`
(``widget.objects``). Its model is an :class:`~napari_cuts._widget.objects.ObjectSet`
(numpy only): several objects, each with its own id, name, colour, clicks and whole
mask, and an undo/redo history. Mouse clicks on the result layers write the structure
under the pointer into the current object: a click replaces the object's mask with it,
shift-click adds, alt-click (or ctrl-click: many Linux desktops take alt-click) removes.
In the 2D view the click is the data point under the cursor (any slice of a volume:
the structure is 3D); in the 3D view it is the voxel the user sees along the view ray
(:func:`model.first_hit`): the first mask voxel when the ray crosses the mask, else the
first voxel of the cut-away levels that is not background.

Layers: "CUTS labels" shows every object (its id, its colour; a later object on top
where objects overlap); "CUTS mask" is the current object's own mask (one colour,
yellow), which export-as-mask writes. Grow (``]``) and shrink (``[``) move each clicked
structure of the current object one step along its own lineage; ctrl+z / ctrl+shift+z
undo and redo, bound on the viewer and on the result layers (a Labels layer's own
ctrl+z would otherwise take the key).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InputError
from .model import first_hit
from .objects import HierarchyStructures, ObjectSet, measure
from .settings import LABELS_NAME, MASK_NAME, click_mode, single_colour

#: Keys (napari key-binding names) -> what they do.
KEYS = {"Control-Z": "undo", "Control-Shift-Z": "redo", "]": "grow", "[": "shrink"}


class Objects:
    """Objects, clicks -> masks, the mask and labels layers, for widget ``w``."""

    def __init__(self, w) -> None:
        self.w = w
        self.model: Optional[ObjectSet] = None
        self.layer = None            # "CUTS mask": the current object
        self.labels_layer = None     # "CUTS labels": every object
        self._keyed: list = []

    # ---------------------------------------------------------------- state
    def reset(self, shape=None, per_slice: bool = False) -> None:
        self.model = ObjectSet(shape, per_slice) if shape is not None else None
        self.layer = None
        self.labels_layer = None

    @property
    def current(self):
        return None if self.model is None else self.model.current

    @property
    def mask(self) -> Optional[np.ndarray]:
        obj = self.current
        return None if obj is None else obj.mask

    @property
    def clicks(self) -> list:
        obj = self.current
        return [] if obj is None else [(c.mode, c.point) for c in obj.clicks]

    def structures(self) -> HierarchyStructures:
        w = self.w
        per_slice = bool(self.model is not None and self.model.per_slice)
        return HierarchyStructures(lambda z: w.results[0 if not per_slice else z].hierarchy,
                                   per_slice, persistent_for=w.persistent_map)

    def _click_level(self) -> Optional[int]:
        w = self.w
        return None if w.persistent_check.isChecked() else int(w.level)

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

    # ------------------------------------------------------------- changes
    def click(self, point, mode: str = "replace", connected: Optional[bool] = None) -> bool:
        """Write the structure at ``point`` (data coordinates of the result layers) into
        the current object. ``connected``: only the part of the cluster connected to the
        point (default: the "Connected part only" box). False if outside."""
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
        if connected is None:
            connected = w.connected_check.isChecked()
        self.model.click(self.structures(), idx, mode, self._click_level(),
                         connected=bool(connected))
        self.show()
        return True

    def step(self, step: int) -> bool:
        """Grow (+1) or shrink (-1) each clicked structure of the current object along
        its own lineage (the global slider stays). False when nothing moves."""
        if self.model is None or self.current is None or not self.w.results:
            return False
        moved = self.model.step(self.structures(), int(step))
        if moved:
            self.show()
        else:
            self.w.progress_label.setText(
                "Nothing to " + ("grow: the structure is the whole image." if step > 0 else
                                 "shrink: the structure is the finest.") if self.current.clicks
                else "Click a structure first.")
        return moved

    def new_object(self, name: Optional[str] = None) -> Optional[int]:
        if self.model is None:
            self.w._notify("error", "Segment an image (or open a session) first.")
            return None
        i = self.model.new_object(name)
        self.show()
        return i

    def delete(self, label_id: Optional[int] = None) -> bool:
        if self.model is None:
            return False
        ok = self.model.delete(self.model.current_id if label_id is None else int(label_id))
        if ok:
            self.show()
        return ok

    def rename(self, label_id: int, name: str) -> None:
        if self.model is not None:
            self.model.rename(int(label_id), str(name))
            self.show()

    def select(self, label_id: int) -> None:
        if self.model is not None and self.model.get(int(label_id)) is not None:
            self.model.select(int(label_id))
            self.show()

    def undo(self) -> bool:
        if self.model is None or not self.model.undo():
            return False
        self.show()
        return True

    def redo(self) -> bool:
        if self.model is None or not self.model.redo():
            return False
        self.show()
        return True

    def replay(self) -> None:
        """The current object's clicks at the current level ("mask follows slider")."""
        if self.model is None or self.current is None or not self.current.clicks:
            return
        if self.model.relevel(self.structures(), self._click_level()):
            self.show()

    # ---------------------------------------------------------------- keys
    def bind_keys(self, layers=()) -> None:
        """ctrl+z, ctrl+shift+z, [ and ] on the viewer and on ``layers`` (the active
        layer's key map comes first in napari: a Labels layer binds ctrl+z and [ ])."""
        w = self.w

        def action(name):
            def run(*_args):
                try:
                    {"undo": w.undo, "redo": w.redo, "grow": w.grow,
                     "shrink": w.shrink}[name]()
                except RuntimeError:    # the widget is gone
                    pass
            run.__name__ = f"napari_cuts_{name}"
            return run

        for target in (w.viewer, *layers):
            if target is None or any(t is target for t in self._keyed):
                continue
            for key, name in KEYS.items():
                try:
                    target.bind_key(key, action(name), overwrite=True)
                except Exception:  # noqa: BLE001 - a missing binding is not fatal
                    pass
            self._keyed.append(target)

    # ----------------------------------------------------------------- layers
    def _layer_gone(self, layer) -> bool:
        return layer is None or layer not in self.w.viewer.layers

    def adopt_labels_layer(self, layer) -> None:
        """Use ``layer`` (a "CUTS labels" layer read from a session) as the labels layer."""
        self.labels_layer = layer
        self.w._hook(layer)
        self.bind_keys([layer])

    def show(self) -> None:
        """Put the objects into the layers (made on first use), the list and the labels."""
        w = self.w
        if self.model is None:
            return
        self._show_labels()
        self._show_mask()
        w.view3d.mask_changed()
        obj = self.current
        stats = self.stats()
        physical = w._has_physical_scale()
        who = f"{obj.name} (id {obj.id})" if obj is not None else "Mask"
        if obj is None or obj.mask is None:
            w.area_label.setText(f"{who}: empty")
        elif w.source.volume:
            w.area_label.setText(f"{who}: {stats['pixels']} voxels"
                                 + (f", {stats['ml']:.2f} mL" if physical else ""))
        else:
            w.area_label.setText(f"{who}: {stats['pixels']} pixels"
                                 + (f", {stats['mm2']:.2f} mm\u00b2" if physical else ""))
        w.object_list.show_objects(self)
        w._recolor_phate()
        w._update_buttons()

    def _show_labels(self) -> None:
        w = self.w
        model = self.model
        dtype = model.label_dtype()
        if self._layer_gone(self.labels_layer):
            if not model.objects:
                return
            self.labels_layer = w.viewer.add_labels(model.labels(), name=LABELS_NAME,
                                                    opacity=0.55, **w._geometry())
            w._hook(self.labels_layer)
            self.bind_keys([self.labels_layer])
            w.view3d.style_levels(self.labels_layer)
            w.viewer.layers.selection.active = w.levels_layer
        else:
            data = self.labels_layer.data
            if isinstance(data, np.ndarray) and data.shape == model.shape and data.dtype == dtype:
                model.labels(out=data)     # in place: no new layer data
                self.labels_layer.refresh()
            else:
                self.labels_layer.data = model.labels()
        self._colour_labels()

    def _colour_labels(self) -> None:
        try:
            from napari.utils.colormaps import DirectLabelColormap

            colours = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
            colours.update({o.id: tuple(o.colour) for o in self.model.objects})
            self.labels_layer.colormap = DirectLabelColormap(color_dict=colours)
        except Exception:  # noqa: BLE001 - cosmetic only
            pass

    def _show_mask(self) -> None:
        w = self.w
        obj = self.current
        if obj is None or obj.mask is None:
            mask = np.zeros(self.model.shape, bool)
            if self._layer_gone(self.layer):
                return
        else:
            mask = obj.mask
        if self._layer_gone(self.layer):
            self.layer = w.viewer.add_labels(mask.astype(np.uint8), name=MASK_NAME,
                                             opacity=0.7, **w._geometry())
            single_colour(self.layer)
            w._hook(self.layer)
            self.bind_keys([self.layer])
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

    def stats(self, label_id: Optional[int] = None) -> dict:
        """Size of an object's own mask (the current one by default): ``pixels``, and
        ``mm2`` (2D) or ``ml`` (3D) from the layer scale."""
        w = self.w
        scale = w.levels_layer.scale if w.levels_layer is not None else (1.0, 1.0, 1.0)
        volume = w.source is not None and w.source.volume
        obj = None if self.model is None else self.model.get(
            self.model.current_id if label_id is None else label_id)
        return measure(None if obj is None else obj.mask, scale, volume)
