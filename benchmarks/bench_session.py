"""Benchmark: reopening a result without recomputing (issue 17's session-open time).

``run(quick=False) -> dict``::

    {"fundus": {"segment_seconds", "open": {"reader", "hierarchy", "display",
                "first_level", "click", "total"}},
     "mni":    {... the same ...}}

For the sample fundus and the bundled MNI volume: ``napari-cuts segment`` writes its
output folder (training budget 20 s, ``quick``: 5 s; not part of the measure), then, in
a fresh Python process, the folder is opened the way napari opens it: the plugin's
reader (``napari_get_reader(folder)(folder)``: source check by size and sha256, the
image read again, the levels and labels layers), the hierarchy loaded, the widget's
display model built (:class:`napari_cuts._widget.model.LevelsDisplay`), one level's
layer values computed (what the slider shows) and one click applied
(:func:`napari_cuts.selection.update_mask`): after that the slider and the click work.
Docking the Qt widget itself adds 0.5-1.3 s in a running viewer (measured under Xvfb by
the session GUI tests' author; not measured here, which runs without a display).
"""

from __future__ import annotations

import json
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


def _case(image: Path, out: Path, seconds: float) -> dict:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "napari_cuts.cli", "segment", str(image), "--out",
                    str(out), "--seconds", str(seconds)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seg_s = time.perf_counter() - t
    cp = subprocess.run([sys.executable, "-c", _CHILD, str(out)], check=True,
                        capture_output=True, text=True)
    opened = json.loads(cp.stdout.strip().splitlines()[-1])
    return {"segment_seconds": round(seg_s, 1),
            "open": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in opened.items()}}


def run(quick: bool = False) -> dict:
    seconds = 5.0 if quick else 20.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        return {"fundus": _case(SAMPLE / "fundus.png", tmp / "fundus", seconds),
                "mni": _case(SAMPLE / "mri_volume.nii.gz", tmp / "mni", seconds),
                "targets_seconds": {"fundus": 2.0, "mni": 10.0}}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
