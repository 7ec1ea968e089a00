"""The widget's budget and warm start: by default the budget box shows the steps that
training will take on the chosen image (fewer from the generic weights), and a budget
the user typed stays."""

from __future__ import annotations

import numpy as np

from napari_cuts._widget import Settings
from napari_cuts.budget import steps_for

from test_widget import docked  # noqa: F401 (the docked-widget fixture)


def test_settings_train_kwargs():
    s = Settings()
    assert s.warm_start and s.budget is None and s.unit == "steps"
    assert s.train_kwargs() == {"warm_start": True}
    assert Settings(budget=30.0, unit="seconds", warm_start=False).train_kwargs() == \
        {"warm_start": False, "seconds": 30.0}
    assert Settings(budget=2, unit="minutes").train_kwargs()["seconds"] == 120.0
    assert Settings(budget=2, unit="epochs").train_kwargs()["epochs"] == 2
    assert Settings(budget=12.4, unit="steps").train_kwargs()["steps"] == 12


def test_budget_box_shows_the_default_steps(docked):
    viewer, widget = docked
    rgb = np.random.default_rng(0).random((48, 64, 3)).astype(np.float32)
    viewer.add_image(rgb, name="rgb", rgb=True)
    widget.image_combo.setCurrentText("rgb")
    assert widget.unit_combo.currentText() == "steps"
    assert widget.budget_spin.value() == steps_for([rgb.shape], ndim=2, warm=True)
    widget.warm_check.setChecked(False)          # from scratch: more steps
    assert widget.budget_spin.value() == steps_for([rgb.shape], ndim=2, warm=False)
    widget.warm_check.setChecked(True)
    vol = np.random.default_rng(1).random((40, 60, 60)).astype(np.float32)
    viewer.add_image(vol, name="vol")
    widget.image_combo.setCurrentText("vol")
    shown = widget.budget_spin.value()
    assert shown in (steps_for([vol.shape], ndim=3, warm=True),
                     steps_for([vol.shape], ndim=3, warm=False))
    assert widget.settings.budget is None        # still the default
    widget.budget_spin.setValue(9)               # the user's budget stays
    widget.image_combo.setCurrentText("rgb")
    assert widget.budget_spin.value() == 9 and widget.settings.budget == 9
    assert widget.settings.train_kwargs()["steps"] == 9


def test_widget_trains_from_the_warm_start_by_default(docked):
    viewer, widget = docked
    assert widget.warm_check.isChecked()
    rng = np.random.default_rng(0)
    img = rng.random((48, 48, 3)).astype(np.float32)
    img[10:30, 12:32] += 1.0
    viewer.add_image(img, name="rgb", rgb=True)
    widget.settings = Settings(budget=1, unit="epochs")
    assert widget.train(), widget.last_message
    ws = widget.encoder.metadata.get("warm_start")
    assert ws and ws["file"].endswith("warm_rgb.pt") and len(ws["sha256"]) == 64
    # unticked: from scratch
    widget.settings = Settings(budget=1, unit="epochs", warm_start=False)
    assert widget.train(), widget.last_message
    assert not widget.encoder.metadata.get("warm_start")


def test_warm_start_box_applies_to_volumes_too(docked):
    viewer, widget = docked
    viewer.add_image(np.random.default_rng(1).random((6, 40, 40)).astype(np.float32), name="vol")
    widget.image_combo.setCurrentText("vol")
    assert widget.image_layer.name == "vol" and widget.warm_check.isEnabled()
