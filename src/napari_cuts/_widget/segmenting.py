"""Encoder and segmentation jobs of the CUTS dock widget, a mixin of
:class:`~napari_cuts._widget.panel.CutsWidget`.

Train, load and save an encoder; segment the chosen source (one hierarchy for a 2D
image or a grey volume, one per image for a stack of colour images) in the panel's
worker, and adopt each result as it arrives. This is the panel's orchestration: it
writes the shared state (``self.state``: source, results, encoder, level) and tells
the parts (``self.levels``, ``self.objects``, ``self.view3d``) to show new results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog

from .. import pipeline
from ..errors import CutsError, InputError
from ..images import check_cancel
from .model import LevelsDisplay
from .settings import Settings, Source, check_encoder, current_slice, default_level


class SegmentJobs:
    """The panel's encoder (train, load, save) and segment handlers; mixed into
    :class:`~napari_cuts._widget.panel.CutsWidget`, whose state they use."""

    # --------------------------------------------------------------- encoder
    def _train_images(self, src: Source) -> list:
        if src.one_volume:
            return []
        if not src.volume:
            return src.slices
        keep = [s for s in src.slices if pipeline.informative(s)]
        if not keep:
            raise InputError(f"every slice of '{src.layer.name}' is constant; nothing to learn.")
        return pipeline.training_subset(keep)

    def train(self) -> bool:
        """Train a new encoder on the chosen image with the widget's settings."""
        src = self._source()
        if src is None:
            return False
        s = self.settings
        try:
            images = self._train_images(src)
        except CutsError as exc:
            self._notify("error", str(exc))
            return False

        def job(progress, cancel):
            return self._train_job(src, images, s, progress, cancel)
            yield  # noqa: unreachable - a generator job

        return self._start("training", job, on_return=self.set_encoder)

    @staticmethod
    def _train_job(src: Source, images, s: Settings, progress, cancel):
        """Train an encoder for ``src`` (worker thread): a 2.5D one for a volume."""
        if src.one_volume:
            return pipeline.train_volume_encoder(src.array, spacing=src.spacing, seed=s.seed,
                                                 device=s.device, progress=progress,
                                                 cancel=cancel, **s.train_kwargs())
        enc, _ = pipeline.get_encoder(images, seed=s.seed, device=s.device,
                                      progress=progress, cancel=cancel, **s.train_kwargs())
        return enc

    def set_encoder(self, encoder, origin: str = "trained") -> None:
        self.state.encoder = encoder
        md = getattr(encoder, "metadata", {}) or {}
        extra = ", ".join(([f"{md['steps']} steps"] if "steps" in md else [])
                          + ([f"{float(md['seconds']):.1f} s"] if "seconds" in md else []))
        from ..encoder import is_volume_encoder

        ctx = int(encoder.metadata.get("context_slices", 0) or 0)
        kind = ((f"2.5D volume encoder ({2 * ctx + 1} slices), " if ctx else "volume encoder (2D "
                 "on every slice), ") if is_volume_encoder(encoder) else "")
        self.encoder_label.setText(f"Encoder {origin}: {kind}{encoder.in_channels} channel(s)"
                                   + (f"; {extra}" if extra else "") + ".")
        self._update_buttons()

    def load_weights(self, path) -> bool:
        """Load encoder weights from ``path``; False (and a notification) on failure."""
        from ..encoder import load_encoder

        try:
            enc = load_encoder(path, device=self.settings.device)
        except CutsError as exc:
            self._notify("error", str(exc))
            return False
        self.set_encoder(enc, origin=f"loaded from {Path(path).name}")
        return True

    def save_weights(self, path) -> bool:
        """Save the current encoder to ``path``."""
        if self.sessions.resolve_encoder() is None:
            self._notify("error", "No encoder to save: Train one first.")
            return False
        try:
            self.state.encoder.save(path)
        except CutsError as exc:
            self._notify("error", str(exc))
            return False
        self._notify("info", f"Encoder saved to {path}")
        return True

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load encoder weights", "",
                                              "Encoder weights (*.pt *.pth);;All files (*)")
        if path:
            self.load_weights(path)

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save encoder weights", "encoder.pt",
                                              "Encoder weights (*.pt)")
        if path:
            self.save_weights(path)

    # ---------------------------------------------------------------- segment
    def _current_slice(self, src: Source) -> int:
        return current_slice(self.viewer, src)

    def segment(self) -> bool:
        """Segment the chosen image: one hierarchy for a 2D image or a grey volume, one
        per image (the current one first) for a stack of colour images.

        Trains an encoder first (with the widget's budget) when there is none.
        """
        src = self._source()
        if src is None:
            return False
        s = self.settings
        enc = self.sessions.resolve_encoder()
        problem = check_encoder(enc, src)
        if problem:
            self._notify("error", problem)
            return False
        try:
            train_images = self._train_images(src) if enc is None else None
        except CutsError as exc:
            self._notify("error", str(exc))
            return False
        self._reset_results(src)

        def train(progress, cancel):
            def tprog(d, t, m):
                progress(d, t, f"training: {m}")
            return self._train_job(src, train_images, s, tprog, cancel)

        if src.one_volume:
            def job(progress, cancel):
                encoder = enc
                if encoder is None:
                    encoder = train(progress, cancel)
                    yield ("encoder", encoder)
                res = pipeline.segment_volume(encoder, src.array, spacing=src.spacing,
                                              seed=s.seed, progress=progress, cancel=cancel)
                check_cancel(cancel)
                # the display model, the first level and what the default (connected)
                # click needs are made here, off the GUI thread
                display = LevelsDisplay.from_hierarchy(res.hierarchy)
                check_cancel(cancel)
                res.hierarchy.prepare_connected()
                res.hierarchy.persistent()                # cached for the persistent view
                level = default_level(np.asarray(res.hierarchy.n_clusters))
                first = display.values(level)
                check_cancel(cancel)
                return ("volume", res, display, level, first)

            return self._start("segmenting", job, on_yield=self._on_segment_item,
                               on_return=self._on_volume_done)

        first = self._current_slice(src)
        order = [first] + [i for i in range(len(src.slices)) if i != first]

        def job(progress, cancel):
            encoder = enc
            if encoder is None:
                encoder = train(progress, cancel)
                yield ("encoder", encoder)
            n = len(order)
            for j, i in enumerate(order):
                check_cancel(cancel)
                img = src.slices[i]
                if src.volume and not pipeline.informative(img):
                    yield ("empty", i)
                    continue

                def sprog(d, t, m, j=j, i=i):
                    if src.volume:
                        progress(j * max(t, 1) + d, n * max(t, 1), f"slice {i} ({j + 1}/{n}): {m}")
                    else:
                        progress(d, t, m)

                res = pipeline.segment_image(encoder, img, seed=s.seed, progress=sprog,
                                             cancel=cancel)
                yield ("slice", i, res)
            return n

        return self._start("segmenting", job, on_yield=self._on_segment_item,
                           on_return=self._on_segment_done)

    def _reset_results(self, src: Source) -> None:
        st = self.state
        self.levels.reset()
        self._phate = None
        self.phate_panel.clear()
        for lay in (st.levels_layer, self.mask_layer, self.objects.labels_layer,
                    *self.objects.prompt_layers.layers()):
            if lay is not None and lay in self.viewer.layers:
                self.viewer.layers.remove(lay)
        st.levels_layer = None
        self.objects.reset()
        st.clear_results(src)
        self.hooks.unhook()
        self.level_label.setText("Segmenting...")
        self.area_label.setText("Mask: empty")

    def _result_shape(self) -> tuple:
        return self.state.result_shape()

    def _on_segment_item(self, item) -> None:
        kind = item[0]
        if kind == "encoder":
            self.set_encoder(item[1])
            return
        if kind == "empty":
            return
        _, i, res = item
        st = self.state
        first = not st.results
        st.add_result(i, res)
        if first:
            self.objects.reset(self._result_shape(), per_slice=st.source.volume)
            self.levels.make_layer(np.zeros(self._result_shape(), np.uint32))
            counts = np.asarray(res.hierarchy.n_clusters)
            with st.quietly():             # shown below, once
                st.level = default_level(counts)
        self.levels.sync_slider()
        self.levels.fill_slice(i)
        st.levels_layer.refresh()
        self.objects.results_ready(i, res)
        self.levels.show_info()
        self._update_buttons()

    def _on_volume_done(self, result) -> None:
        _, res, display, level, first = result
        st = self.state
        self.levels.reset(display)
        with st.quietly():                 # shown below, once
            st.level = level
        st.results = {0: res}
        self.objects.reset(self._result_shape(), per_slice=False)
        self.levels.make_layer(first)
        self.objects.results_ready(0, res)
        self.levels.sync_slider()
        if self.view3d.cut() is not None or st.persistent:
            self.levels.refresh()
        self.view3d.shown(self.view3d.cut())
        self.view3d.sync_image()
        self.levels.show_info()
        for note in res.notes:
            self._notify("info", note)
        self.progress_label.setText("Segmented the volume as one object.")
        self._update_buttons()

    def _on_segment_done(self, n) -> None:
        st = self.state
        notes = sorted({note for r in st.results.values() for note in r.notes})
        for note in notes:
            self._notify("info", note)
        done = len(st.results)
        self.progress_label.setText(f"Segmented {done} slice(s)." if st.source.volume
                                    else "Segmented.")
