"""Click-to-binarise, mask statistics and export: part of the CUTS dock widget.

:class:`MaskMixin` is mixed into :class:`~napari_cuts._widget.CutsWidget`; it uses the
widget's ``results``, ``source``, ``levels_layer`` and ``cluster_labels``.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QFileDialog

from ._widget_model import MASK_NAME, click_mode, single_colour
from .errors import CutsError, InputError


class MaskMixin:
    """The "CUTS mask" layer: clicks, shift/alt-clicks, follow-the-slider, area, export."""

    def _on_mouse(self, layer, event):
        """Mouse drag callback: a click (press and release without a drag) binarises."""
        if getattr(layer, "mode", "pan_zoom") != "pan_zoom" or not self.results:
            return
        if getattr(event, "button", 1) != 1:
            return
        start = np.asarray(self.levels_layer.world_to_data(event.position), float)
        mode = click_mode(event.modifiers)
        dragged = False
        yield
        while event.type == "mouse_move":
            now = np.asarray(self.levels_layer.world_to_data(event.position), float)
            dragged = dragged or bool(np.max(np.abs(now[-2:] - start[-2:])) > 1.0)
            yield
        if not dragged:
            self.click(start, mode)

    def click(self, point, mode: str = "replace") -> bool:
        """Binarise at ``point``: data coordinates of the result layers, (row, col) or
        (z, row, col). ``mode``: "replace", "add" or "remove". False if outside."""
        if mode not in ("replace", "add", "remove"):
            raise InputError(f"mode must be 'replace', 'add' or 'remove', not {mode!r}.")
        if not self.results:
            return False
        idx = [int(round(float(p))) for p in point]
        z = idx[0] if self.source.volume else 0
        r, c = idx[-2], idx[-1]
        h, w = self.source.shape
        if z not in self.results or not (0 <= r < h and 0 <= c < w):
            return False
        if mode == "replace" or self.mask is None:
            self.clicks = []
            self.mask = np.zeros(self.levels_layer.data.shape, bool)
        self.clicks.append((mode, z, (r, c)))
        self._apply_click(mode, z, (r, c))
        self._show_mask()
        return True

    def _apply_click(self, mode: str, z: int, rc: tuple) -> None:
        from .selection import update_mask

        labels = self.cluster_labels(z)
        if self.source.volume:
            self.mask[z] = update_mask(self.mask[z], labels, rc, mode=mode)
        else:
            self.mask = np.asarray(update_mask(self.mask, labels, rc, mode=mode), bool)

    def _replay_clicks(self) -> None:
        self.mask = np.zeros(self.levels_layer.data.shape, bool)
        for mode, z, rc in self.clicks:
            if z in self.results:
                self._apply_click(mode, z, rc)
        self._show_mask()

    def _on_follow(self, on: bool) -> None:
        if on and self.clicks:
            self._replay_clicks()

    def _show_mask(self) -> None:
        data = self.mask.astype(np.uint8)
        if self.mask_layer is None or self.mask_layer not in self.viewer.layers:
            self.mask_layer = self.viewer.add_labels(data, name=MASK_NAME, opacity=0.7,
                                                     **self._geometry())
            single_colour(self.mask_layer)
            self._hook(self.mask_layer)
            # keep clicks going to the levels layer, not the new mask layer
            self.viewer.layers.selection.active = self.levels_layer
        else:
            self.mask_layer.data = data
        stats = self.mask_stats()
        physical = self._has_physical_scale()
        if self.source.volume:
            self.area_label.setText(f"Mask: {stats['pixels']} voxels"
                                    + (f", {stats['ml']:.3f} mL" if physical else ""))
        else:
            self.area_label.setText(f"Mask: {stats['pixels']} pixels"
                                    + (f", {stats['mm2']:.2f} mm\u00b2" if physical else ""))
        self._recolor_phate()
        self._update_buttons()

    def _has_physical_scale(self) -> bool:
        """True when the layer scale is a voxel size (NIfTI/DICOM source, or a scale the
        user set), not the pixel grid of a photograph."""
        md = self.source.layer.metadata or {}
        if md.get("format") in ("nifti", "dicom"):
            return True
        return bool(np.any(np.asarray(self.source.layer.scale, float) != 1.0))

    def mask_stats(self) -> dict:
        """Mask size: ``pixels``, and ``mm2`` (2D) or ``ml`` (3D) from the layer scale
        (read as millimetres per pixel, as NIfTI and DICOM give it)."""
        n = int(np.count_nonzero(self.mask)) if self.mask is not None else 0
        scale = np.asarray(self.levels_layer.scale if self.levels_layer is not None else [1, 1],
                           float)
        if self.source is not None and self.source.volume:
            return {"pixels": n, "ml": n * float(np.prod(scale[-3:])) / 1000.0}
        return {"pixels": n, "mm2": n * float(np.prod(scale[-2:]))}

    # ---------------------------------------------------------------- export
    def export(self, path, what: str = "mask") -> list[str]:
        """Write the mask (``what="mask"``) or the shown labels (``"labels"``) to ``path``
        (.nii.gz/.nii keep the source geometry; .png) through the npe2 writer.
        Returns the written paths ([] after a notification on failure)."""
        from ._writer import write_labels

        layer = {"mask": self.mask_layer, "labels": self.levels_layer}.get(what, False)
        if layer is False:
            raise InputError(f"what must be 'mask' or 'labels', not {what!r}.")
        if layer is None or layer not in self.viewer.layers:
            self._notify("error", f"Nothing to export: {'click a cluster' if what == 'mask' else 'segment'} first.")
            return []
        data, meta, _ = layer.as_layer_data_tuple()
        meta = dict(meta)
        meta["metadata"] = {**(meta.get("metadata") or {}), "napari_cuts": self._provenance(what)}
        try:
            written = write_labels(str(path), np.asarray(data), meta)
        except CutsError as exc:
            self._notify("error", str(exc))
            return []
        self._notify("info", f"Saved {what} to {', '.join(map(str, written))}")
        return list(written)

    def _provenance(self, what: str) -> dict:
        """What made this output: version, seed, level, encoder (for the sidecar JSON)."""
        from . import __version__

        enc = getattr(self.encoder, "metadata", None) or {}
        return {"napari_cuts_version": __version__, "what": what, "seed": int(self.settings.seed),
                "level": "persistent" if self.persistent_check.isChecked() else int(self.level),
                "encoder": {k: enc.get(k) for k in ("in_channels", "seed", "version", "params")
                            if k in enc},
                "source": (self.source.layer.metadata or {}).get("source")
                if self.source is not None else None}

    def _export_dialog(self, what: str) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, f"Export {what}", f"cuts_{what}.nii.gz",
            "NIfTI (*.nii.gz *.nii);;PNG (*.png)")
        if path:
            self.export(path, what)
