"""The levels layer and its display for the CUTS dock widget (composed as
``widget.levels``).

The "CUTS levels" layer, the granularity slider, the cluster map a click reads (a level
or the persistent structures), the refresh of the shown level and the level information
line. The level, the persistent view and "hide background" live in the shared state
(:class:`~napari_cuts._widget.state.WidgetState`): the part listens to them and shows
each change; the slider writes ``state.level``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InputError
from .model import LevelsDisplay
from .settings import LEVELS_NAME, layer_geometry


class Levels:
    """The levels layer, the slider and the level line for the results in ``state``.

    Owns the controls it is given (``slider``, ``level_label``). Services: the
    ``viewer``, ``view3d`` (the cut-away and the 3D style), ``hook(layer)`` (route a
    layer's clicks to the objects), ``bind_keys(layers)`` (the objects' keys),
    ``current_slice()`` (the slice under the viewer's dims) and ``shown()`` (called after
    each level is shown: the panel recolours the PHATE view and its buttons)."""

    def __init__(self, state, viewer, *, slider, level_label, view3d, hook, bind_keys,
                 current_slice, shown=lambda: None) -> None:
        self.state = state
        self.viewer = viewer
        self.slider = slider
        self.level_label = level_label
        self.view3d = view3d
        self.hook = hook
        self.bind_keys = bind_keys
        self.current_slice = current_slice
        self.shown = shown
        self.display: Optional[LevelsDisplay] = None   # one hierarchy: the display model
        self._display_persistent: Optional[LevelsDisplay] = None
        self._persistent: dict = {}      # slice index -> persistent map (cached)
        self._labels_cache: Optional[tuple] = None     # (key, labels of the shown level)
        self.shown_clusters: Optional[int] = None
        slider.valueChanged.connect(self._on_slider)
        state.on("level", self._on_level)
        state.on("persistent", lambda _on: self.apply())
        state.on("hide_background", lambda _on: self.apply())

    # ----------------------------------------------------------------- state
    def reset(self, display: Optional[LevelsDisplay] = None) -> None:
        """New results: the caches go (``display``: the volume's display model)."""
        self.display = display
        self._display_persistent = None
        self._persistent = {}
        self._labels_cache = None

    # ---------------------------------------------------------------- layers
    def make_layer(self, data: np.ndarray) -> None:
        st = self.state
        src = st.source
        st.levels_layer = self.viewer.add_labels(data, name=LEVELS_NAME, opacity=0.5,
                                                 **layer_geometry(src.layer))
        self.adopt_layer(st.levels_layer)

    def adopt_layer(self, layer) -> None:
        """``layer`` is the levels layer (made here, or read from a session)."""
        st = self.state
        st.levels_layer = layer
        if st.source.one_volume:
            self.view3d.style_levels(layer)
        for lay in st.source.layers:
            self.hook(lay)
        self.hook(layer)
        self.bind_keys([layer])
        self.viewer.layers.selection.active = layer

    def sync_slider(self) -> None:
        st = self.state
        n_max = st.n_levels()
        self.slider.blockSignals(True)
        self.slider.setRange(0, n_max - 1)
        with st.quietly():
            st.level = min(st.level, n_max - 1)
        self.slider.setValue(n_max - 1 - st.level)
        self.slider.blockSignals(False)

    def persistent_map(self, i: int = 0) -> np.ndarray:
        """The persistent structures of hierarchy ``i`` (cached)."""
        st = self.state
        if st.one_volume:
            i = 0
        if i not in self._persistent:
            self._persistent[i] = np.asarray(st.results[i].hierarchy.persistent())
        return self._persistent[i]

    def cluster_labels(self, i: int = 0) -> np.ndarray:
        """The cluster map a click reads: ``(Z, Y, X)`` for a volume (``i`` ignored),
        ``(H, W)`` of image ``i`` otherwise: the current level (clipped to the image's
        levels) or the persistent structures."""
        st = self.state
        if st.one_volume:
            i = 0
        hier = st.results[i].hierarchy
        key = (i, "persistent") if st.persistent else (i, min(st.level, hier.n_levels - 1))
        if self._labels_cache is not None and self._labels_cache[0] == key:
            return self._labels_cache[1]
        if key[1] == "persistent":
            lab = self.persistent_map(i)
        else:
            lab = np.asarray(hier.labels(key[1]))
        self._labels_cache = (key, lab)
        return lab

    def slice_labels(self, i: int) -> np.ndarray:
        """The ``(H, W)`` cluster map of slice (or image) ``i``."""
        lab = self.cluster_labels(i)
        return lab[i] if self.state.one_volume else lab

    def fill_slice(self, i: int) -> None:
        st = self.state
        lab = self.cluster_labels(i).astype(np.uint32) + 1
        if st.source.volume:
            st.levels_layer.data[i] = lab
        else:
            st.levels_layer.data = lab

    def _persistent_display(self) -> LevelsDisplay:
        if self._display_persistent is None:
            self._display_persistent = LevelsDisplay.from_map(self.cluster_labels(0))
        return self._display_persistent

    def refresh(self) -> None:
        """Rewrite the volume's levels layer in place: the shown level (or persistent),
        background hidden, the 3D cut-away when in the 3D view."""
        st = self.state
        cut = self.view3d.cut()
        hide = bool(st.hide_background)
        if st.persistent:
            disp, lv = self._persistent_display(), 0
        else:
            disp, lv = self.display, st.level
        layer = st.levels_layer
        data = layer.data
        if data.dtype != disp.dtype or data.shape != disp.shape:
            layer.data = disp.values(lv, cut=cut, hide_background=hide)
        else:
            disp.fill(data, lv, cut=cut, hide_background=hide)
            layer.refresh()
        self.view3d.shown(cut)

    # ---------------------------------------------------------------- slider
    def _on_slider(self, value: int) -> None:
        if not self.state.results:
            return
        self.state.level = self.slider.maximum() - int(value)

    def _on_level(self, level: int) -> None:
        """``state.level`` changed (the slider, grow/shrink): slider and layer follow."""
        try:
            if self.slider.maximum() - self.slider.value() != level \
                    and 0 <= level <= self.slider.maximum():
                self.slider.blockSignals(True)
                self.slider.setValue(self.slider.maximum() - int(level))
                self.slider.blockSignals(False)
            self.apply()
        except RuntimeError:  # the widget is gone
            pass

    def set_level(self, level: int) -> None:
        """Show hierarchy level ``level`` (0 = finest), as moving the slider does."""
        self.slider.setValue(self.slider.maximum() - int(level))
        if self.slider.maximum() - self.slider.value() != level:
            raise InputError(f"level {level} is outside 0..{self.slider.maximum()}.")

    def apply(self) -> None:
        """Show the state's level (or the persistent structures) in the levels layer."""
        st = self.state
        if not st.results or st.levels_layer is None:
            self.shown()
            return
        if st.source.one_volume:
            self.refresh()
        else:
            for i in st.results:
                self.fill_slice(i)
            if st.source.volume:
                st.levels_layer.refresh()
        self.show_info()
        self.shown()

    def shown_slice(self) -> Optional[int]:
        st = self.state
        if not st.results:
            return None
        z = self.current_slice()
        if st.source.one_volume:
            return z
        return z if z in st.results else next(iter(st.results))

    def show_info(self) -> None:
        st = self.state
        i = self.shown_slice()
        if i is None:
            return
        hier = st.results[0 if st.source.one_volume else i].hierarchy
        if st.source.one_volume:
            where = " (one hierarchy for the volume)"
        elif st.source.volume:
            where = f" (slice {i}; {len(st.results)}/{len(st.source.slices)} done)"
        else:
            where = ""
        if st.persistent:
            k = len(np.unique(self.cluster_labels(i)))
            self.level_label.setText(f"Persistent structures: {k} segments{where}")
        else:
            lv = min(st.level, hier.n_levels - 1)
            k = int(np.asarray(hier.n_clusters)[lv])
            self.level_label.setText(f"Level {lv} of {hier.n_levels - 1}: {k} clusters{where}")
        self.shown_clusters = k

    def on_step(self, *_args) -> None:
        """The viewer's dims moved: the level line (a stack) or the cut (a volume)."""
        st = self.state
        try:
            if st.results and st.source is not None and st.source.volume:
                if not st.source.one_volume:
                    self.show_info()
                else:
                    self.view3d.refresh_if_changed()
        except RuntimeError:
            pass
