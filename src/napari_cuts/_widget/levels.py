"""The levels layer and its display for the CUTS dock widget, a mixin of
:class:`~napari_cuts._widget.panel.CutsWidget`.

The "CUTS levels" layer and the mouse hooks on the source layers, the granularity
slider, the cluster map a click reads (a level or the persistent structures), the
refresh of the shown level and the level information line.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InputError
from .model import LevelsDisplay
from .settings import LEVELS_NAME


class LevelsView:
    """The panel's levels layer, slider and persistent view; mixed into
    :class:`~napari_cuts._widget.panel.CutsWidget`, whose state they use."""

    # ---------------------------------------------------------------- layers
    def _geometry(self) -> dict:
        """scale/translate/affine/metadata of the source image, for result layers."""
        lay = self.source.layer
        return {"scale": tuple(lay.scale), "translate": tuple(lay.translate),
                "affine": lay.affine.affine_matrix, "metadata": dict(lay.metadata)}

    def _make_levels_layer(self, data: np.ndarray) -> None:
        src = self.source
        self.levels_layer = self.viewer.add_labels(data, name=LEVELS_NAME,
                                                   opacity=0.5, **self._geometry())
        if src.one_volume:
            self.view3d.style_levels(self.levels_layer)
        for lay in src.layers:
            self._hook(lay)
        self._hook(self.levels_layer)
        self.objects.bind_keys([self.levels_layer])
        self.viewer.layers.selection.active = self.levels_layer

    def _hook(self, layer) -> None:
        if layer is not None and self._on_mouse not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.append(self._on_mouse)
            self._hooked.append(layer)

    def _unhook(self) -> None:
        for lay in self._hooked:
            if self._on_mouse in lay.mouse_drag_callbacks:
                lay.mouse_drag_callbacks.remove(self._on_mouse)
        self._hooked = []

    def _n_levels(self) -> int:
        return max(r.hierarchy.n_levels for r in self.results.values())

    def _sync_slider(self) -> None:
        n_max = self._n_levels()
        self.slider.blockSignals(True)
        self.slider.setRange(0, n_max - 1)
        self.level = min(self.level, n_max - 1)
        self.slider.setValue(n_max - 1 - self.level)
        self.slider.blockSignals(False)

    def cluster_labels(self, i: int = 0) -> np.ndarray:
        """The cluster map a click reads: ``(Z, Y, X)`` for a volume (``i`` ignored),
        ``(H, W)`` of image ``i`` otherwise: the current level (clipped to the image's
        levels) or the persistent structures."""
        if self.source.one_volume:
            i = 0
        hier = self.results[i].hierarchy
        key = (i, "persistent") if self.persistent_check.isChecked() else \
            (i, min(self.level, hier.n_levels - 1))
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
        return lab[i] if self.source.one_volume else lab

    def _fill_slice(self, i: int) -> None:
        lab = self.cluster_labels(i).astype(np.uint32) + 1
        if self.source.volume:
            self.levels_layer.data[i] = lab
        else:
            self.levels_layer.data = lab

    def _persistent_display(self) -> LevelsDisplay:
        if self._display_persistent is None:
            self._display_persistent = LevelsDisplay.from_map(self.cluster_labels(0))
        return self._display_persistent

    def _refresh_levels(self) -> None:
        """Rewrite the volume's levels layer in place: the shown level (or persistent),
        background hidden, the 3D cut-away when in the 3D view."""
        cut = self.view3d.cut()
        hide = self.background_check.isChecked()
        if self.persistent_check.isChecked():
            disp, lv = self._persistent_display(), 0
        else:
            disp, lv = self.display, self.level
        data = self.levels_layer.data
        if data.dtype != disp.dtype or data.shape != disp.shape:
            self.levels_layer.data = disp.values(lv, cut=cut, hide_background=hide)
        else:
            disp.fill(data, lv, cut=cut, hide_background=hide)
            self.levels_layer.refresh()
        self.view3d.shown(cut)

    def _on_follow(self, on: bool) -> None:
        if on:
            self.objects.replay()

    def _on_slider(self, value: int) -> None:
        if not self.results:
            return
        self.level = self.slider.maximum() - int(value)
        self._apply_level()

    def set_level(self, level: int) -> None:
        """Show hierarchy level ``level`` (0 = finest), as moving the slider does."""
        self.slider.setValue(self.slider.maximum() - int(level))
        if self.slider.maximum() - self.slider.value() != level:
            raise InputError(f"level {level} is outside 0..{self.slider.maximum()}.")

    def _apply_level(self) -> None:
        if not self.results or self.levels_layer is None:
            self._update_buttons()
            return
        if self.source.one_volume:
            self._refresh_levels()
        else:
            for i in self.results:
                self._fill_slice(i)
            if self.source.volume:
                self.levels_layer.refresh()
        if self.follow_check.isChecked():
            self.objects.replay()
        self._show_level_info()
        self._recolor_phate()
        self._update_buttons()

    def _shown_slice(self) -> Optional[int]:
        if not self.results:
            return None
        z = self._current_slice(self.source)
        if self.source.one_volume:
            return z
        return z if z in self.results else next(iter(self.results))

    def _show_level_info(self) -> None:
        i = self._shown_slice()
        if i is None:
            return
        hier = self.results[0 if self.source.one_volume else i].hierarchy
        if self.source.one_volume:
            where = " (one hierarchy for the volume)"
        elif self.source.volume:
            where = f" (slice {i}; {len(self.results)}/{len(self.source.slices)} done)"
        else:
            where = ""
        if self.persistent_check.isChecked():
            k = len(np.unique(self.cluster_labels(i)))
            self.level_label.setText(f"Persistent structures: {k} segments{where}")
        else:
            lv = min(self.level, hier.n_levels - 1)
            k = int(np.asarray(hier.n_clusters)[lv])
            self.level_label.setText(f"Level {lv} of {hier.n_levels - 1}: {k} clusters{where}")
        self.shown_clusters = k

    def _on_step(self, *_args) -> None:
        try:
            if self.results and self.source is not None and self.source.volume:
                if not self.source.one_volume:
                    self._show_level_info()
                else:
                    self.view3d.refresh_if_changed()
        except RuntimeError:
            pass
