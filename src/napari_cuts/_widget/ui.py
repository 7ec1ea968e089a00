"""The controls of the CUTS dock widget, laid out (no behaviour beyond wiring)."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QDoubleSpinBox,
                            QFormLayout, QGroupBox, QHBoxLayout, QLabel, QListWidget,
                            QProgressBar, QPushButton, QSlider, QSpinBox, QVBoxLayout, QWidget)

from .settings import DEVICES, NO_IMAGE_HINT, UNITS


def build_controls(w) -> None:
    """Create the controls as attributes of the panel ``w`` and connect its buttons to
    its methods (``w.train``, ``w.segment``, ``w.cancel``, ...). This is the panel's own
    layout: the parts get the controls they own from the panel (the slider and the level
    line go to ``w.levels``, the "Also use" list to ``w.inputs``), and the check boxes
    write the shared state (the panel connects them)."""
    from superqt import QCollapsible

    from .objectlist import ObjectList
    from .phate import PhatePanel

    root = QVBoxLayout(w)
    form = QFormLayout()
    w.image_combo = QComboBox()
    w.image_combo.currentIndexChanged.connect(lambda *_: w._on_image_chosen())
    form.addRow("Image", w.image_combo)
    # co-registered sequences (T1, T2, FLAIR ...): ticked layers join the image, one
    # channel each (see .inputs)
    w.also_label = QLabel("Also use")
    w.also_label.setToolTip("Other sequences on the same grid (T1, T2, FLAIR ...): segmented "
                            "together with the image, one channel each, one hierarchy.")
    w.also_list = QListWidget()
    w.also_list.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
    w.also_list.setMaximumHeight(80)
    form.addRow(w.also_label, w.also_list)
    root.addLayout(form)
    w.hint = QLabel(NO_IMAGE_HINT)
    w.hint.setWordWrap(True)
    root.addWidget(w.hint)

    enc = QGroupBox("Encoder")
    ef = QFormLayout(enc)
    budget_row = QHBoxLayout()
    w.budget_spin = QDoubleSpinBox()
    w.budget_spin.setRange(0.1, 100000)
    w.budget_spin.setDecimals(0)
    w.budget_spin.setToolTip(
        "Training budget. By default a number of steps that follows the image's size (shown "
        "here; training ends earlier once the loss has settled), so the same seed gives the "
        "same result. Type another number, or choose epochs or seconds.")
    w.unit_combo = QComboBox()
    w.unit_combo.addItems(UNITS)
    budget_row.addWidget(w.budget_spin)
    budget_row.addWidget(w.unit_combo)
    ef.addRow("Budget", budget_row)
    w.warm_check = QCheckBox("Start from generic weights")
    w.warm_check.setChecked(True)
    w.warm_check.setToolTip(
        "Fine-tune the generic weights shipped with napari-cuts (trained without labels on "
        "redistributable fundus photographs and MRI) on this image: fewer steps for the "
        "same quality. Untick to train from scratch as in the paper.")
    ef.addRow("", w.warm_check)
    w.seed_spin = QSpinBox()
    w.seed_spin.setRange(0, 2**31 - 1)
    w.device_combo = QComboBox()
    w.device_combo.addItems(DEVICES)
    seed_row = QHBoxLayout()
    seed_row.addWidget(w.seed_spin)
    seed_row.addWidget(QLabel("Device"))
    seed_row.addWidget(w.device_combo)
    ef.addRow("Seed", seed_row)
    w.train_btn = QPushButton("Train")
    w.train_btn.setToolTip("Train an encoder on the chosen image (no labels needed).")
    w.load_btn = QPushButton("Load weights...")
    w.save_btn = QPushButton("Save weights...")
    row = QHBoxLayout()
    for b in (w.train_btn, w.load_btn, w.save_btn):
        row.addWidget(b)
    ef.addRow(row)
    w.encoder_label = QLabel("No encoder yet: Train, or Load weights.")
    w.encoder_label.setWordWrap(True)
    ef.addRow(w.encoder_label)
    root.addWidget(enc)

    seg = QGroupBox("Segment")
    sl = QVBoxLayout(seg)
    row = QHBoxLayout()
    w.segment_btn = QPushButton("Segment")
    w.segment_btn.setToolTip("Embed the image and build the coarse-to-fine hierarchy "
                                "(trains an encoder first if there is none).")
    w.cancel_btn = QPushButton("Cancel")
    row.addWidget(w.segment_btn)
    row.addWidget(w.cancel_btn)
    sl.addLayout(row)
    w.progress_bar = QProgressBar()
    w.progress_bar.setRange(0, 1)
    w.progress_bar.setValue(0)
    w.progress_bar.setTextVisible(False)
    w.progress_label = QLabel("")
    w.progress_label.setWordWrap(True)
    sl.addWidget(w.progress_bar)
    sl.addWidget(w.progress_label)
    root.addWidget(seg)

    res = QGroupBox("Granularity and mask")
    rl = QVBoxLayout(res)
    srow = QHBoxLayout()
    srow.addWidget(QLabel("coarse"))
    w.slider = QSlider(Qt.Orientation.Horizontal)
    w.slider.setRange(0, 0)
    srow.addWidget(w.slider)
    srow.addWidget(QLabel("fine"))
    rl.addLayout(srow)
    w.level_label = QLabel("No segmentation yet.")
    rl.addWidget(w.level_label)
    w.persistent_check = QCheckBox("Persistent structures (one map, no slider)")
    w.background_check = QCheckBox("Hide background (volumes: outside the body)")
    w.background_check.setChecked(True)
    w.background_check.setToolTip("The cluster covering most of the volume's outer faces is "
                                  "shown transparent, so the 3D view shows the body.")
    w.follow_check = QCheckBox("Mask follows slider")
    w.follow_check.setToolTip("Moving the slider solves the selected object's prompts "
                              "again at the new level; unticked, the level is taken at "
                              "the next prompt.")
    rl.addWidget(w.persistent_check)
    rl.addWidget(w.background_check)
    rl.addWidget(w.follow_check)
    help_ = QLabel("Click or shift-click (a slice, or the volume in 3D): a positive prompt "
                   "for the selected object; alt/ctrl-click: a negative one; paint in "
                   "'CUTS prompts' (1 object, 2 background); delete points in 'CUTS "
                   "points'. The object is solved from all its prompts at the slider's "
                   "level; ] grow, [ shrink, ctrl+z undo.")
    help_.setWordWrap(True)
    rl.addWidget(help_)
    w.area_label = QLabel("Mask: empty")
    rl.addWidget(w.area_label)
    row = QHBoxLayout()
    w.apply_all_btn = QPushButton("Apply to all images")
    w.apply_all_btn.setToolTip("Find the structure of the mask in every other open image of "
                               "the same kind (2D or volume, same channels) with the same "
                               "encoder: one mask layer per image, no retraining.")
    row.addWidget(w.apply_all_btn)
    w.apply_folder_btn = QPushButton("Apply to folder...")
    w.apply_folder_btn.setToolTip("The same for every image file of a folder (not opened): "
                                  "masks and summary.csv written to <folder>/cuts_masks.")
    row.addWidget(w.apply_folder_btn)
    rl.addLayout(row)
    w.apply_label = QLabel("")
    w.apply_label.setWordWrap(True)
    rl.addWidget(w.apply_label)
    row = QHBoxLayout()
    w.export_mask_btn = QPushButton("Export mask...")
    w.export_labels_btn = QPushButton("Export labels...")
    row.addWidget(w.export_mask_btn)
    row.addWidget(w.export_labels_btn)
    rl.addLayout(row)
    root.addWidget(res)

    objs = QGroupBox("Objects")
    ol = QVBoxLayout(objs)
    w.object_list = ObjectList(
        w.state, stats=lambda i: w.objects.stats(i),
        actions={"new": w.new_object, "clear": w.clear_prompts, "delete": w.delete_object,
                 "shrink": w.shrink, "grow": w.grow, "undo": w.undo, "redo": w.redo,
                 "export_objects": lambda: w._export_dialog("objects"),
                 "save_session": w._save_session_dialog, "rename": w.rename_object,
                 "select": w.select_object})
    ol.addWidget(w.object_list)
    root.addWidget(objs)

    w.phate_section = QCollapsible("PHATE view of the embeddings")
    inner = QWidget()
    il = QVBoxLayout(inner)
    il.setContentsMargins(0, 0, 0, 0)
    w.phate_btn = QPushButton("Compute PHATE view")
    w.phate_panel = PhatePanel()
    w.phate_panel.picked.connect(w.pick_phate)
    il.addWidget(w.phate_btn)
    il.addWidget(w.phate_panel)
    w.phate_section.addWidget(inner)
    root.addWidget(w.phate_section)
    root.addStretch(1)

    w.train_btn.clicked.connect(lambda: w.train())
    w.load_btn.clicked.connect(w._load_dialog)
    w.save_btn.clicked.connect(w._save_dialog)
    w.segment_btn.clicked.connect(lambda: w.segment())
    w.cancel_btn.clicked.connect(w.cancel)
    w.export_mask_btn.clicked.connect(lambda: w._export_dialog("mask"))
    w.export_labels_btn.clicked.connect(lambda: w._export_dialog("labels"))
    w.phate_btn.clicked.connect(lambda: w.compute_phate())
    w.apply_all_btn.clicked.connect(lambda: w.apply_to_all())
    w.apply_folder_btn.clicked.connect(lambda: w.cohort.folder_dialog())
