"""Benchmark: reopening a result without recomputing (issue 17's session-open time).

``run(quick=False) -> dict``::

    {"fundus": {"segment_seconds",
                "open":   {"reader", "hierarchy", "display", "first_level", "click",
                           "total", ...},
                "viewer": {"display", "imports", "viewer_start", "open", "dock",
                           "slider", "click", "total", "layers", "pixels"}
                          or {"error": "why the viewer could not start"},
                "viewer_warm": {... the same ...}},
     "mni":    {... the same ...}, "targets_seconds": {...}, "display": "..."}

For the sample fundus and the bundled MNI volume: ``napari-cuts segment`` writes its
output folder (training budget 20 s, ``quick``: 5 s; not part of the measure), then:

``open`` (headless): in a fresh Python process without Qt, the folder is opened the way
napari opens it: the plugin's reader (``napari_get_reader(folder)(folder)``: source
check by size and sha256, the image read again, the levels and labels layers), the
hierarchy loaded, the widget's display model built
(:class:`napari_cuts._widget.model.LevelsDisplay`), one level's layer values computed
(what the slider shows) and one click applied (:func:`napari_cuts.selection.update_mask`).

``viewer`` (in napari): in another fresh process, under the running X display or a
private Xvfb started for it (``Xvfb -displayfd``, stopped afterwards), a napari viewer
is shown, then timed from ``viewer.open(folder, plugin="napari-cuts")`` (image, levels
and labels layers added) through docking the CUTS widget (which adopts the layers),
moving its slider to the middle level and one click at the centre through the widget
(``widget.click``) whose object mask is checked against the hierarchy's cluster:
``total`` is open + dock + slider + click, the time a user waits after choosing the
folder in a running napari. ``imports`` and ``viewer_start`` (napari's own start-up)
are reported apart. ``viewer`` is a fresh napari whose first layers are the session's
(napari's own first-layer costs included: its units registry, vispy visuals, lazy
scipy imports); ``viewer_warm`` is a napari that has already shown an image and a
labels layer (the usual case: only the plugin's own first use is paid). Without a
display or Xvfb the ``viewer`` entries say why, and the headless numbers are still
given.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src" / "napari_cuts" / "sample_data"

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from napari_cuts._reader import napari_get_reader
from napari_cuts.session import read_session
from napari_cuts._widget.model import LevelsDisplay
from napari_cuts.selection import update_mask
import numpy as np
t_import = time.perf_counter()
folder = sys.argv[1]
layers = napari_get_reader(folder)(folder)
t_reader = time.perf_counter()
hier = read_session(folder).hierarchy()
t_hier = time.perf_counter()
disp = LevelsDisplay.from_hierarchy(hier)
t_disp = time.perf_counter()
lv = hier.n_levels // 2
vals = disp.values(lv)
t_level = time.perf_counter()
centre = tuple(n // 2 for n in hier.shape)
mask = update_mask(None, hier.labels(lv), centre, "replace")
t_click = time.perf_counter()
print(json.dumps({"imports": t_import - t0, "reader": t_reader - t_import,
                  "hierarchy": t_hier - t_reader, "display": t_disp - t_hier,
                  "first_level": t_level - t_disp, "click": t_click - t_level,
                  "total": t_click - t_import, "total_with_imports": t_click - t0,
                  "layers": [l[2] if len(l) > 2 else "image" for l in layers]}))
"""

_GUI_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import napari
from qtpy.QtWidgets import QApplication
t_import = time.perf_counter()
folder = sys.argv[1]
warm = len(sys.argv) > 2 and sys.argv[2] == "warm"
viewer = napari.Viewer(show=True)
app = QApplication.instance()
app.processEvents()
if warm:  # a napari that has shown an image and a labels layer already
    viewer.add_image(np.zeros((16, 16), np.float32))
    viewer.add_labels(np.zeros((16, 16), np.uint8))
    app.processEvents()
    viewer.layers.clear()
    app.processEvents()
t_viewer = time.perf_counter()
layers = viewer.open(folder, plugin="napari-cuts")
app.processEvents()
t_open = time.perf_counter()
_dock, w = viewer.window.add_plugin_dock_widget("napari-cuts", "CUTS segmentation")
app.processEvents()
t_dock = time.perf_counter()
if not w.results or w.levels_layer is None:
    raise SystemExit("the widget did not adopt the session's layers")
hier = w.results[0].hierarchy
lv = hier.n_levels // 2
w.set_level(lv)
app.processEvents()
if w.level != lv:
    raise SystemExit(f"the slider did not move to level {lv}")
t_level = time.perf_counter()
centre = tuple(n // 2 for n in hier.shape)
if not w.click(centre):
    raise SystemExit(f"the click at {centre} was refused")
app.processEvents()
t_click = time.perf_counter()
mask = w.objects.mask
lab = np.asarray(hier.labels(lv))
if mask is None or not np.array_equal(mask, lab == lab[centre]):
    raise SystemExit("the click's mask is not the cluster under it")
out = {"imports": t_import - t0, "viewer_start": t_viewer - t_import,
       "open": t_open - t_viewer, "dock": t_dock - t_open, "slider": t_level - t_dock,
       "click": t_click - t_level, "total": t_click - t_viewer,
       "layers": [type(l).__name__ for l in layers], "pixels": int(mask.sum())}
viewer.close()
print(json.dumps(out))
"""


class _Display:
    """The X display for the viewer child: $DISPLAY when set, else a private Xvfb
    (stopped on exit). ``env`` is None and ``why`` says why when neither is there."""

    def __init__(self) -> None:
        self.proc = None
        self.env = None
        self.name = ""
        self.why = ""

    def __enter__(self):
        env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
        if os.environ.get("DISPLAY"):
            self.env, self.name = env, f"DISPLAY={os.environ['DISPLAY']}"
            return self
        xvfb = shutil.which("Xvfb")
        if xvfb is None:
            self.why = ("no display: $DISPLAY is not set and Xvfb is not installed "
                        "(apt-get install xvfb); only the headless numbers are given")
            return self
        r, wfd = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [xvfb, "-displayfd", str(wfd), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                pass_fds=(wfd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            os.close(wfd)
        with os.fdopen(r) as f:
            num = f.readline().strip()   # Xvfb writes its display number once it is ready
        if not num.isdigit():
            self.why = f"no display: Xvfb did not start (exit status {self.proc.poll()})"
            self._stop()
            return self
        self.env, self.name = dict(env, DISPLAY=f":{num}"), f"Xvfb :{num} (private)"
        return self

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def __exit__(self, *exc) -> None:
        self._stop()


def _viewer_case(out: Path, display: _Display, warm: bool = False,
                 timeout: float = 300.0) -> dict:
    """The in-viewer open of session folder ``out`` (see the module docstring)."""
    if display.env is None:
        return {"error": display.why}
    try:
        cp = subprocess.run([sys.executable, "-c", _GUI_CHILD, str(out)] + (["warm"] if warm else []),
                            env=display.env,
                            capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"the viewer did not get ready within {timeout:.0f} s"}
    lines = cp.stdout.strip().splitlines()
    if cp.returncode != 0 or not lines:
        tail = " ".join((cp.stderr or cp.stdout).strip().splitlines()[-1:])[:300]
        return {"error": f"the viewer could not start or open the session "
                         f"(exit status {cp.returncode}): {tail}"}
    got = json.loads(lines[-1])
    return {"display": display.name,
            **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in got.items()}}


def _case(image: Path, out: Path, seconds: float, display: _Display) -> dict:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "napari_cuts.cli", "segment", str(image), "--out",
                    str(out), "--seconds", str(seconds)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seg_s = time.perf_counter() - t
    cp = subprocess.run([sys.executable, "-c", _CHILD, str(out)], check=True,
                        capture_output=True, text=True)
    opened = json.loads(cp.stdout.strip().splitlines()[-1])
    return {"segment_seconds": round(seg_s, 1),
            "open": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in opened.items()},
            "viewer": _viewer_case(out, display),
            "viewer_warm": _viewer_case(out, display, warm=True)}


def run(quick: bool = False) -> dict:
    seconds = 5.0 if quick else 20.0
    with tempfile.TemporaryDirectory() as tmp, _Display() as display:
        tmp = Path(tmp)
        res = {"fundus": _case(SAMPLE / "fundus.png", tmp / "fundus", seconds, display),
               "mni": _case(SAMPLE / "mri_volume.nii.gz", tmp / "mni", seconds, display),
               "targets_seconds": {"fundus": 2.0, "mni": 10.0},
               "display": display.name or display.why}
    return res


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
