"""Take docs/screenshot.png: the CUTS widget docked next to a segmented fundus image.

Opens the plugin's sample fundus photograph in a real napari viewer, docks the
widget (through the plugin manifest), trains a tiny encoder, segments in the
widget's thread worker, clicks the brightest blob (the optic disc, lesion-like), computes the
PHATE view and saves a screenshot of the whole window. Needs a display, e.g.::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def wait(app, widget, timeout: float) -> None:
    """Run the Qt event loop until the widget's job is done."""
    t0 = time.time()
    while widget.busy:
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            widget.cancel()
            raise SystemExit(f"timed out after {timeout:.0f} s")
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)


def bright_spot(image: np.ndarray) -> tuple[int, int]:
    """(row, col) of the brightest smoothed spot: the optic disc of a fundus photograph."""
    from scipy import ndimage

    grey = np.asarray(image, float)
    grey = grey[..., :3].mean(-1) if grey.ndim == 3 else grey
    smooth = ndimage.gaussian_filter(grey, sigma=max(grey.shape) / 60)
    r, c = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    return int(r), int(c)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "screenshot.png"))
    ap.add_argument("--seconds", type=float, default=20.0, help="training budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cuts._widget import Settings

    viewer = napari.Viewer(title="napari-cuts", show=True)
    app = QApplication.instance()
    qt_window = viewer.window._qt_window
    qt_window.resize(1600, 1000)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-cuts", "CUTS segmentation")
    (image_layer,) = viewer.open_sample("napari-cuts", "fundus")
    widget.settings = Settings(budget=args.seconds, unit="seconds", seed=args.seed,
                               phate_samples=1500)
    t0 = time.time()
    widget.train()
    wait(app, widget, args.timeout)
    print(f"trained in {time.time() - t0:.1f} s: {widget.encoder_label.text()}")
    t0 = time.time()
    widget.segment()
    wait(app, widget, args.timeout)
    if not widget.results:
        print("segmentation failed:", widget.last_message, file=sys.stderr)
        return 1
    hier = widget.results[0].hierarchy
    print(f"segmented in {time.time() - t0:.1f} s: {hier.n_levels} levels, "
          f"clusters {list(map(int, hier.n_clusters))}")
    spot = bright_spot(np.asarray(image_layer.data))
    widget.click(spot)
    print(f"clicked {spot}: {widget.area_label.text()}")
    t0 = time.time()
    widget.compute_phate()
    wait(app, widget, args.timeout)
    print(f"PHATE in {time.time() - t0:.1f} s")
    widget.progress_label.setText("Done: slide for coarser or finer clusters, click to select.")
    viewer.layers.selection.active = widget.levels_layer
    viewer.reset_view()
    for _ in range(50):
        app.processEvents()
        time.sleep(0.02)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    print(f"wrote {out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
