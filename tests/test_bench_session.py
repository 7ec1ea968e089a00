"""benchmarks/bench_session.py: the in-viewer measure opens a real session folder in a
napari viewer (under the test's Xvfb), docks the widget, moves the slider and clicks;
without a display it says so instead of failing. No timing is asserted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_session.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_session_under_test", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_display_is_reported_not_raised(monkeypatch, tmp_path):
    mod = _load()
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(mod.shutil, "which", lambda name: None)
    with mod._Display() as display:
        assert display.env is None and "no display" in display.why
        got = mod._viewer_case(tmp_path, display)
    assert list(got) == ["error"] and "Xvfb is not installed" in got["error"]


@pytest.mark.gui
def test_viewer_case_opens_a_session_and_clicks(tmp_path):
    import imageio.v3 as iio

    from napari_cuts.cli import main

    mod = _load()
    yy, xx = np.mgrid[:40, :40]
    im = np.where((yy - 20) ** 2 + (xx - 20) ** 2 < 100, 200, 40).astype(np.uint8)
    im = np.stack([im, im // 2, im // 3], axis=-1)
    iio.imwrite(tmp_path / "disc.png", im)
    assert main(["segment", str(tmp_path / "disc.png"), "--out", str(tmp_path / "s"),
                 "--epochs", "1"]) == 0
    with mod._Display() as display:   # pytest-xvfb's DISPLAY
        res = mod._viewer_case(tmp_path / "s", display, warm=True)
    assert "error" not in res, res
    # the child checked that the click's mask is the cluster under it (else an error)
    assert res["layers"] == ["Image", "Labels", "Labels"]
    assert res["pixels"] > 0
    parts = res["open"] + res["dock"] + res["slider"] + res["click"]
    assert res["total"] == pytest.approx(parts, abs=0.01)
