"""GUI tests of sessions (napari viewer under Xvfb): save a session, close the widget,
open the folder through the plugin's reader, dock the widget: the same labels, objects
and slider range, and neither training nor condensation runs. On the sample fundus
(64 x 64) and on a small volume; a missing or changed source gets a clear message.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from test_widget import PLUGIN, WIDGET, fake_click

pytestmark = pytest.mark.gui


def _no_compute(monkeypatch):
    """Make every training and condensation entry point raise."""
    import napari_cuts.condensation as condensation
    import napari_cuts.encoder as encoder
    import napari_cuts.pipeline as pipeline

    def boom(*a, **k):
        raise AssertionError("training or condensation ran while opening a session")

    for mod, names in ((pipeline, ("get_encoder", "train_volume_encoder", "segment_image",
                                   "segment_volume")),
                       (encoder, ("train_encoder",)), (condensation, ("condense",))):
        for n in names:
            if hasattr(mod, n):
                monkeypatch.setattr(mod, n, boom)


def _open(viewer, path):
    return viewer.open(str(path), plugin=PLUGIN)


def _make_session(make_napari_viewer, image_path, train, tmp_path, points, volume=False):
    """Open ``image_path``, segment, make objects at ``points`` (New object between them),
    grow the last one, save a session; returns (folder, labels, records, slider max)."""
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.run_sync = True
    _open(viewer, image_path)
    widget.set_encoder(train(viewer.layers[0].data))
    assert widget.segment()
    hier = widget.results[0].hierarchy
    widget.set_level(max(1, hier.n_levels // 2))
    for k, p in enumerate(points):
        if k:
            widget.new_object()
        fake_click(widget, widget.levels_layer, p)
    widget.grow()
    widget.rename_object(1, "first")
    folder = widget.save_session(tmp_path / "session")
    assert folder is not None and (folder / "hierarchy.npz").is_file()
    assert (folder / "encoder.pt").is_file() and (folder / "objects.json").is_file()
    labels = np.asarray(widget.labels_layer.data).copy()
    recs = [(o.id, o.name, o.clicks) for o in widget.objects.model.objects]
    masks = {o.id: o.mask.copy() for o in widget.objects.model.objects}
    top = widget.slider.maximum()
    level = widget.level
    viewer.close()
    return folder, labels, recs, masks, top, level


def _reopen_and_check(make_napari_viewer, monkeypatch, folder, labels, recs, masks, top, level,
                      point):
    from napari_cuts._widget import LABELS_NAME, LEVELS_NAME

    _no_compute(monkeypatch)
    viewer = make_napari_viewer()
    t0 = time.perf_counter()
    layers = _open(viewer, folder)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.run_sync = True
    ready = time.perf_counter() - t0
    names = [lay.name for lay in layers]
    assert LEVELS_NAME in names and LABELS_NAME in names and len(layers) == 3
    levels = viewer.layers[LEVELS_NAME]
    assert "napari_cuts_levels" in levels.metadata
    assert levels.data.ndim == labels.ndim           # one level, never (L, ...)
    assert widget.results and widget.levels_layer is levels
    assert widget.slider.maximum() == top and widget.level == level
    np.testing.assert_array_equal(np.asarray(widget.labels_layer.data), labels)
    model = widget.objects.model
    assert [(o.id, o.name, o.clicks) for o in model.objects] == recs
    for o in model.objects:
        np.testing.assert_array_equal(o.mask, masks[o.id])
    assert widget.object_list.table.rowCount() == len(recs)
    # slider, grow / shrink and clicks work at once
    widget.set_level(0)
    widget.set_level(level)
    before = model.current.mask.copy()
    assert widget.shrink() or widget.grow()
    assert not np.array_equal(model.current.mask, before)
    assert widget.undo()
    np.testing.assert_array_equal(model.current.mask, before)
    new = widget.new_object()
    assert new == max(r[0] for r in recs) + 1
    fake_click(widget, widget.levels_layer, point)
    assert model.current.mask[tuple(point)]
    return viewer, widget, ready


def test_session_round_trip_2d(make_napari_viewer, monkeypatch, small_fundus, tmp_path):
    import imageio.v3 as iio

    from napari_cuts.encoder import train_encoder

    img = tmp_path / "fundus.png"
    iio.imwrite(img, small_fundus)
    folder, labels, recs, masks, top, level = _make_session(
        make_napari_viewer, img, lambda d: train_encoder([np.asarray(d)], epochs=1, seed=0),
        tmp_path, [(20, 20), (32, 40), (44, 24)])
    assert [r[0] for r in recs] == [1, 2, 3]
    viewer, widget, ready = _reopen_and_check(make_napari_viewer, monkeypatch, folder, labels,
                                              recs, masks, top, level, (10, 50))
    print(f"\nsession open -> slide and click (64 x 64 fundus): {ready:.2f} s")
    # the multi-label export reopens with the same ids
    out = widget.export(tmp_path / "objs.png", what="objects")
    np.testing.assert_array_equal(iio.imread(out[0]), widget.objects.model.labels())


def test_session_source_missing_or_changed(make_napari_viewer, small_fundus, tmp_path):
    import imageio.v3 as iio

    from napari_cuts._reader import napari_get_reader
    from napari_cuts.encoder import train_encoder
    from napari_cuts.errors import ReadError

    img = tmp_path / "fundus.png"
    iio.imwrite(img, small_fundus)
    folder, *_ = _make_session(
        make_napari_viewer, img, lambda d: train_encoder([np.asarray(d)], epochs=1, seed=0),
        tmp_path, [(20, 20)])
    reader = napari_get_reader(str(folder))
    assert reader is not None
    changed = small_fundus.copy()
    changed[0, 0] = 255 - changed[0, 0]
    iio.imwrite(img, changed)
    with pytest.raises(ReadError) as e:
        reader(str(folder))
    assert str(img) in str(e.value) and "changed" in str(e.value)
    assert "Open the original image first" in str(e.value)
    img.unlink()
    with pytest.raises(ReadError) as e:
        reader(str(folder))
    assert str(img) in str(e.value) and "missing" in str(e.value)
    assert "open the image first" in str(e.value)
    # a session folder is never read as a stack of its pictures
    from napari_cuts import io

    with pytest.raises(ReadError, match="session"):
        io.read_image(folder)


def test_session_round_trip_volume(make_napari_viewer, monkeypatch, tmp_path):
    import nibabel as nib

    from test_widget_volume import blob_volume
    from napari_cuts.pipeline import train_volume_encoder

    vol, blob = blob_volume()
    vol = vol[4:20, 4:44, 4:44]                       # 16 x 40 x 40
    aff = np.diag([1.0, 1.0, 1.5, 1.0])               # x, y, z (z thick)
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), aff), path)
    from napari_cuts import io

    shape = io.read_image(path).data.shape
    c = tuple(s // 2 for s in shape)
    folder, labels, recs, masks, top, level = _make_session(
        make_napari_viewer, path,
        lambda d: train_volume_encoder(np.asarray(d), epochs=1, seed=0),
        tmp_path, [c, (c[0], c[1], 2)], volume=True)
    viewer, widget, ready = _reopen_and_check(make_napari_viewer, monkeypatch, folder, labels,
                                              recs, masks, top, level, (c[0], 3, 3))
    print(f"\nsession open -> slide and click (small volume): {ready:.2f} s")
    assert widget.source.one_volume
    out = widget.export(tmp_path / "objs.nii.gz", what="objects")
    back = nib.load(out[0])
    src = nib.load(path)
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-5)
    got = io.read_image(out[0]).data
    np.testing.assert_array_equal(np.asarray(got), widget.objects.model.labels())
