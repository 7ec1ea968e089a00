"""GUI tests of the CUTS dock widget on stacks and volumes (napari viewer under Xvfb).

A hierarchy per slice, the current slice first; a 3D Labels layer filled as slices
arrive; the slider applied to every finished slice (level index clipped per slice);
clicks per slice; volume in mL; export of a 3D mask; cancel in the middle of a volume.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from test_widget import PLUGIN, WIDGET, fake_click, fundus, small_volume

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def volume():
    return small_volume(4, 64)


@pytest.fixture(scope="module")
def grey_encoder(volume):
    from napari_cuts.encoder import train_encoder

    return train_encoder(list(volume), epochs=1, seed=0)


@pytest.fixture
def docked(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.run_sync = True
    return viewer, widget


def test_volume_current_slice_first_slider_click_export(docked, volume, grey_encoder, tmp_path):
    import nibabel as nib

    from napari_cuts._widget import LEVELS_NAME, MASK_NAME

    viewer, widget = docked
    img = viewer.add_image(volume, name="vol", scale=(2.0, 0.5, 0.5))
    viewer.dims.set_current_step(0, 2)
    widget.set_encoder(grey_encoder)
    order = []
    widget.runner._bridge.progress.connect(
        lambda d, t, m: order.append(int(m.split()[1])) if m.startswith("slice") else None)
    assert widget.segment()
    assert widget.source.volume and len(widget.results) == 4
    assert order[0] == 2 and sorted(set(order)) == [0, 1, 2, 3]
    assert list(widget.results)[0] == 2            # the slice under dims.current_step first
    levels = viewer.layers[LEVELS_NAME]
    assert levels.data.shape == (4, 64, 64) and levels.ndim == 3
    np.testing.assert_allclose(levels.scale, img.scale)

    def expected(level):
        out = []
        for z in range(4):
            h = widget.results[z].hierarchy
            out.append(np.asarray(h.labels(min(level, h.n_levels - 1))) + 1)
        return np.stack(out)

    np.testing.assert_array_equal(levels.data, expected(widget.level))
    # every slice follows the slider, the level index clipped per slice
    top = widget.slider.maximum()
    for lv in (0, top):
        widget.set_level(lv)
        np.testing.assert_array_equal(levels.data, expected(lv))
    hier2 = widget.results[2].hierarchy
    assert widget.shown_clusters == int(hier2.n_clusters[min(top, hier2.n_levels - 1)])
    assert "slice 2" in widget.level_label.text()
    mid = min(1, top)
    widget.set_level(mid)

    # clicks are per slice; a plain click replaces the whole mask
    lab1 = np.asarray(widget.results[1].hierarchy.labels(
        min(mid, widget.results[1].hierarchy.n_levels - 1)))
    fake_click(widget, levels, (1, 32, 32))
    mask = viewer.layers[MASK_NAME].data.astype(bool)
    assert mask.shape == (4, 64, 64)
    np.testing.assert_array_equal(mask[1], lab1 == lab1[32, 32])
    assert not mask[[0, 2, 3]].any()
    lab3 = np.asarray(widget.results[3].hierarchy.labels(
        min(mid, widget.results[3].hierarchy.n_levels - 1)))
    fake_click(widget, img, (3, 5, 5), modifiers=("Shift",))
    mask = viewer.layers[MASK_NAME].data.astype(bool)
    np.testing.assert_array_equal(mask[3], lab3 == lab3[5, 5])
    np.testing.assert_array_equal(mask[1], lab1 == lab1[32, 32])
    n = int(mask.sum())
    stats = widget.mask_stats()
    assert stats["pixels"] == n and stats["ml"] == pytest.approx(n * 2.0 * 0.5 * 0.5 / 1000)
    assert "mL" in widget.area_label.text()

    out = widget.export(tmp_path / "mask3d.nii.gz", what="mask")
    back = np.asarray(nib.load(out[0]).dataobj) > 0
    assert back.sum() == n
    assert back.shape in ((4, 64, 64), (64, 64, 4))


def test_volume_skips_constant_slices(docked, volume, grey_encoder):
    viewer, widget = docked
    vol = volume.copy()
    vol[0] = 5.0
    viewer.add_image(vol, name="vol")
    widget.set_encoder(grey_encoder)
    assert widget.segment()
    assert sorted(widget.results) == [1, 2, 3]
    assert not widget.levels_layer.data[0].any() and widget.levels_layer.data[1].all()
    assert widget.click((0, 10, 10)) is False        # nothing to select on an empty slice
    assert widget.click((1, 10, 10)) is True


def test_rgb_stack_is_segmented_per_image(docked):
    from napari_cuts._widget import Settings, source_from_layer

    viewer, widget = docked
    a = fundus(48)
    stack = np.stack([a, a[::-1]])                    # (N, H, W, 3)
    layer = viewer.add_image(stack, name="stack", rgb=True)
    src = source_from_layer(layer)
    assert src.volume and len(src.slices) == 2 and src.channels == 3 and src.shape == (48, 48)
    widget.settings = Settings(budget=1, unit="epochs")
    assert widget.segment()                          # trains first: there is no encoder
    assert widget.encoder.in_channels == 3
    assert widget.levels_layer.data.shape == (2, 48, 48)
    assert sorted(widget.results) == [0, 1]


def test_threaded_volume_cancel_keeps_finished_slices(docked, volume, grey_encoder, qtbot,
                                                      monkeypatch):
    import napari_cuts.pipeline as pipeline

    from napari_cuts.images import check_cancel

    viewer, widget = docked
    widget.run_sync = False
    viewer.add_image(volume, name="vol")
    widget.set_encoder(grey_encoder)
    real = pipeline.segment_image
    calls = []

    def slow_after_first(encoder, image, *, cancel=None, **kw):
        calls.append(1)
        if len(calls) > 1:                           # a long slice: waits for Cancel
            while True:
                check_cancel(cancel)
                time.sleep(0.01)
        return real(encoder, image, cancel=cancel, **kw)

    monkeypatch.setattr(pipeline, "segment_image", slow_after_first)
    assert widget.segment()
    qtbot.waitUntil(lambda: len(widget.results) == 1, timeout=60000)
    assert widget.busy and widget.cancel_btn.isEnabled()
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    assert widget.last_message[0] == "info" and "ancel" in widget.last_message[1]
    (z,) = widget.results
    data = widget.levels_layer.data
    h = widget.results[z].hierarchy
    np.testing.assert_array_equal(data[z], np.asarray(h.labels(min(widget.level, h.n_levels - 1))) + 1)
    others = [i for i in range(4) if i != z]
    assert not data[others].any()
    assert widget.segment_btn.isEnabled() and not widget.cancel_btn.isEnabled()
    assert widget.export_labels_btn.isEnabled()
    # the finished slice stays usable: slider and click
    widget.set_level(0)
    assert widget.click((z, 30, 30))
