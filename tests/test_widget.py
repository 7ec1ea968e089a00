"""GUI tests of the CUTS dock widget on a 2D image (napari viewer under Xvfb).

The whole flow on the sample fundus (downscaled to 96 x 96) with a tiny training
budget: train, segment, slide, click / shift-click / alt-click, export to NIfTI and
PNG, PHATE, cancel, error paths. Most tests run jobs synchronously
(``widget.run_sync = True``); ``test_threaded_*`` drive the real ``thread_worker``.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "napari-cuts"
WIDGET = "CUTS segmentation"
SAMPLES = REPO / "src" / "napari_cuts" / "sample_data"



def _part(lab, point):
    """The 4-connected part (scipy) of ``lab``'s cluster at ``point``: what one positive
    click selects at the slider's level."""
    from scipy import ndimage

    comp, _ = ndimage.label(lab == lab[tuple(point)])
    return comp == comp[tuple(point)]

def fundus(side: int = 96) -> np.ndarray:
    """The sample fundus photograph, downscaled to (side, side, 3) uint8."""
    import imageio.v3 as iio
    from skimage.transform import resize

    im = iio.imread(SAMPLES / "fundus.png")[..., :3]
    return resize(im, (side, side), anti_aliasing=True, preserve_range=True).round().astype(np.uint8)


def small_volume(n: int = 4, side: int = 64) -> np.ndarray:
    """(n, side, side) float32 grey volume: a bright disc of varying radius on a ramp."""
    yy, xx = np.mgrid[:side, :side]
    rng = np.random.default_rng(0)
    vol = []
    for z in range(n):
        r = side * (0.18 + 0.04 * z)
        disc = ((yy - side / 2) ** 2 + (xx - side / 2) ** 2 < r * r).astype(np.float32)
        vol.append(100 * disc + 0.5 * xx + rng.normal(0, 2, (side, side)))
    return np.stack(vol).astype(np.float32)


class FakeEvent:
    """The parts of a napari mouse event the widget's callback reads."""

    def __init__(self, position, modifiers=(), button=1):
        self.position = tuple(float(p) for p in position)
        self.modifiers = tuple(modifiers)
        self.button = button
        self.type = "mouse_press"


def fake_click(widget, layer, data_point, modifiers=()):
    """Drive ``widget``'s mouse callback through press and release at a data point of the
    result layers (converted to world coordinates first)."""
    world = widget.levels_layer.data_to_world(np.asarray(data_point, float))
    ev = FakeEvent(world, modifiers)
    gen = widget._on_mouse(layer, ev)
    if gen is None:
        return
    next(gen)
    ev.type = "mouse_release"
    try:
        next(gen)
    except StopIteration:
        pass


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def rgb96():
    return fundus(96)


@pytest.fixture(scope="module")
def rgb_encoder(rgb96):
    """A tiny RGB encoder (one training step), shared by the tests of this module."""
    from napari_cuts.encoder import train_encoder

    return train_encoder([rgb96], epochs=1, seed=0)


@pytest.fixture
def docked(make_napari_viewer):
    """(viewer, widget): the widget docked through the plugin manifest."""
    from napari_cuts._widget import CutsWidget

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert isinstance(widget, CutsWidget)
    widget.run_sync = True
    return viewer, widget


@pytest.fixture
def segmented(docked, rgb96, rgb_encoder):
    """A docked widget with the fundus segmented (synchronously)."""
    viewer, widget = docked
    viewer.add_image(rgb96, name="fundus", scale=(0.5, 0.25))
    widget.set_encoder(rgb_encoder)
    assert widget.segment()
    return viewer, widget


def _labels_at(widget, level=None, z=0):
    hier = widget.results[z].hierarchy
    lv = widget.level if level is None else level
    return np.asarray(hier.labels(min(lv, hier.n_levels - 1)))


def _two_levels(hier):
    """Two levels with different cluster counts, coarse first."""
    counts = np.asarray(hier.n_clusters)
    distinct = [lv for lv in range(hier.n_levels) if counts[lv] >= 2]
    assert len(distinct) >= 2, f"need two levels with >= 2 clusters, got {counts}"
    fine = next(lv for lv in distinct if counts[lv] > counts[distinct[-1]])
    return distinct[-1], fine


# --------------------------------------------------------------------- tests

def test_constructor_without_image_is_usable(docked):
    viewer, widget = docked
    assert widget.image_layer is None
    assert not widget.train_btn.isEnabled() and not widget.segment_btn.isEnabled()
    assert not widget.export_mask_btn.isEnabled() and not widget.cancel_btn.isEnabled()
    assert widget.hint.isVisibleTo(widget)
    assert widget.segment() is False
    assert widget.last_message[0] == "error" and "No image layer" in widget.last_message[1]
    assert widget.train() is False
    # an image arriving later enables the buttons
    viewer.add_image(np.random.default_rng(0).random((32, 32)), name="late")
    assert widget.image_layer is not None and widget.segment_btn.isEnabled()
    assert not widget.hint.isVisibleTo(widget)


def test_train_segment_slide_click_export(docked, rgb96, tmp_path):
    import imageio.v3 as iio
    import nibabel as nib

    from napari_cuts._widget import LEVELS_NAME, MASK_NAME, Settings

    viewer, widget = docked
    img = viewer.add_image(rgb96, name="fundus", scale=(0.5, 0.25), translate=(3.0, -2.0),
                           metadata={"source": "test"})
    widget.settings = Settings(budget=1, unit="epochs", seed=0)
    seen = []
    widget.runner._bridge.progress.connect(lambda d, t, m: seen.append(m))
    assert widget.train()
    assert widget.encoder is not None and widget.encoder.in_channels == 3
    assert any("loss" in m.lower() for m in seen), seen[-5:]
    assert widget.save_btn.isEnabled()

    assert widget.segment()
    levels = viewer.layers[LEVELS_NAME]
    assert levels == widget.levels_layer    # the widget holds napari's public proxy
    np.testing.assert_allclose(levels.scale, img.scale)
    np.testing.assert_allclose(levels.translate, img.translate)
    np.testing.assert_allclose(levels.affine.affine_matrix, img.affine.affine_matrix)
    assert levels.metadata["source"] == "test"
    hier = widget.results[0].hierarchy
    assert levels.data.shape == (96, 96)

    # slider: only swaps precomputed levels; the count shown is the hierarchy's
    coarse, fine = _two_levels(hier)
    widget.set_level(coarse)
    data_coarse = levels.data.copy()
    np.testing.assert_array_equal(data_coarse, np.asarray(hier.labels(coarse)) + 1)
    assert widget.shown_clusters == int(hier.n_clusters[coarse])
    assert f"{int(hier.n_clusters[coarse])} clusters" in widget.level_label.text()
    widget.slider.setValue(widget.slider.maximum() - fine)   # as a user drags it
    assert widget.level == fine
    assert not np.array_equal(levels.data, data_coarse)
    assert widget.shown_clusters == int(hier.n_clusters[fine])

    # click: a positive prompt; alone, the structure under the pointer at the current
    # level (the part of its cluster connected to it) becomes the mask
    from napari_cuts.prompts import segment_from_prompts

    folder = widget.objects.folders.get(0)
    lab = _labels_at(widget)
    p1 = (48, 48)
    fake_click(widget, levels, p1)
    mask_layer = viewer.layers[MASK_NAME]
    np.testing.assert_array_equal(mask_layer.data.astype(bool), _part(lab, p1))
    np.testing.assert_allclose(mask_layer.scale, img.scale)
    assert viewer.layers.selection.active.name == LEVELS_NAME   # clicks keep going there
    # shift-click adds a positive prompt, alt-click on it makes it negative: the object
    # is solved from all its prompts each time
    p2 = tuple(int(v) for v in np.argwhere(lab != lab[p1])[0])
    fake_click(widget, levels, p2, modifiers=("Shift",))
    np.testing.assert_array_equal(mask_layer.data.astype(bool),
                                  segment_from_prompts(folder, [p1, p2], level=fine))
    fake_click(widget, img, p2, modifiers=("Alt",))         # on the image layer too
    want = segment_from_prompts(folder, [p1], [p2], level=fine)
    np.testing.assert_array_equal(mask_layer.data.astype(bool), want)
    assert widget.clicks == [("positive", p1), ("negative", p2)]
    n = int(want.sum())
    assert widget.mask_stats() == {"pixels": n, "mm2": pytest.approx(n * 0.5 * 0.25)}
    assert f"{n} pixels" in widget.area_label.text()

    # a drag is a pan, not a click
    before = mask_layer.data.copy()
    ev = FakeEvent(levels.data_to_world(np.array(p2, float)))
    gen = widget._on_mouse(levels, ev)
    next(gen)
    ev.type, ev.position = "mouse_move", tuple(levels.data_to_world(np.array([10.0, 10.0])))
    next(gen)
    ev.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(gen)
    np.testing.assert_array_equal(mask_layer.data, before)

    # the mask stays put when the slider moves ...
    widget.set_level(coarse)
    np.testing.assert_array_equal(mask_layer.data, before)
    # ... unless it follows the slider: the prompts are solved again at the new level
    widget.follow_check.setChecked(True)
    np.testing.assert_array_equal(mask_layer.data.astype(bool),
                                  segment_from_prompts(folder, [p1], [p2], level=coarse))
    widget.set_level(fine)
    np.testing.assert_array_equal(mask_layer.data.astype(bool), want)

    # persistent structures: one map, the slider off
    widget.persistent_check.setChecked(True)
    np.testing.assert_array_equal(levels.data, np.asarray(hier.persistent()) + 1)
    assert not widget.slider.isEnabled()
    widget.persistent_check.setChecked(False)
    np.testing.assert_array_equal(levels.data, lab + 1)

    # export: PNG 0/255 and NIfTI read back
    mask = mask_layer.data.astype(bool)
    out_png = widget.export(tmp_path / "mask.png", what="mask")
    assert out_png
    png = iio.imread(out_png[0])
    assert set(np.unique(png)) <= {0, 255}
    np.testing.assert_array_equal(png > 0, mask)
    out_nii = widget.export(tmp_path / "mask.nii.gz", what="mask")
    nii = nib.load(out_nii[0])
    back = np.asarray(nii.dataobj)
    back = back[..., 0] if back.ndim == 3 else back
    # NIfTI stores (x, y) = (col, row): compare either orientation the writer chose
    assert np.array_equal(back.T > 0, mask) or np.array_equal(back > 0, mask)
    # provenance: a sidecar JSON records version, seed and level
    import json

    record = json.loads((tmp_path / "mask.json").read_text())
    prov = record.get("provenance", record)
    assert prov["seed"] == widget.settings.seed and prov["level"] == widget.level
    assert "napari_cuts_version" in prov
    out_lab = widget.export(tmp_path / "labels.nii.gz", what="labels")
    lab_back = np.asarray(nib.load(out_lab[0]).dataobj)
    lab_back = lab_back[..., 0] if lab_back.ndim == 3 else lab_back
    shown = np.asarray(levels.data)
    assert np.array_equal(lab_back.T, shown) or np.array_equal(lab_back, shown)

    # weights round trip
    wpath = tmp_path / "enc.pt"
    assert widget.save_weights(wpath) and wpath.exists()
    assert widget.load_weights(wpath)
    assert widget.encoder.in_channels == 3 and "enc.pt" in widget.encoder_label.text()


def test_phate_view_picks_a_cluster(segmented):
    from napari_cuts._widget import Settings

    viewer, widget = segmented
    s = widget.settings
    widget.settings = Settings(**{**s.__dict__, "phate_samples": 300, "phate_knn": 5})
    panel = widget.phate_panel
    # the matplotlib figure is only built for the first points (docking stays fast)
    assert panel.canvas is None
    assert widget.compute_phate()
    assert panel.canvas is not None and panel.canvas.parent() is panel
    assert panel.coords.shape == (300, 2) and np.isfinite(panel.coords).all()
    assert panel._scatter is not None
    lab = _labels_at(widget)
    r, c = panel.pixels[7]
    assert widget.pick_phate(7)                # the point's pixel as a positive prompt
    np.testing.assert_array_equal(widget.mask_layer.data.astype(bool), _part(lab, (r, c)))
    # the slider recolours the points without recomputing them
    coords = panel.coords.copy()
    widget.set_level(max(0, widget.level - 1))
    np.testing.assert_array_equal(panel.coords, coords)
    # a click on the canvas picks the nearest point
    picked = []
    panel.picked.connect(lambda i, m: picked.append(i))
    x, y = panel.coords[3]
    ev = types.SimpleNamespace(inaxes=panel.ax, xdata=x, ydata=y, key=None)
    panel._on_press(ev)
    assert picked and np.allclose(panel.coords[picked[0]], panel.coords[3])


def test_error_paths_leave_the_widget_usable(docked, rgb96, rgb_encoder, tmp_path):
    viewer, widget = docked
    # a constant image
    viewer.add_image(np.full((40, 40), 7.0, np.float32), name="flat")
    assert widget.segment() is False
    assert widget.last_message[0] == "error" and "constant" in widget.last_message[1]
    assert widget.segment_btn.isEnabled() and not widget.busy
    # wrong dims: a 4D layer
    viewer.add_image(np.random.default_rng(0).random((2, 3, 24, 24)), name="4d")
    widget.image_combo.setCurrentText("4d")
    assert widget.segment() is False and "2D" in widget.last_message[1]
    # corrupt weights
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not weights")
    assert widget.load_weights(bad) is False
    assert widget.last_message[0] == "error" and "bad.pt" in widget.last_message[1]
    # wrong-channel weights: an RGB encoder on a grey image
    good = tmp_path / "rgb.pt"
    rgb_encoder.save(good)
    assert widget.load_weights(good)
    viewer.add_image(rgb96[..., 0], name="grey")
    widget.image_combo.setCurrentText("grey")
    assert widget.segment() is False
    assert widget.last_message[0] == "error" and "channel" in widget.last_message[1]
    # a failure inside the worker (not a CutsError) becomes a notification too
    import napari_cuts.pipeline as pipeline

    def boom(*a, **k):
        raise RuntimeError("simulated failure")

    widget.image_combo.setCurrentText("grey")
    widget.encoder = None
    orig = pipeline.get_encoder
    pipeline.get_encoder = boom
    try:
        assert widget.train()
    finally:
        pipeline.get_encoder = orig
    assert widget.last_message[0] == "error" and "simulated failure" in widget.last_message[1]
    assert widget.train_btn.isEnabled() and not widget.cancel_btn.isEnabled()
    assert widget.progress_bar.maximum() == 1 and widget.progress_bar.value() == 0
    # nothing to export yet
    assert widget.export(tmp_path / "m.png") == []


def test_threaded_train_progress_and_cancel(docked, rgb96, qtbot):
    from napari_cuts._widget import Settings

    viewer, widget = docked
    widget.run_sync = False
    viewer.add_image(rgb96, name="fundus")
    widget.settings = Settings(budget=120, unit="seconds")
    messages = []
    widget.runner._bridge.progress.connect(lambda d, t, m: messages.append(m))
    assert widget.train()
    assert widget.busy and widget.cancel_btn.isEnabled() and not widget.segment_btn.isEnabled()
    qtbot.waitUntil(lambda: len(messages) > 0, timeout=60000)   # progress reached the GUI
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    assert widget.encoder is None
    assert widget.last_message[0] == "info" and "ancel" in widget.last_message[1]
    assert widget.segment_btn.isEnabled() and widget.train_btn.isEnabled()
    assert not widget.cancel_btn.isEnabled() and widget.progress_bar.value() == 0


def test_threaded_segment(docked, rgb96, rgb_encoder, qtbot):
    viewer, widget = docked
    widget.run_sync = False
    viewer.add_image(rgb96, name="fundus")
    widget.set_encoder(rgb_encoder)
    assert widget.segment()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120000)
    assert widget.levels_layer is not None and widget.levels_layer.data.max() > 0
    hier = widget.results[0].hierarchy
    assert widget.shown_clusters == int(hier.n_clusters[widget.level])
    fake_click(widget, widget.levels_layer, (10, 80))
    # the prompt is solved off the GUI thread
    qtbot.waitUntil(lambda: widget.mask is not None, timeout=60000)
    lab = _labels_at(widget)
    # one click: the part of the clicked cluster connected to the click
    np.testing.assert_array_equal(widget.mask.astype(bool), _part(lab, (10, 80)))


def test_close_viewer_during_a_run_stops_the_worker(make_napari_viewer, rgb96, qtbot):
    from napari_cuts._widget import CutsWidget, Settings

    viewer = make_napari_viewer()
    widget = CutsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="CUTS")
    viewer.add_image(rgb96, name="fundus")
    widget.settings = Settings(budget=300, unit="seconds")
    assert widget.train()
    state = widget.runner.state
    worker = state.worker
    qtbot.waitUntil(lambda: worker.is_running, timeout=10000)
    viewer.close()
    qtbot.waitUntil(lambda: state.cancel_event.is_set(), timeout=10000)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60000)


def test_nifti_source_keeps_its_affine(docked, tmp_path):
    pytest.importorskip("napari_cuts.io", reason="napari_cuts.io not written yet")
    pytest.importorskip("napari_cuts._reader", reason="napari_cuts._reader not written yet")
    import nibabel as nib

    from napari_cuts._widget import Settings

    viewer, widget = docked
    src = REPO / "sample_data" / "mri_slice.nii.gz"
    layers = viewer.open(src, plugin=PLUGIN)
    widget.image_combo.setCurrentText(layers[0].name)
    widget.settings = Settings(budget=1, unit="epochs")
    assert widget.segment()
    h, w = widget.source.shape
    assert widget.click((h // 2, w // 2))
    out = widget.export(tmp_path / "mask.nii.gz", what="mask")
    img = nib.load(out[0])
    np.testing.assert_allclose(img.affine, nib.load(src).affine, atol=1e-5)
    assert int(np.count_nonzero(np.asarray(img.dataobj))) == widget.mask_stats()["pixels"]


def test_click_through_the_canvas(segmented):
    """A press and release on the vispy canvas reaches the widget through napari's own
    mouse dispatch (the active Labels layer's drag callbacks), with real modifiers."""
    viewer, widget = segmented
    viewer.reset_view()
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    w, h = canvas.size
    pos = (w // 2 + 3, h // 2 - 2)
    canvas.events.mouse_move(pos=pos, modifiers=())
    canvas.events.mouse_press(pos=pos, modifiers=(), button=1)
    canvas.events.mouse_release(pos=pos, modifiers=(), button=1)
    assert widget.mask is not None, "the click did not reach the widget"
    r, c = np.round(widget.levels_layer.world_to_data(viewer.cursor.position)).astype(int)[-2:]
    lab = _labels_at(widget)
    np.testing.assert_array_equal(widget.mask, _part(lab, (r, c)))
    # shift-click elsewhere adds a positive prompt there: both prompts solved together
    from vispy.util import keys

    from napari_cuts.prompts import segment_from_prompts

    pos2 = (w // 2 - 2, h // 2 + h // 4)   # the image is tall and narrow (scale 0.5, 0.25)
    canvas.events.mouse_move(pos=pos2, modifiers=())
    canvas.events.mouse_press(pos=pos2, modifiers=(keys.SHIFT,), button=1)
    canvas.events.mouse_release(pos=pos2, modifiers=(keys.SHIFT,), button=1)
    r2, c2 = np.round(widget.levels_layer.world_to_data(viewer.cursor.position)).astype(int)[-2:]
    np.testing.assert_array_equal(widget.mask, segment_from_prompts(
        widget.objects.folders.get(0), [(r, c), (r2, c2)], level=widget.level))
