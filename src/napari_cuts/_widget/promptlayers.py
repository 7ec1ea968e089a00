"""The prompt layers of the CUTS dock widget: "CUTS points" and "CUTS prompts".

Both show the prompts of the selected object, on the result layers' grid (the image's
scale, translate and affine), and both can be edited by hand:

- **"CUTS points"** (a Points layer): the object's points, positive green, negative red
  (feature ``sign``). Deleting points there (select them, Delete), moving them, or
  adding some with the layer's own add tool (positive) changes the object's prompts,
  and the object is solved again.
- **"CUTS prompts"** (a Labels layer): scribbles painted with napari's brush, 1 the
  object (green), 2 background (red). The object is solved again after each stroke
  (the layer's ``paint`` event, which napari emits once per stroke, fill or erase; the
  layer is read when the event loop next runs).

Selecting another object, undo and redo write that object's prompts into the layers;
those writes are not edits (:attr:`PromptLayers._syncing`).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from .objects import NEGATIVE_COLOUR, POSITIVE_COLOUR
from .settings import layer_geometry

log = logging.getLogger(__name__)

POINTS_NAME = "CUTS points"
PROMPTS_NAME = "CUTS prompts"
#: ``sign`` feature values of the points.
POSITIVE, NEGATIVE = "positive", "negative"


class PromptLayers:
    """The two prompt layers, made in ``viewer`` for the objects of ``state``.

    ``hook(layer)`` routes a layer's clicks to the objects, ``bind_keys(layers)`` binds
    undo/redo/grow/shrink on them; an edit by hand calls ``set_points(positive,
    negative)`` or ``set_scribbles(dense)`` (the objects part's)."""

    def __init__(self, state, viewer, *, hook, bind_keys, set_points, set_scribbles) -> None:
        self.state = state
        self.viewer = viewer
        self.hook = hook
        self.bind_keys = bind_keys
        self.set_points = set_points
        self.set_scribbles = set_scribbles
        self.points = None
        self.scribbles = None
        self._syncing = False
        self._shown = None           # the Prompts object the layers show (skip rewrites)

    # ----------------------------------------------------------------- state
    def layers(self) -> list:
        return [lay for lay in (self.points, self.scribbles) if lay is not None]

    def reset(self) -> None:
        """Forget the layers (the widget removes them with the other result layers)."""
        self.points = None
        self.scribbles = None
        self._shown = None

    def _gone(self, layer) -> bool:
        return layer is None or layer not in self.viewer.layers

    def ensure(self) -> None:
        """Make the layers (once there are results), on top of the result layers."""
        st = self.state
        model = st.objects
        if model is None or st.levels_layer is None or st.source is None:
            return
        geometry = layer_geometry(st.source.layer)
        made = False
        if self._gone(self.scribbles):
            self.scribbles = self._make_scribbles(model.shape, geometry)
            made = True
        if self._gone(self.points):
            self.points = self._make_points(model.shape, geometry)
            made = True
        if made:
            self._shown = None
            self.raise_to_top()
            self.viewer.layers.selection.active = st.levels_layer

    def _make_points(self, shape, geometry):
        size = max(2.0, min(shape[-2:]) / 40.0)
        lay = self.viewer.add_points(np.zeros((0, len(shape))), ndim=len(shape), name=POINTS_NAME,
                                  size=size, face_color=list(POSITIVE_COLOUR),
                                  border_color="white", border_width=0.1,
                                  features={"sign": np.array([], dtype=object)},
                                  feature_defaults={"sign": POSITIVE}, **geometry)
        try:
            lay.current_face_color = list(POSITIVE_COLOUR)   # points added by hand
        except Exception:  # noqa: BLE001 - cosmetic only
            pass
        lay.events.data.connect(self._on_points)
        self.hook(lay)
        self.bind_keys([lay])
        return lay

    def _make_scribbles(self, shape, geometry):
        lay = self.viewer.add_labels(np.zeros(shape, np.uint8), name=PROMPTS_NAME, opacity=0.7,
                                  **geometry)
        try:
            from napari.utils.colormaps import DirectLabelColormap

            lay.colormap = DirectLabelColormap(color_dict={
                None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: POSITIVE_COLOUR, 2: NEGATIVE_COLOUR})
        except Exception:  # noqa: BLE001 - cosmetic only
            pass
        lay.selected_label = 1
        lay.brush_size = max(1, int(min(shape[-2:]) // 40))
        lay.events.paint.connect(self._on_paint)
        self.hook(lay)
        self.bind_keys([lay])
        return lay

    def raise_to_top(self) -> None:
        """Keep the prompts above the masks and levels (points on top)."""
        layers = self.viewer.layers
        for lay in (self.scribbles, self.points):
            if lay is not None and lay in layers:
                i = layers.index(lay)
                if i != len(layers) - 1:
                    layers.move(i, len(layers))

    # ------------------------------------------------------------------ show
    def show(self, obj) -> None:
        """Write ``obj``'s prompts (or none) into the layers."""
        self.ensure()
        if self.points is None or self.scribbles is None:
            return
        shape = self.state.objects.shape
        prompts = None if obj is None else obj.prompts
        if prompts is not None and prompts is self._shown:
            return                   # shown already (a volume's scribbles are not compared)
        self._syncing = True
        try:
            self._show_points(prompts)
            self._show_scribbles(prompts, shape)
        finally:
            self._syncing = False
        self._shown = prompts

    def _show_points(self, prompts) -> None:
        lay = self.points
        pos = [] if prompts is None else list(prompts.positive)
        neg = [] if prompts is None else list(prompts.negative)
        pts = np.asarray(pos + neg, float).reshape(-1, lay.ndim)
        signs = np.array([POSITIVE] * len(pos) + [NEGATIVE] * len(neg), dtype=object)
        old = np.asarray(lay.data)
        old_signs = np.asarray(lay.features["sign"]) if "sign" in lay.features else None
        try:     # a point added with the layer's tool is positive (napari takes the
            # defaults from the last selected point: a negative one selected to delete it)
            if list(lay.feature_defaults["sign"]) != [POSITIVE]:
                lay.feature_defaults = {"sign": POSITIVE}
                lay.current_face_color = list(POSITIVE_COLOUR)
        except Exception:  # noqa: BLE001 - cosmetic only
            pass
        if old.shape == pts.shape and np.array_equal(old, pts) and old_signs is not None \
                and list(old_signs) == list(signs):
            return
        lay.selected_data = set()
        lay.data = pts
        lay.features = {"sign": signs}
        if len(pts):
            lay.face_color = np.array([POSITIVE_COLOUR if s == POSITIVE else NEGATIVE_COLOUR
                                       for s in signs], float)

    def _show_scribbles(self, prompts, shape) -> None:
        lay = self.scribbles
        dense = None if prompts is None else prompts.scribbles(shape)
        data = lay.data
        if dense is None:
            if np.any(data):
                data[...] = 0
                lay.refresh()
            return
        if not np.array_equal(data, dense):
            data[...] = dense
            lay.refresh()

    # ----------------------------------------------------------------- edits
    def point_prompts(self) -> tuple[list, list]:
        """``(positive, negative)`` points now in the points layer (rounded indices)."""
        lay = self.points
        data = np.asarray(lay.data)
        signs = list(lay.features["sign"]) if "sign" in lay.features else []
        pos, neg = [], []
        shape = self.state.objects.shape
        for k, p in enumerate(data):
            idx = tuple(int(round(float(v))) for v in p)[-len(shape):]
            if not all(0 <= i < n for i, n in zip(idx, shape)):
                continue
            (neg if k < len(signs) and signs[k] == NEGATIVE else pos).append(idx)
        return pos, neg

    def _on_points(self, event) -> None:
        action = str(getattr(event, "action", "changed")).lower()
        if self._syncing or action.endswith("ing"):
            return
        try:
            pos, neg = self.point_prompts()
            self.set_points(pos, neg)
        except RuntimeError:      # the widget is gone
            pass
        except Exception:  # noqa: BLE001 - an edit of the layer never raises into napari
            log.exception("napari-cuts: could not take the points as prompts")

    def _on_paint(self, _event=None) -> None:
        """A stroke ended. napari emits ``paint`` when it records the change, which for a
        single ``paint()`` or ``fill()`` call comes before the voxels are written: the
        layer is read once the event loop runs again."""
        if self._syncing:
            return
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, self._take_scribbles)

    def _take_scribbles(self) -> None:
        if self._syncing or self.scribbles is None:
            return
        try:
            self.set_scribbles(np.asarray(self.scribbles.data))
        except RuntimeError:
            pass
        except Exception:  # noqa: BLE001
            log.exception("napari-cuts: could not take the scribbles as prompts")

    def painted(self) -> Optional[np.ndarray]:
        """The scribbles layer's data (None before it exists)."""
        return None if self.scribbles is None else np.asarray(self.scribbles.data)
