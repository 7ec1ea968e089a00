"""The CUTS dock widget: train or load an encoder, segment, slide, click, export.

A thin front end over :mod:`napari_cuts.pipeline`, in parts composed by
:class:`CutsWidget` (the panel). What the parts share lives in one
:class:`~.state.WidgetState` (:mod:`.state`, no Qt): source, results, encoder, level,
the persistent/background/follow switches, the levels layer, the objects, settings and
the running job; a part gets the state and the services it needs (viewer, ``notify``,
the job starter ...) in its constructor and reacts to the state's notifications. The
parts: the controls (:mod:`.ui`), the settings and source (:mod:`.settings`), the jobs
in a napari ``thread_worker`` (:mod:`.jobs`: progress and cancel cross the thread
boundary as the core's ``progress``/``cancel`` callbacks), the display model
(:mod:`.model`, numpy only), the levels layer and slider (:mod:`.levels`), objects and
clicks (:mod:`.clicks`), the 3D view (:mod:`.view3d`), export (:mod:`.export`),
sessions (:mod:`.session`), inputs (:mod:`.inputs`), "Apply to all" (:mod:`.cohort`) and
the PHATE view (:mod:`.phate`). One mixin it inherits holds its own orchestration:
:mod:`.segmenting` (train, load and save the encoder; segment and adopt the results).

- A 2D image gets one hierarchy; a grey 3D layer ``(Z, Y, X)`` is ONE volume: Train
  trains a 2.5D encoder on it (``pipeline.train_volume_encoder``, the layer's scale as
  voxel spacing) and Segment makes one hierarchy for the whole volume
  (``pipeline.segment_volume``) in the worker. A stack of colour images
  ``(N, H, W, 3)`` is segmented image by image (the slice under ``viewer.dims``
  first), each slice filled as it arrives.
- ``"CUTS levels"``: a Labels layer with the image's scale, translate, affine and
  metadata; values are cluster id + 1, and for a volume the background (outside the
  body) is 0, transparent (see :mod:`.model`). The granularity slider (coarse left,
  fine right) rewrites the whole layer in place through one lookup table.
- Objects are their prompts (:mod:`.clicks`, :mod:`.objects`, :mod:`.prompts`,
  :mod:`.promptlayers`, :mod:`.objectlist`): click or shift-click (a voxel in any slice,
  or the rendered volume in 3D) adds a positive point, alt/ctrl-click a negative one,
  scribbles are painted in "CUTS prompts"; each change solves the selected object from
  all its prompts at the slider's level, off the GUI thread. "CUTS mask" shows it in
  the object's colour, "CUTS labels" every object; "New object" starts the next label
  id; grow ``]`` / shrink ``[`` step the level; ctrl+z / ctrl+shift+z undo and redo.
- Export writes the mask or the labels through the plugin's npe2 writer: NIfTI keeps
  the source geometry, PNG is 0/255 for a mask; "objects" is one label map keeping the
  ids (names in a JSON beside it), or a DICOM SEG with one segment per object.
- Sessions (:mod:`.session`): "Save session" writes a folder that the plugin's reader
  opens again as image, levels and labels; the widget adopts those layers.
- Several co-registered layers (:mod:`.inputs`): layers ticked in "Also use" join the
  chosen image as one input, one channel each (MRI sequences): one encoder on all
  channels, one hierarchy, clicks in any of them; a session records every file.
- "Apply to all images" / "Apply to folder..." (:mod:`.cohort`): the mask's structure
  found in every other open image of the same kind (or every image file of a folder)
  with the same encoder, in the background: one "<image> CUTS match" layer each.

For tests: ``widget.run_sync = True`` runs jobs on the calling thread; the methods
:meth:`CutsWidget.train`, :meth:`~CutsWidget.segment`, :meth:`~CutsWidget.load_weights`,
:meth:`~CutsWidget.save_weights`, :meth:`~CutsWidget.set_level`,
:meth:`~CutsWidget.click`, :meth:`~CutsWidget.export`,
:meth:`~CutsWidget.compute_phate`, :meth:`~CutsWidget.use_layers`,
:meth:`~CutsWidget.apply_to_all` and :meth:`~CutsWidget.apply_to_folder` do what the
controls do, without dialogs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
from qtpy.QtWidgets import QFileDialog, QWidget

from .clicks import MouseHooks, Objects
from .cohort import Cohort
from .export import Exporter
from .inputs import Inputs, source_from_layers
from .levels import Levels
from .session import Sessions
from .jobs import JobRunner
from .segmenting import SegmentJobs
from .state import WidgetState
from .settings import (DEVICES, LEVELS_NAME, MASK_NAME, NO_IMAGE_HINT, UNITS,  # noqa: F401
                       Settings, Source, click_mode, default_budget, physical_scale,
                       source_from_layer)
from .ui import build_controls
from .view3d import View3D
from ..errors import Cancelled, CutsError, InputError
from ..images import check_image

log = logging.getLogger(__name__)


class CutsWidget(SegmentJobs, QWidget):
    """The dock widget (the manifest's ``napari-cuts.make_widget``).

    What its parts share is ``self.state`` (:class:`~.state.WidgetState`, no Qt): each
    part gets the state and the few services it needs (the viewer, ``notify``, the job
    starter ...) in its constructor, and the panel wires the controls to them."""

    def __init__(self, napari_viewer, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state = WidgetState()
        self._phate = None                        # (Y, pixels, slice index)
        self.runner = JobRunner(self._on_progress)
        self.hooks = MouseHooks(self._on_mouse)
        status = self._status
        self.view3d = View3D(state, napari_viewer,
                             refresh_levels=lambda: self.levels.refresh(),
                             mask_layer=lambda: self.objects.layer,
                             current_slice=self._view_slice)
        self.objects = Objects(state, napari_viewer, notify=self._notify, status=status,
                               hook=self.hooks.hook, view3d=self.view3d,
                               run_sync=lambda: self.runner.run_sync)
        build_controls(self)
        self.levels = Levels(state, napari_viewer, slider=self.slider,
                             level_label=self.level_label, view3d=self.view3d,
                             hook=self.hooks.hook, bind_keys=self.objects.bind_keys,
                             current_slice=self._view_slice, shown=self._level_shown)
        self.sessions = Sessions(state, napari_viewer, notify=self._notify, status=status,
                                 objects=self.objects, use_layers=self.use_layers,
                                 reset_results=self._reset_results,
                                 adopt_results=self.adopt_results,
                                 load_weights=self.load_weights)
        self.inputs = Inputs(self.also_list, self.also_label, image_layer=lambda: self.image_layer,
                             image_layers=self._image_layers)
        self.cohort = Cohort(state, napari_viewer, notify=self._notify, start=self._start,
                             resolve_encoder=self.sessions.resolve_encoder,
                             image_layers=self._image_layers,
                             show_text=self.apply_label.setText, parent=self)
        self.exporter = Exporter(state, napari_viewer, notify=self._notify,
                                 mask_layer=lambda: self.objects.layer,
                                 cluster_labels=self.levels.cluster_labels, parent=self)
        # the controls write the state; the state's changes reach the controls
        self.persistent_check.toggled.connect(lambda on: setattr(state, "persistent", on))
        self.background_check.toggled.connect(
            lambda on: setattr(state, "hide_background", on))
        self.follow_check.toggled.connect(lambda on: setattr(state, "follow", on))
        state.on("persistent", lambda on: self._set_check(self.persistent_check, on))
        state.on("objects", self._on_objects)
        state.on("job", lambda _job: self._update_buttons())
        self._budget_auto = True                  # the box shows the default steps
        self._phate_samples, self._phate_knn = 2000, 5
        self.settings = Settings()
        self.warm_check.toggled.connect(self._warm_start_toggled)
        self.budget_spin.valueChanged.connect(self._budget_edited)
        self.unit_combo.currentTextChanged.connect(self._budget_edited)
        self.seed_spin.valueChanged.connect(self._sync_settings)
        self.device_combo.currentTextChanged.connect(self._sync_settings)
        self.destroyed.connect(self.runner.state.stop)
        self.destroyed.connect(self.objects.close)
        try:
            ev = self.viewer.layers.events
            ev.inserted.connect(self._refresh_layers)
            ev.removed.connect(self._refresh_layers)
            self.viewer.dims.events.current_step.connect(self.levels.on_step)
        except Exception:  # noqa: BLE001 - a constructor never raises
            log.exception("napari-cuts: could not follow the layer list")
        self._refresh_layers()
        self.objects.bind_keys()

    # ------------------------------------------------------ the shared state
    # The panel's public names for the state's fields (the tests and scripts use them).
    source = property(lambda self: self.state.source,
                      lambda self, v: setattr(self.state, "source", v))
    results = property(lambda self: self.state.results,
                       lambda self, v: setattr(self.state, "results", v))
    encoder = property(lambda self: self.state.encoder,
                       lambda self, v: setattr(self.state, "encoder", v))
    level = property(lambda self: self.state.level,
                     lambda self, v: setattr(self.state, "level", int(v)))
    levels_layer = property(lambda self: self.state.levels_layer)
    last_message = property(lambda self: self.state.last_message)

    @property
    def display(self):
        """The volume's display model (:class:`~.model.LevelsDisplay`), or None."""
        return self.levels.display

    @property
    def shown_clusters(self) -> Optional[int]:
        return self.levels.shown_clusters

    def _status(self, text: str) -> None:
        """The progress line under Segment."""
        self.progress_label.setText(text)

    def _view_slice(self) -> int:
        return self._current_slice(self.state.source)

    @staticmethod
    def _set_check(box, on: bool) -> None:
        if box.isChecked() != bool(on):
            box.blockSignals(True)
            box.setChecked(bool(on))
            box.blockSignals(False)

    def _on_objects(self, _objects) -> None:
        """The objects changed: the area line, the PHATE highlight, the buttons."""
        try:
            if self.state.objects is not None:
                self.area_label.setText(self.objects.area_text())
            self._recolor_phate()
            self._update_buttons()
        except RuntimeError:  # the widget is gone
            pass

    def _level_shown(self) -> None:
        self._recolor_phate()
        self._update_buttons()

    # ------------------------------------------------------------- settings
    @property
    def settings(self) -> Settings:
        """The settings shown in the controls (``budget`` None while the box shows the
        default steps for the chosen image); ``state.settings`` follows them."""
        return self._read_settings()

    def _read_settings(self) -> Settings:
        return Settings(budget=None if self._budget_auto else self.budget_spin.value(),
                        unit=self.unit_combo.currentText(),
                        seed=self.seed_spin.value(), device=self.device_combo.currentText(),
                        phate_samples=self._phate_samples, phate_knn=self._phate_knn,
                        warm_start=self.warm_check.isChecked())

    def _sync_settings(self, *_args) -> None:
        self.state.settings = self._read_settings()

    @settings.setter
    def settings(self, s: Settings) -> None:
        if s.unit not in UNITS or s.device not in DEVICES:
            raise InputError(f"unit must be one of {UNITS} and device one of {DEVICES}.")
        self.seed_spin.blockSignals(True)
        self.seed_spin.setValue(int(s.seed))
        self.seed_spin.blockSignals(False)
        self.device_combo.blockSignals(True)
        self.device_combo.setCurrentText(s.device)
        self.device_combo.blockSignals(False)
        self._phate_samples, self._phate_knn = int(s.phate_samples), int(s.phate_knn)
        self.warm_check.blockSignals(True)
        self.warm_check.setChecked(bool(s.warm_start))
        self.warm_check.blockSignals(False)
        self._set_budget_box(s.budget, s.unit)
        self._budget_auto = s.budget is None
        self.show_default_budget()
        self._sync_settings()

    def _set_budget_box(self, value, unit: str) -> None:
        """Show ``value`` ``unit`` in the budget box without counting it as the user's."""
        for w in (self.budget_spin, self.unit_combo):
            w.blockSignals(True)
        self.unit_combo.setCurrentText(unit)
        self.budget_spin.setDecimals(0 if unit in ("steps", "epochs") else 1)
        if value is not None:
            self.budget_spin.setValue(float(value))
        for w in (self.budget_spin, self.unit_combo):
            w.blockSignals(False)

    def _budget_edited(self, *_args) -> None:
        """The user typed a budget or chose a unit: it is theirs from now on."""
        self._budget_auto = False
        unit = self.unit_combo.currentText()
        self.budget_spin.setDecimals(0 if unit in ("steps", "epochs") else 1)
        self._sync_settings()

    def show_default_budget(self) -> Optional[int]:
        """While the budget is the default, show the steps training will take on the
        chosen image (from the generic weights when ticked); returns them (None without
        an image, or when the user set a budget)."""
        if not self._budget_auto:
            return None
        try:
            src = source_from_layers(self.inputs.chosen())
            steps = default_budget(src, self._train_images(src), self.warm_check.isChecked())
        except Exception:  # noqa: BLE001 - no (usable) image yet: the box keeps its value
            return None
        self._set_budget_box(steps, "steps")
        return steps

    def _warm_start_toggled(self, _on: bool) -> None:
        """A default budget follows the start point (fewer steps from the generic
        weights); a budget the user chose stays."""
        self.show_default_budget()
        self._sync_settings()

    @property
    def mask(self) -> Optional[np.ndarray]:
        """The mask, bool (H, W) or (Z, Y, X); None before the first click."""
        return self.state.mask

    @property
    def clicks(self) -> list:
        """The selected object's points: ("positive" | "negative", point)."""
        return self.objects.clicks

    @property
    def mask_layer(self):
        return self.objects.layer

    def click(self, point, mode: str = "positive") -> bool:
        """A point prompt at ``point`` (data coordinates of the result layers, (row, col)
        or (z, row, col)) for the selected object: ``mode`` "positive", "negative" or
        "replace" (its prompts start over). False if outside."""
        return self.objects.click(point, mode)

    def _on_mouse(self, layer, event):
        return self.objects.on_mouse(layer, event)

    # ------------------------------------------------------------- objects
    def new_object(self, name: Optional[str] = None) -> Optional[int]:
        """Start the next object (the next label id); clicks then write into it."""
        return self.objects.new_object(name)

    def delete_object(self, label_id: Optional[int] = None) -> bool:
        """Delete an object (the selected one by default)."""
        return self.objects.delete(label_id)

    def rename_object(self, label_id: int, name: str) -> None:
        self.objects.rename(label_id, name)

    def select_object(self, label_id: int) -> None:
        """Make ``label_id`` the object that clicks write into."""
        self.objects.select(label_id)

    def grow(self) -> bool:
        """The slider one real merge up the selected object's lineage, solved there."""
        return self.objects.step(+1)

    def shrink(self) -> bool:
        """The slider one real merge down the selected object's lineage, solved there."""
        return self.objects.step(-1)

    def clear_prompts(self) -> bool:
        """The selected object starts over: no prompt, no mask (one undo step)."""
        return self.objects.clear()

    def undo(self) -> bool:
        """Undo the last change of the objects (labels and list together)."""
        return self.objects.undo()

    def redo(self) -> bool:
        return self.objects.redo()

    @property
    def labels_layer(self):
        """The "CUTS labels" layer (every object), or None."""
        return self.objects.labels_layer

    # -------------------------------------------------------------- levels
    def persistent_map(self, i: int = 0) -> np.ndarray:
        """The persistent structures of hierarchy ``i`` (cached)."""
        return self.levels.persistent_map(i)

    def cluster_labels(self, i: int = 0) -> np.ndarray:
        """The cluster map a click reads (see :meth:`.levels.Levels.cluster_labels`)."""
        return self.levels.cluster_labels(i)

    def slice_labels(self, i: int) -> np.ndarray:
        """The ``(H, W)`` cluster map of slice (or image) ``i``."""
        return self.levels.slice_labels(i)

    def set_level(self, level: int) -> None:
        """Show hierarchy level ``level`` (0 = finest), as moving the slider does."""
        self.levels.set_level(level)

    # ------------------------------------------------------------- sessions
    def save_session(self, folder) -> Optional[Path]:
        """Write a session folder (hierarchy, encoder, objects, labels, source, geometry)
        that opens again through the plugin's reader; None on failure."""
        return self.sessions.save(folder)

    def _save_session_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Save session into folder")
        if path:
            self.save_session(path)

    def adopt_results(self, res, display, level: int, levels_layer, persistent: bool) -> None:
        """Show a hierarchy read from disk (a session) in ``levels_layer``, as if it had
        just been segmented: slider, clicks and objects work at once."""
        st = self.state
        self.levels.reset(display)
        with st.quietly():                 # shown below, once
            st.level = int(level)
            st.persistent = bool(persistent)
        st.results = {0: res}
        self.objects.reset(self._result_shape(), per_slice=False)
        self.levels.adopt_layer(levels_layer)
        self.levels.sync_slider()
        self._set_check(self.persistent_check, st.persistent)
        self.levels.apply()
        self.view3d.sync_image()
        self.objects.show()

    def mask_stats(self) -> dict:
        """Mask size: ``pixels``, and ``mm2`` (2D) or ``ml`` (3D) from the layer scale."""
        return self.objects.stats()

    def export(self, path, what: str = "mask") -> list[str]:
        """Write the mask (``what="mask"``) or the labels (``"labels"``) to ``path``
        (.nii.gz/.nii keep the source geometry; .png). [] after a notification on failure."""
        return self.exporter.export(path, what)

    def _export_dialog(self, what: str) -> None:
        self.exporter.dialog(what)

    def _has_physical_scale(self) -> bool:
        """True when the layer scale is a voxel size (NIfTI/DICOM source, or a scale the
        user set), not the pixel grid of a photograph."""
        return physical_scale(self.source.layer)

    @property
    def run_sync(self) -> bool:
        """Run jobs on the calling thread (tests); default False (thread_worker)."""
        return self.runner.run_sync

    @run_sync.setter
    def run_sync(self, value: bool) -> None:
        self.runner.run_sync = bool(value)

    @property
    def busy(self) -> bool:
        """A job runs (``state.job`` names it)."""
        return self.state.busy

    # ---------------------------------------------------------------- layers
    def _image_layers(self) -> list:
        from napari.layers import Image

        return [lay for lay in self.viewer.layers if isinstance(lay, Image)]

    def _refresh_layers(self, *_args) -> None:
        try:
            names = [lay.name for lay in self._image_layers()]
            current = self.image_combo.currentText()
            self.image_combo.blockSignals(True)
            self.image_combo.clear()
            self.image_combo.addItems(names)
            if current in names:
                self.image_combo.setCurrentText(current)
            self.image_combo.blockSignals(False)
            self.inputs.refresh()
            self._update_buttons()
            self.show_default_budget()
        except RuntimeError:  # the widget is gone; napari still held the callback
            return
        try:
            self.sessions.scan()
        except RuntimeError:
            pass
        except Exception:  # noqa: BLE001 - a layer event never raises
            log.exception("napari-cuts: could not adopt a session's layers")

    def _on_image_chosen(self) -> None:
        try:
            self.inputs.refresh()
            self._update_buttons()
            self.show_default_budget()
        except RuntimeError:  # the widget is gone
            pass

    def use_layers(self, names) -> None:
        """Choose image layers together as one input (co-registered sequences): the first
        is the "Image", the others are ticked in "Also use" (as the user would)."""
        names = list(names)
        if not names:
            raise InputError("name at least one image layer.")
        if self.image_combo.findText(names[0]) < 0:
            raise InputError(f"no image layer named '{names[0]}'.")
        self.image_combo.setCurrentText(names[0])
        self.inputs.refresh()
        self.inputs.set_also(names[1:])

    @property
    def image_layers_chosen(self) -> list:
        """The chosen image layer and the layers ticked to go with it."""
        return self.inputs.chosen()

    @property
    def image_layer(self):
        """The chosen Image layer, or None."""
        name = self.image_combo.currentText()
        for lay in self._image_layers():
            if lay.name == name:
                return lay
        return None

    def _update_buttons(self) -> None:
        busy = self.busy
        has_image = self.image_layer is not None
        has_result = bool(self.state.results)
        self.hint.setVisible(not has_image)
        model = self.state.objects
        cur = self.state.current
        ol = self.object_list
        ol.new_btn.setEnabled(has_result and not busy)
        ol.delete_btn.setEnabled(cur is not None and not busy)
        for b in (ol.grow_btn, ol.shrink_btn):
            b.setEnabled(cur is not None and bool(cur.prompts.positive) and not busy)
        ol.clear_btn.setEnabled(cur is not None and not cur.prompts.empty and not busy)
        ol.undo_btn.setEnabled(model is not None and model.can_undo and not busy)
        ol.redo_btn.setEnabled(model is not None and model.can_redo and not busy)
        ol.export_btn.setEnabled(model is not None and any(o.mask is not None
                                                           for o in model.objects))
        ol.session_btn.setEnabled(has_result and not busy)
        self.image_combo.setEnabled(not busy)
        self.also_list.setEnabled(not busy)
        self.apply_all_btn.setEnabled(self.mask is not None and not busy)
        self.apply_folder_btn.setEnabled(self.mask is not None and not busy)
        self.train_btn.setEnabled(has_image and not busy)
        self.warm_check.setEnabled(not busy)
        self.segment_btn.setEnabled(has_image and not busy)
        self.load_btn.setEnabled(not busy)
        self.save_btn.setEnabled((self.state.encoder is not None
                                  or self.sessions.encoder_path is not None) and not busy)
        self.cancel_btn.setEnabled(busy)
        self.slider.setEnabled(has_result and not self.state.persistent)
        self.persistent_check.setEnabled(has_result)
        self.export_labels_btn.setEnabled(has_result and not busy)
        self.export_mask_btn.setEnabled(self.mask is not None and not busy)
        self.phate_btn.setEnabled(has_result and not busy)

    # ---------------------------------------------------------- notifications
    def _notify(self, level: str, message: str) -> None:
        from napari.utils import notifications

        self.state.last_message = (level, message)
        {"error": notifications.show_error, "warning": notifications.show_warning,
         "info": notifications.show_info}[level](message)

    def _source(self) -> Optional[Source]:
        """The chosen layer as slices, or None after telling the user what is wrong."""
        layers = self.inputs.chosen()
        if not layers:
            self._notify("error", "No image layer: " + NO_IMAGE_HINT)
            return None
        try:
            src = source_from_layers(layers)
            if not src.volume:
                check_image(src.slices[0], "layer " + ", ".join(f"'{lay.name}'" for lay in layers))
        except CutsError as exc:
            self._notify("error", str(exc))
            return None
        return src

    # ------------------------------------------------------------------ jobs
    def _start(self, name: str, job, on_yield=None, on_return=None) -> bool:
        if self.busy:
            self._notify("warning", f"napari-cuts is busy ({self.state.job}); wait or Cancel.")
            return False
        self.progress_bar.setRange(0, 0)
        self.progress_label.setText(f"{name}...")
        self.state.job = name              # the buttons follow (busy)
        self.runner.start(name, job, on_yield=on_yield or (lambda item: None),
                          on_return=on_return or (lambda result: None),
                          on_error=self._on_error, on_finish=self._on_finish)
        return True

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if total > 0:
            self.progress_bar.setTextVisible(True)
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(min(done, total))
        self.progress_label.setText(message)

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self._notify("info", f"napari-cuts: {exc}")
        elif isinstance(exc, CutsError):
            self._notify("error", str(exc))
        else:
            log.error("napari-cuts job failed", exc_info=(type(exc), exc, exc.__traceback__))
            self._notify("error", f"napari-cuts failed: {type(exc).__name__}: {exc}")

    def _on_finish(self) -> None:
        with self.state.quietly():         # the buttons are updated below
            self.state.job = None
        try:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
            self.progress_bar.setTextVisible(False)
            if self.last_message is None or self.last_message[0] == "info":
                self.progress_label.setText("")
            self._update_buttons()
        except RuntimeError:  # the widget was deleted during the run
            pass

    def cancel(self) -> None:
        """Stop the running job at its next check; the widget stays usable."""
        if self.busy:
            self.runner.cancel()
            self.progress_label.setText("cancelling...")

    # ---------------------------------------------------------------- cohort
    def apply_to_all(self) -> bool:
        """Find the mask's structure in every other open image of the same kind, with the
        same encoder, in the background: one mask layer per image (see :mod:`.cohort`)."""
        return self.cohort.apply()

    def apply_to_folder(self, folder, out=None) -> bool:
        """The same for every image file of ``folder``: masks and summary.csv in ``out``
        (default ``folder/cuts_masks``), in the background."""
        return self.cohort.apply_folder(folder, out)

    # ----------------------------------------------------------------- PHATE
    def compute_phate(self) -> bool:
        """Compute the PHATE view of the shown slice's pixel embeddings (in the background)."""
        from .phate import phate_job

        i = self.levels.shown_slice()
        if i is None:
            self._notify("error", "Segment an image first.")
            return False
        s = self.settings
        if any(r.embeddings is None for r in self.results.values()):
            self._notify("error", "The PHATE view needs the embeddings, which a session does "
                                  "not keep: Segment again to compute them.")
            return False
        if self.source.one_volume:
            res = self.results[0]
            pz, py, px = res.pool
            emb = np.asarray(res.embeddings[min(i // pz, res.embeddings.shape[0] - 1)])
            job = phate_job(emb, (py, px), self.source.shape, n=s.phate_samples,
                            knn=s.phate_knn, seed=s.seed)
        else:
            res = self.results[i]
            job = phate_job(np.asarray(res.embeddings), res.pool, self.source.shape,
                            n=s.phate_samples, knn=s.phate_knn, seed=s.seed)
        self.phate_section.expand(animate=False)

        def done(result):
            Y, pixels = result
            self._phate = (Y, pixels, i)
            self.phate_panel.set_points(Y, pixels, self._phate_colors())

        return self._start("PHATE", job, on_return=done)

    def _phate_colors(self) -> np.ndarray:
        Y, pixels, i = self._phate
        ids = self.levels.slice_labels(i)[pixels[:, 0], pixels[:, 1]].astype(np.int64) + 1
        try:
            return np.asarray(self.levels_layer.colormap.map(ids))
        except Exception:  # noqa: BLE001 - older napari: colour by id
            return ids

    def _recolor_phate(self) -> None:
        if self._phate is None:
            return
        Y, pixels, i = self._phate
        if not self.source.one_volume and i not in self.results:
            return
        hl = None
        if self.mask is not None:
            m = self.mask[i] if self.source.volume else self.mask
            hl = m[pixels[:, 0], pixels[:, 1]]
        self.phate_panel.set_colors(self._phate_colors(), hl)

    def pick_phate(self, index: int, modifiers=()) -> bool:
        """The pixel of PHATE point ``index`` as a prompt (as a click on it would)."""
        if self._phate is None:
            return False
        _, pixels, i = self._phate
        r, c = (int(v) for v in pixels[int(index)])
        point = (i, r, c) if self.source.volume else (r, c)
        return self.click(point, click_mode(modifiers))
