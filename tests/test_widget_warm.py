"""The widget's warm start: by default a 2D image fine-tunes the packaged generic weights
for 15 s; volumes and channel counts without packaged weights train from scratch for
60 s; unticking the box moves the untouched default budget."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cuts import pipeline
from napari_cuts._widget import Settings

from test_widget import docked  # noqa: F401 (the docked-widget fixture)


def test_settings_train_kwargs():
    s = Settings()
    assert s.warm_start and s.budget == pipeline.WARM_START_SECONDS == 15.0
    # RGB and grey 2D images: warm start, 15 s of fine-tuning
    for c in (3, 1):
        assert s.train_kwargs(c, False) == {"epochs": None, "seconds": 15.0, "warm_start": True}
    # no packaged weights for 2 channels, and never for a volume: the scratch default
    assert s.train_kwargs(2, False) == {"epochs": None, "seconds": 60.0, "warm_start": False}
    assert s.train_kwargs(1, True) == {"epochs": None, "seconds": 60.0}
    # a budget the user chose is kept
    s2 = Settings(budget=30.0, warm_start=False)
    assert s2.train_kwargs(3, False) == {"epochs": None, "seconds": 30.0, "warm_start": False}
    assert Settings(budget=2, unit="epochs").train_kwargs(1, True) == {"epochs": 2, "seconds": None}


def test_widget_trains_from_the_warm_start_by_default(docked):
    viewer, widget = docked
    assert widget.warm_check.isChecked() and widget.budget_spin.value() == 15.0
    # unticking moves the untouched default to 60 s, ticking back to 15 s
    widget.warm_check.setChecked(False)
    assert widget.budget_spin.value() == 60.0 and widget.settings.warm_start is False
    widget.warm_check.setChecked(True)
    assert widget.budget_spin.value() == 15.0
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


def test_warm_start_box_is_off_for_a_volume(docked):
    viewer, widget = docked
    viewer.add_image(np.random.default_rng(0).random((40, 40)).astype(np.float32), name="slice")
    assert widget.warm_check.isEnabled()
    viewer.add_image(np.random.default_rng(1).random((6, 40, 40)).astype(np.float32), name="vol")
    widget.image_combo.setCurrentText("vol")
    assert widget.image_layer.name == "vol" and not widget.warm_check.isEnabled()
    widget.image_combo.setCurrentText("slice")
    assert widget.warm_check.isEnabled()
