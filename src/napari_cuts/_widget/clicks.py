"""Objects and their prompts in the CUTS dock widget: the result layers of the objects.

:class:`Objects` is composed into :class:`~napari_cuts._widget.panel.CutsWidget`
(``widget.objects``). Its model is an :class:`~napari_cuts._widget.objects.ObjectSet`
(numpy only): several objects, each with its own id, name, colour, prompts and whole
mask, and an undo/redo history. **An object is its prompts**: a click or shift-click
on the levels or the image adds a positive point to the current object, alt-click (or
ctrl-click: many Linux desktops take alt-click) a negative one; scribbles are painted
into "CUTS prompts" and points can be deleted in "CUTS points" (:mod:`.promptlayers`).
Every change of the prompts solves the object again from all of them with
:func:`napari_cuts.prompts.segment_from_prompts` at the slider's level (the tool's own
level with the persistent view), off the GUI thread; a newer prompt supersedes a solve
still running (:mod:`.prompts`). One positive point alone is the tool's click,
answered at once from the hierarchy in memory (what the solver answers for it). A solver error (:class:`~napari_cuts.errors.InputError`
naming the prompt) is shown under the object list and the mask stays.

In the 2D view a click is the data point under the cursor (any slice of a volume); in
the 3D view it is the voxel the user sees along the view ray (:func:`model.first_hit`):
the first mask voxel when the ray crosses the mask, else the first voxel of the
cut-away levels that is not background.

Layers: "CUTS labels" shows every object (its id, its colour; a later object on top
where objects overlap); "CUTS mask" is the current object's own mask, in the object's
colour (the object list's swatch), which export-as-mask writes. While an object has
prompts the levels layer is dimmed and, in the 2D view, drawn as outlines, so that the
object is unmistakable over clusters of any colour. Grow (``]``) and shrink (``[``)
move the slider one real merge up or down the lineage of the object's first positive
point (in sorted order) and solve it there; ctrl+z / ctrl+shift+z undo and redo the
prompts, bound on the viewer and on the result layers (a Labels layer's own ctrl+z
would otherwise take the key).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from ..errors import CutsError, InputError
from .model import first_hit
from .objects import ObjectSet, Prompts, measure
from .promptlayers import PromptLayers
from .prompts import Resolver, WorkFolders, has_prompt_data, one_click, solve_prompts
from .settings import LABELS_NAME, MASK_NAME, click_mode, layer_geometry, physical_scale, single_colour

log = logging.getLogger(__name__)

#: Keys (napari key-binding names) -> what they do.
KEYS = {"Control-Z": "undo", "Control-Shift-Z": "redo", "]": "grow", "[": "shrink"}
#: Opacity of the levels layer while an object is edited (dimmed under the object).
DIMMED_OPACITY = 0.2
#: Click modes: what each adds ("replace" starts the object's prompts over).
MODES = {"positive": True, "add": True, "replace": True, "negative": False, "remove": False}


class MouseHooks:
    """The layers whose clicks go to ``callback`` (napari mouse-drag callbacks)."""

    def __init__(self, callback) -> None:
        self.callback = callback
        self.layers: list = []

    def hook(self, layer) -> None:
        if layer is not None and self.callback not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.append(self.callback)
            self.layers.append(layer)

    def unhook(self) -> None:
        for lay in self.layers:
            if self.callback in lay.mouse_drag_callbacks:
                lay.mouse_drag_callbacks.remove(self.callback)
        self.layers = []


class Objects:
    """Objects, prompts -> masks, the mask and labels layers.

    Reads and writes the shared :class:`~napari_cuts._widget.state.WidgetState`
    (``state.objects`` is the :class:`ObjectSet`; the source, results, level and levels
    layer are read from it) and announces every change of the objects with
    ``state.objects_changed()``: the object list, the 3D view and the panel's buttons
    listen. Services: the ``viewer`` (layers, key bindings), ``notify(level, text)``,
    ``status(text)`` (the progress line), ``hook(layer)`` (route a layer's clicks here),
    ``view3d`` (the 3D styles) and ``run_sync()`` (solve on the calling thread)."""

    def __init__(self, state, viewer, *, notify, status, hook, view3d,
                 run_sync=lambda: False) -> None:
        self.state = state
        self.viewer = viewer
        self.notify = notify
        self.status = status
        self.hook = hook
        self.view3d = view3d
        self.run_sync = run_sync
        self.layer = None            # "CUTS mask": the current object
        self.labels_layer = None     # "CUTS labels": every object
        self._keyed: list = []
        self.prompt_layers = PromptLayers(state, viewer, hook=hook, bind_keys=self.bind_keys,
                                          set_points=self.set_points,
                                          set_scribbles=self.set_scribbles)
        self.folders = WorkFolders()
        self.resolver = Resolver(self._solve, self._solved, self._failed)
        self._stepping = False
        self._levels_opacity: Optional[float] = None   # the levels' own, while dimmed
        self._mask_colour: Optional[tuple] = None      # (mask layer, colour shown)
        state.on("follow", self._on_follow)
        state.on("level", self._on_view)
        state.on("persistent", self._on_view)
        try:
            viewer.dims.events.ndisplay.connect(self._on_ndisplay)
        except Exception:  # noqa: BLE001 - a viewer stand-in without the event
            log.debug("napari-cuts: no ndisplay event", exc_info=True)

    # ---------------------------------------------------------------- state
    @property
    def model(self) -> Optional[ObjectSet]:
        """The objects (``state.objects``), None before results."""
        return self.state.objects

    def reset(self, shape=None, per_slice: bool = False) -> None:
        """New results (``shape``) or none: the objects, the folders and the solves go."""
        self.state.objects = ObjectSet(shape, per_slice) if shape is not None else None
        self.layer = None
        self.labels_layer = None
        self.prompt_layers.reset()
        self.resolver.forget()
        self.folders.clear()
        self._levels_opacity = None
        self._mask_colour = None

    def close(self, *_args) -> None:
        """The widget closes: stop solving, remove the temporary folders."""
        self.resolver.stop()
        self.folders.clear()

    @property
    def current(self):
        return None if self.model is None else self.model.current

    @property
    def mask(self) -> Optional[np.ndarray]:
        obj = self.current
        return None if obj is None else obj.mask

    @property
    def clicks(self) -> list:
        """The current object's points: ``("positive" | "negative", point)``."""
        obj = self.current
        return [] if obj is None else list(obj.clicks)

    @property
    def prompts(self) -> Prompts:
        """The current object's prompts (empty without an object)."""
        obj = self.current
        return Prompts() if obj is None else obj.prompts

    @property
    def has_prompts(self) -> bool:
        return not self.prompts.empty

    def _click_level(self) -> Optional[int]:
        return self.state.click_level

    # -------------------------------------------------------------- folders
    def results_ready(self, i: int, res) -> None:
        """Hierarchy ``i`` arrived (Segment): write its working folder in the background
        (the hierarchy and the image on its grid) and show the prompt layers."""
        src = self.state.source
        if src.one_volume:
            image, spacing = src.array, src.spacing
        else:
            image = src.slices[i]
            spacing = tuple(abs(float(v)) for v in np.asarray(src.layer.scale, float)[-2:])
        key = i if self.model is not None and self.model.per_slice else 0
        self.folders.prepare(key, res.hierarchy, image, spacing, sync=self.run_sync())
        self.prompt_layers.ensure()

    def use_folder(self, folder, hierarchy) -> None:
        """Solve in an opened session or segment folder (``hierarchy`` read from it);
        one without ``prompts.npz`` gets a working folder made from the image."""
        if folder is not None and has_prompt_data(folder):
            self.folders.use(0, folder)
            return
        src = self.state.source
        image = src.array if src.one_volume else src.slices[0]
        n = len(hierarchy.shape)
        spacing = tuple(abs(float(v)) for v in np.asarray(src.layer.scale, float)[-n:])
        hfile = None if folder is None else (folder / "hierarchy.npz")
        self.folders.prepare(0, hierarchy, image, spacing, hierarchy_file=hfile,
                             sync=self.run_sync())

    def prompt_file(self):
        """The ``prompts.npz`` the objects are solved with (waiting while it is written),
        or None when there is none (a stack segmented image by image)."""
        if self.model is None or self.model.per_slice:
            return None
        try:
            return self.folders.get(0) / "prompts.npz"
        except CutsError:
            return None

    # ---------------------------------------------------------------- mouse
    def on_mouse(self, layer, event):
        """Mouse drag callback: a click (press and release without a drag) is a prompt."""
        st = self.state
        if getattr(layer, "mode", "pan_zoom") != "pan_zoom" or not st.results:
            return
        if getattr(event, "button", 1) != 1:
            return
        pos0 = np.asarray(event.position, float)
        displayed = tuple(getattr(event, "dims_displayed", ()) or ())
        three_d = len(displayed) == 3 and st.volume
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
                self.click(point, mode)
        else:
            self.click(np.asarray(st.levels_layer.world_to_data(pos0), float), mode)

    def pick_3d(self, position, view_direction, dims_displayed=(0, 1, 2)):
        """The voxel (z, y, x) a click at world ``position`` along ``view_direction``
        lands on in the 3D view: the first shown voxel (levels or mask), or None."""
        lay = self.state.levels_layer
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

    # -------------------------------------------------------------- prompts
    def click(self, point, mode: str = "positive") -> bool:
        """A point prompt at ``point`` (data coordinates of the result layers) for the
        current object: ``"positive"`` (or ``"add"``), ``"negative"`` (or ``"remove"``),
        or ``"replace"`` (the object's prompts start over from this positive point).
        False if outside the image."""
        results = self.state.results
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}.")
        if not results or self.model is None:
            return False
        idx = tuple(int(round(float(p))) for p in point)[-len(self.model.shape):]
        if len(idx) != len(self.model.shape) or any(
                not 0 <= i < n for i, n in zip(idx, self.model.shape)):
            return False
        if self.model.per_slice and idx[0] not in results:
            return False
        obj = self.current
        base = Prompts() if mode == "replace" or obj is None else obj.prompts
        new = base.add(idx, MODES[mode])
        if obj is not None and new is obj.prompts:
            return True                                  # that prompt is there already
        self.change(new)
        return True

    def set_points(self, positive, negative) -> bool:
        """The current object's points are these (an edit of "CUTS points")."""
        if self.model is None:
            return False
        new = self.prompts.with_points(positive, negative)
        if self.current is not None and new.same(self.current.prompts):
            return False
        self.change(new)
        return True

    def set_scribbles(self, dense) -> bool:
        """The current object's scribbles are ``dense`` (a stroke in "CUTS prompts")."""
        if self.model is None or dense is None or tuple(np.shape(dense)) != self.model.shape:
            return False
        new = self.prompts.with_scribbles(dense)
        if self.current is not None and new.same(self.current.prompts):
            return False
        if self.current is None and new.empty:
            return False
        self.change(new)
        return True

    def clear(self) -> bool:
        """"Clear prompts": the current object starts over (one undo step)."""
        if self.model is None or self.current is None or self.current.prompts.empty:
            return False
        self.change(Prompts())
        return True

    def change(self, prompts: Prompts) -> None:
        """Give the current object (a new one when there is none) ``prompts``, solved at
        the slider's level: one undo step."""
        obj = self.model.set_prompts(prompts, self._click_level())
        self._request(obj)
        self.show()

    # -------------------------------------------------------------- solving
    def _request(self, obj) -> None:
        if obj is None or obj.prompts.empty:
            return
        model = self.model
        results = self.state.results
        quick = one_click(lambda z: results[z].hierarchy, obj.prompts, obj.level,
                          model.shape, model.per_slice)
        if quick is not None:                 # the tool's click: at once, as always
            self.resolver.supersede(obj.id)
            model.set_mask(obj.id, obj.prompts, obj.level, quick)
            return
        self.resolver.run_sync = bool(self.run_sync())
        if not self.resolver.run_sync:
            self.message("Solving...")
        self.resolver.request(obj.id, obj.prompts, obj.level)

    def _resolve_unsolved(self) -> None:
        if self.model is not None:
            for obj in self.model.unsolved():
                self._request(obj)

    def _solve(self, req) -> np.ndarray:
        """Worker thread: the mask of ``req``'s prompts."""
        model = self.model
        if model is None:
            raise InputError("the results are gone.")
        n_levels = {z: r.hierarchy.n_levels for z, r in list(self.state.results.items())}
        return solve_prompts(self.folders, req.prompts, req.level, model.shape,
                             model.per_slice, n_levels)

    def _solved(self, req, mask) -> None:
        applied = self.model is not None and self.model.set_mask(req.label_id, req.prompts,
                                                                 req.level, mask)
        self._settle_message()
        if applied:
            self.show()

    def _settle_message(self) -> None:
        """Once nothing waits: the current object's solver error, or nothing."""
        if not self.resolver.waiting:
            obj = self.current
            self.message(obj.error + " The mask is unchanged."
                         if obj is not None and obj.error else "")

    def _failed(self, req, exc) -> None:
        if isinstance(exc, CutsError):
            text = str(exc)
        else:
            log.error("napari-cuts: the prompts could not be solved",
                      exc_info=(type(exc), exc, exc.__traceback__))
            text = f"the prompts could not be solved: {type(exc).__name__}: {exc}"
        if self.model is not None and self.model.set_error(req.label_id, req.prompts,
                                                           req.level, text):
            self.message(text + " The mask is unchanged.")
            self.notify("warning", text)
            self.show()
        else:
            self._settle_message()           # a stale answer

    def message(self, text: str) -> None:
        """Show ``text`` under the object list (solver messages): ``state.object_message``."""
        self.state.object_message = text

    # -------------------------------------------------------------- changes
    def step(self, step: int) -> bool:
        """Grow (+1) or shrink (-1): the slider one real merge up or down the lineage of
        the current object's first positive point (sorted order), the object solved at
        that level (one undo step). False when nothing moves."""
        st = self.state
        obj = self.current
        if self.model is None or obj is None or not st.results or not obj.prompts.positive:
            self.status("Click a structure first.")
            return False
        p = min(obj.prompts.positive)
        per_slice = self.model.per_slice
        hier = st.results[p[0] if per_slice else 0].hierarchy
        local = p[1:] if per_slice else p
        start = obj.level if obj.level is not None else hier.click_level(local, connected=True)
        start = int(min(max(int(start), 0), hier.n_levels - 1))
        new = int(hier.step_level(local, start, int(step), connected=True))
        if new == start:
            self.status("Nothing to " + ("grow: the structure is the whole image."
                                                      if step > 0 else
                                                      "shrink: the structure is the finest."))
            return False
        self._stepping = True
        try:
            st.persistent = False      # the levels part shows the change (and the box)
            st.level = new
        finally:
            self._stepping = False
        moved = self.model.relevel(new, record=True)
        if moved is not None:
            self._request(moved)
        self.show()
        return True

    def new_object(self, name: Optional[str] = None) -> Optional[int]:
        if self.model is None:
            self.notify("error", "Segment an image (or open a session) first.")
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
        self._resolve_unsolved()
        self.show()
        return True

    def redo(self) -> bool:
        if self.model is None or not self.model.redo():
            return False
        self._resolve_unsolved()
        self.show()
        return True

    def replay(self) -> None:
        """The current object's prompts at the slider's level ("mask follows slider")."""
        if self._stepping or self.model is None or self.current is None:
            return
        moved = self.model.relevel(self._click_level())
        if moved is not None:
            self._request(moved)
            self.show()

    def _on_follow(self, on: bool) -> None:
        if on:
            self.replay()

    def _on_view(self, _value) -> None:
        """The level or the persistent view changed: with "Mask follows slider" the
        current object is solved again there."""
        if self.state.follow:
            self.replay()

    def loaded(self) -> None:
        """Objects were loaded (a session): solve those without a stored mask, show."""
        self._resolve_unsolved()
        self.show()

    # ---------------------------------------------------------------- keys
    def bind_keys(self, layers=()) -> None:
        """ctrl+z, ctrl+shift+z, [ and ] on the viewer and on ``layers`` (the active
        layer's key map comes first in napari: a Labels layer binds ctrl+z and [ ])."""
        def action(name):
            def run(*_args):
                try:
                    {"undo": self.undo, "redo": self.redo, "grow": lambda: self.step(+1),
                     "shrink": lambda: self.step(-1)}[name]()
                except RuntimeError:    # the widget is gone
                    pass
            run.__name__ = f"napari_cuts_{name}"
            return run

        for target in (self.viewer, *layers):
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
        return layer is None or layer not in self.viewer.layers

    def adopt_labels_layer(self, layer) -> None:
        """Use ``layer`` (a "CUTS labels" layer read from a session) as the labels layer."""
        self.labels_layer = layer
        self.hook(layer)
        self.bind_keys([layer])

    def show(self) -> None:
        """Put the objects into the layers (made on first use), then announce the change
        (``state.objects_changed()``: the list, the area line, the 3D cut, the buttons)."""
        if self.model is None:
            return
        made = self._layer_gone(self.labels_layer) or self._layer_gone(self.layer)
        self._show_labels()
        self._show_mask()
        obj = self.current
        self.prompt_layers.show(obj)
        if made:
            self.prompt_layers.raise_to_top()
        self.style_levels()
        if obj is not None and obj.error is not None:
            self.message(obj.error + " The mask is unchanged.")
        elif not self.resolver.busy:
            self.message("")
        self.state.objects_changed()

    def area_text(self) -> str:
        """The area line: the current object's name and size ("Mask: empty" without)."""
        obj = self.current
        src = self.state.source
        who = f"{obj.name} (id {obj.id})" if obj is not None else "Mask"
        if obj is None or obj.mask is None:
            return f"{who}: empty"
        stats = self.stats()
        physical = src is not None and physical_scale(src.layer)
        if src.volume:
            return (f"{who}: {stats['pixels']} voxels"
                    + (f", {stats['ml']:.2f} mL" if physical else ""))
        return (f"{who}: {stats['pixels']} pixels"
                + (f", {stats['mm2']:.2f} mm\u00b2" if physical else ""))

    def _on_ndisplay(self, *_args) -> None:
        try:
            self.style_levels()         # outlines in the 2D view only
        except RuntimeError:  # the widget is gone
            pass

    def style_levels(self) -> None:
        """The levels dimmed (and outlined in the 2D view) while the current object has
        prompts; as the user set them otherwise."""
        lay = self.state.levels_layer
        if lay is None or self._layer_gone(lay):
            return
        obj = self.current
        editing = obj is not None and (not obj.prompts.empty or obj.mask is not None)
        try:
            if editing and self._levels_opacity is None:
                self._levels_opacity = float(lay.opacity)
                lay.opacity = min(float(lay.opacity), DIMMED_OPACITY)
            elif not editing and self._levels_opacity is not None:
                lay.opacity, self._levels_opacity = self._levels_opacity, None
            contour = 1 if editing and int(self.viewer.dims.ndisplay) == 2 else 0
            if lay.contour != contour:
                lay.contour = contour
        except Exception:  # noqa: BLE001 - cosmetic only
            log.debug("napari-cuts: could not style the levels", exc_info=True)

    def _show_labels(self) -> None:
        model = self.model
        dtype = model.label_dtype()
        if self._layer_gone(self.labels_layer):
            if not model.objects:
                return
            self.labels_layer = self.viewer.add_labels(
                model.labels(), name=LABELS_NAME, opacity=0.55,
                **layer_geometry(self.state.source.layer))
            self.hook(self.labels_layer)
            self.bind_keys([self.labels_layer])
            self.view3d.style_levels(self.labels_layer)
            self.viewer.layers.selection.active = self.state.levels_layer
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

    def mask_colour(self) -> Optional[tuple]:
        """The colour "CUTS mask" shows (the current object's), or None."""
        obj = self.current
        return None if obj is None else tuple(float(v) for v in obj.colour)

    def _show_mask(self) -> None:
        obj = self.current
        if obj is None or obj.mask is None:
            mask = np.zeros(self.model.shape, bool)
            if self._layer_gone(self.layer):
                return
        else:
            mask = obj.mask
        if self._layer_gone(self.layer):
            self.layer = self.viewer.add_labels(mask.astype(np.uint8), name=MASK_NAME,
                                                opacity=0.7,
                                                **layer_geometry(self.state.source.layer))
            self.hook(self.layer)
            self.bind_keys([self.layer])
            self.view3d.style_mask(self.layer)
            self.view3d.sync_image()
            # keep clicks going to the levels layer, not the new mask layer
            self.viewer.layers.selection.active = self.state.levels_layer
        else:
            data = self.layer.data
            if data.shape == mask.shape and data.dtype == np.uint8:
                np.copyto(data, mask, casting="unsafe")   # in place: no new layer data
                self.layer.refresh()
            else:
                self.layer.data = mask.astype(np.uint8)
        colour = self.mask_colour()
        if colour is not None and (self._mask_colour is None
                                   or self._mask_colour[0] is not self.layer
                                   or self._mask_colour[1] != colour):
            single_colour(self.layer, colour)
            self._mask_colour = (self.layer, colour)

    def stats(self, label_id: Optional[int] = None) -> dict:
        """Size of an object's own mask (the current one by default): ``pixels``, and
        ``mm2`` (2D) or ``ml`` (3D) from the layer scale."""
        st = self.state
        scale = st.levels_layer.scale if st.levels_layer is not None else (1.0, 1.0, 1.0)
        volume = st.volume
        obj = None if self.model is None else self.model.get(
            self.model.current_id if label_id is None else label_id)
        return measure(None if obj is None else obj.mask, scale, volume)
