"""Take the screenshots of docs/: the CUTS widget docked in a real napari viewer.

- ``docs/screenshot.png``: the sample fundus photograph; the encoder trained with the
  widget's default budget and the
  image segmented in the widget's thread worker, the brightest blob (the optic disc,
  lesion-like) clicked, the PHATE view computed.
- ``docs/screenshot_volume_2d.png`` and ``docs/screenshot_volume_3d.png``: the sample
  MNI T1 volume segmented as ONE hierarchy (the default budget), a lateral
  ventricle clicked (the innermost voxel of the bundled pseudo ground truth, at the
  coarsest level whose cluster there is within 0.02 Dice of the best match), in the 2D slice view and in the 3D view.
  The slider, click and 3D-click latencies of the real viewer (layer update, and layer
  update plus the redraw) are printed.

Needs a display, e.g.::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot.py [--only volume]
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


def settle(app, n: int = 50) -> None:
    for _ in range(n):
        app.processEvents()
        time.sleep(0.02)


def fundus_shot(viewer, app, widget, args, out: Path) -> int:
    from napari_cuts._widget import Settings

    (image_layer,) = viewer.open_sample("napari-cuts", "fundus")
    widget.image_combo.setCurrentText(image_layer.name)
    widget.settings = Settings(budget=args.steps, unit="steps", seed=args.seed,
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
    settle(app)
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    print(f"wrote {out}")
    return 0


def timed(app, fn, n: int = 1) -> tuple[float, float]:
    """(ms of ``fn()``, ms of ``fn()`` plus the redraw), medians over ``n`` calls."""
    a, b = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        app.processEvents()
        t2 = time.perf_counter()
        a.append((t1 - t0) * 1e3)
        b.append((t2 - t0) * 1e3)
    return float(np.median(a)), float(np.median(b))


def volume_shots(viewer, app, widget, args, out2d: Path, out3d: Path) -> int:
    from napari_cuts._widget import Settings
    from napari_cuts.io import read_image
    from napari_cuts.selection import innermost_point

    sample = REPO / "src" / "napari_cuts" / "sample_data"
    (image_layer,) = viewer.open_sample("napari-cuts", "mri_volume")
    widget.image_combo.setCurrentText(image_layer.name)
    widget.settings = Settings(budget=args.steps, unit="steps", seed=args.seed)
    t0 = time.time()
    widget.train()
    wait(app, widget, args.timeout)
    print(f"volume: trained in {time.time() - t0:.1f} s: {widget.encoder_label.text()}")
    t0 = time.time()
    widget.segment()
    wait(app, widget, args.timeout)
    if not widget.results:
        print("volume segmentation failed:", widget.last_message, file=sys.stderr)
        return 1
    hier = widget.results[0].hierarchy
    print(f"volume: segmented in {time.time() - t0:.1f} s: {hier.shape}, {hier.n_levels} "
          f"levels, clusters {list(map(int, hier.n_clusters))}")
    gt = np.rint(np.asarray(read_image(sample / "mri_volume_seg.nii.gz").data)) == 1
    if gt.shape != hier.shape:
        print(f"pseudo ground truth {gt.shape} != volume {hier.shape}", file=sys.stderr)
        return 1
    pt = innermost_point(gt)
    spacing = tuple(float(v) for v in read_image(sample / "mri_volume.nii.gz").spacing[:3])

    def dice(m):
        return 2 * np.count_nonzero(m & gt) / max(1, np.count_nonzero(m) + np.count_nonzero(gt))

    scores = [dice((lab := hier.labels(lv)) == lab[pt]) for lv in range(hier.n_levels)]
    # the coarsest level within 0.02 of the best click (fewer clusters, easier to read)
    level = int(max(lv for lv, sc in enumerate(scores) if sc >= max(scores) - 0.02))
    print(f"volume: ventricle at {pt}; click Dice by level {[round(s, 2) for s in scores]}")

    # latencies in the real viewer, 2D view: slider (every level) and click
    levels = list(range(hier.n_levels))
    sl = [timed(app, lambda lv=lv: widget.set_level(lv)) for lv in levels + levels[::-1]]
    print("volume 2D view: slider %.1f ms (with redraw %.1f ms), max %.1f / %.1f ms" % (
        np.median([a for a, _ in sl]), np.median([b for _, b in sl]),
        max(a for a, _ in sl), max(b for _, b in sl)))
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    print("volume 2D view: a redraw alone (no data change) %.1f ms" % timed(app, canvas.update, n=5)[1])
    widget.set_level(level)
    viewer.dims.set_current_step(0, pt[0])
    settle(app, 5)
    ck = timed(app, lambda: widget.click(pt), n=5)
    print("volume 2D view: click %.1f ms (with redraw %.1f ms); %s; Dice %.3f" % (
        ck[0], ck[1], widget.area_label.text(), dice(widget.mask)))
    # further prompts as the standard simulated user gives them (the largest error of the
    # mask against the pseudo ground truth: positive where the ventricles are missing,
    # negative where the mask spills over), each solved with all the others
    from napari_cuts.evaluation.clicks import next_click

    res = widget.objects.resolver
    for _ in range(args.prompts):
        nxt = next_click(widget.mask, gt, spacing)
        if nxt is None:
            break
        p, positive = nxt
        t0 = time.perf_counter()
        widget.click(tuple(int(v) for v in p), "positive" if positive else "negative")
        while res.busy or not widget.objects.current.solved:
            app.processEvents()
            time.sleep(0.01)
        print("volume prompt %s at %s: solved in %.0f ms; Dice %.3f" % (
            "+" if positive else "-", tuple(int(v) for v in p),
            1000 * (time.perf_counter() - t0), dice(widget.mask)))
        viewer.dims.set_current_step(0, int(p[0]))
    show_z = pt[0]
    if not any(kind == "negative" for kind, _ in widget.clicks):
        # one negative prompt where the mask spills over most (the largest false positive)
        nxt = next_click(widget.mask, gt & widget.mask, spacing)
        if nxt is not None:
            p = tuple(int(v) for v in nxt[0])
            widget.click(p, "negative")
            while res.busy or not widget.objects.current.solved:
                app.processEvents()
                time.sleep(0.01)
            print("volume prompt - at %s (the largest spill): Dice %.3f" % (p, dice(widget.mask)))
            show_z = p[0]
    viewer.dims.set_current_step(0, show_z)
    widget.progress_label.setText("One hierarchy for the volume; a lateral ventricle clicked, "
                                  "then positive (green) and negative (red) prompts.")
    viewer.layers.selection.active = widget.levels_layer
    viewer.reset_view()
    settle(app)
    viewer.screenshot(str(out2d), canvas_only=False, flash=False)
    print(f"wrote {out2d}")

    # the 3D view
    viewer.dims.ndisplay = 3
    cam = widget.view3d.camera
    cam.angles = tuple(args.angles)
    settle(app, 20)
    viewer.reset_view()
    cam.angles = tuple(args.angles)
    settle(app)
    sl3 = [timed(app, lambda lv=lv: widget.set_level(lv)) for lv in (level - 1, level + 1, level)
           if 0 <= lv < hier.n_levels]
    print("volume 3D view: a redraw alone (no data change) %.1f ms" % timed(app, canvas.update)[1])
    print("volume 3D view: slider %.1f ms (with redraw %.1f ms)" % (
        np.median([a for a, _ in sl3]), np.median([b for _, b in sl3])))
    # a 3D click through the ventricle: the ray from the camera through its voxel
    vd = np.asarray(cam.view_direction, float)
    world = np.asarray(widget.levels_layer.data_to_world(np.asarray(pt, float)))

    def click3d():
        p = widget.objects.pick_3d(world - 300 * vd, vd, (0, 1, 2))
        if p is not None:
            widget.click(p)
        return p

    hit = [None]

    def run3d():
        hit[0] = click3d()

    c3 = timed(app, run3d, n=3)
    while res.busy or not widget.objects.current.solved:
        app.processEvents()
        time.sleep(0.01)
    print("volume 3D view: 3D click %.1f ms (with redraw %.1f ms), hit %s; %s; Dice %.3f" % (
        c3[0], c3[1], hit[0], widget.area_label.text(), dice(widget.mask)))

    settle(app)
    viewer.screenshot(str(out3d), canvas_only=False, flash=False)
    print(f"wrote {out3d}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "screenshot.png"))
    ap.add_argument("--out-volume-2d", default=str(REPO / "docs" / "screenshot_volume_2d.png"))
    ap.add_argument("--out-volume-3d", default=str(REPO / "docs" / "screenshot_volume_3d.png"))
    ap.add_argument("--only", choices=("fundus", "volume"), default=None)
    ap.add_argument("--steps", type=int, default=None,
                    help="training budget in steps (default: the widget's default, shown in its box)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--angles", type=float, nargs=3, default=(-20.0, 30.0, 150.0),
                    help="3D camera angles (degrees)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--prompts", type=int, default=3, help="volume: prompts after the click")
    args = ap.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    rc = 0
    for what in ("fundus", "volume"):
        if args.only not in (None, what):
            continue
        viewer = napari.Viewer(title="napari-cuts", show=True)
        app = QApplication.instance()
        viewer.window._qt_window.resize(1600, 1000)
        _dock, widget = viewer.window.add_plugin_dock_widget("napari-cuts", "CUTS segmentation")
        for p in (args.out, args.out_volume_2d, args.out_volume_3d):
            Path(p).parent.mkdir(parents=True, exist_ok=True)
        if what == "fundus":
            rc |= fundus_shot(viewer, app, widget, args, Path(args.out))
        else:
            rc |= volume_shots(viewer, app, widget, args, Path(args.out_volume_2d),
                               Path(args.out_volume_3d))
        viewer.close()
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
