"""GUI tests of the CUTS dock widget on volumes and stacks (napari viewer under Xvfb).

A grey (Z, Y, X) layer is ONE object: one hierarchy for the volume, the slider
rewrites every slice at once, a click in one slice selects the 3D structure (in the
slices above and below too), a click on the rendered volume in the 3D view does the
same; the background outside the body is transparent; mL from the layer scale;
NIfTI export keeps the affine; cancel mid-segment; bad volumes give notifications.
A stack of colour images (N, H, W, 3) is still segmented image by image.

The display model (:mod:`napari_cuts._widget.model`) is tested without Qt at the end.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_widget import docked, fake_click, fundus  # noqa: F401 (docked: the fixture)

SHAPE = (24, 48, 48)
SCALE = (1.5, 1.0, 1.0)
CENTRE = (12, 24, 24)


def blob_volume(seed: int = 0):
    """(24, 48, 48) float32: dark air, a grey ellipsoidal body, and inside it a bright
    ellipsoidal blob spanning slices 7..17. Returns (volume, blob mask)."""
    z, y, x = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]].astype(np.float32)
    cz, cy, cx = CENTRE
    body = ((z - cz) / 11.5) ** 2 + ((y - cy) / 21) ** 2 + ((x - cx) / 21) ** 2 < 1
    blob = ((z - cz) / 5.5) ** 2 + ((y - cy) / 8) ** 2 + ((x - cx) / 8) ** 2 < 1
    rng = np.random.default_rng(seed)
    vol = 5 + 45 * body + 90 * blob + rng.normal(0, 2, SHAPE)
    return vol.astype(np.float32), blob


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def blob():
    return blob_volume()


@pytest.fixture(scope="module")
def volume_encoder(blob):
    from napari_cuts.pipeline import train_volume_encoder

    return train_volume_encoder(blob[0], spacing=SCALE, epochs=1, seed=0)


@pytest.fixture
def segmented(docked, blob, volume_encoder):
    viewer, widget = docked
    viewer.add_image(blob[0], name="vol", scale=SCALE)
    viewer.dims.set_current_step(0, CENTRE[0])
    widget.set_encoder(volume_encoder)
    assert widget.segment()
    assert widget.last_message is None or widget.last_message[0] == "info"
    return viewer, widget


def _blob_level(widget, blob_mask):
    """The level whose cluster under the blob centre best matches the blob."""
    hier = widget.results[0].hierarchy
    best = max(range(hier.n_levels), key=lambda lv: dice(
        (lab := hier.labels(lv)) == lab[CENTRE], blob_mask))
    return best


@pytest.mark.gui
def test_volume_one_hierarchy_slider_click_3d_structure(segmented, blob, tmp_path):
    import nibabel as nib

    from napari_cuts._widget import LEVELS_NAME, MASK_NAME

    viewer, widget = segmented
    vol, blob_mask = blob
    assert widget.source.one_volume and list(widget.results) == [0]
    hier = widget.results[0].hierarchy
    assert hier.shape == SHAPE
    levels = viewer.layers[LEVELS_NAME]
    assert levels.data.shape == SHAPE
    np.testing.assert_allclose(levels.scale, SCALE)
    assert "one hierarchy" in widget.level_label.text()

    # the slider rewrites every slice: values are cluster + 1, 0 for the background
    def check_level(lv):
        lab = np.asarray(hier.labels(lv))
        shown = np.asarray(levels.data)
        body = shown != 0
        np.testing.assert_array_equal(shown[body], lab[body] + 1)
        if hier.n_clusters[lv] > 1:
            # the air around the body (the outer faces) is transparent
            assert not shown[0].any() or (shown[0] == 0).mean() > 0.5
            assert not shown[:, 0, 0].any()
        return shown.copy()

    top = widget.slider.maximum()
    widget.set_level(0)
    fine = check_level(0)
    widget.set_level(top - 1)
    coarse = check_level(top - 1)
    changed = fine != coarse
    assert changed[3].any() and changed[SHAPE[0] // 2].any() and changed[-4].any()

    # one click in one slice selects the 3D blob, in the slices above and below too
    lv = _blob_level(widget, blob_mask)
    widget.set_level(lv)
    fake_click(widget, levels, CENTRE)
    mask = viewer.layers[MASK_NAME].data.astype(bool)
    assert mask.shape == SHAPE
    # the blob is 90 above the body around it (noise SD 2): at its best level it is one
    # cluster, all of it but a few boundary voxels
    assert dice(mask, blob_mask) >= 0.9, dice(mask, blob_mask)
    assert mask[CENTRE[0] - 4].any() and mask[CENTRE[0] + 4].any()
    lab = np.asarray(hier.labels(lv))
    np.testing.assert_array_equal(mask, lab == lab[CENTRE])

    # shift-click adds a positive prompt (in the body around the blob), alt-click on it
    # makes it negative: each time the object is solved from all its prompts
    from napari_cuts.prompts import segment_from_prompts

    folder = widget.objects.folders.get(0)
    body_pt = (CENTRE[0], CENTRE[1], CENTRE[2] + 14)
    assert lab[body_pt] != lab[CENTRE]
    fake_click(widget, viewer.layers["vol"], body_pt, modifiers=("Shift",))
    both = viewer.layers[MASK_NAME].data.astype(bool)
    np.testing.assert_array_equal(both, segment_from_prompts(folder, [CENTRE, body_pt], level=lv))
    assert both[CENTRE] and both[body_pt]
    fake_click(widget, levels, body_pt, modifiers=("Alt",))
    mask = viewer.layers[MASK_NAME].data.astype(bool)
    np.testing.assert_array_equal(mask, segment_from_prompts(folder, [CENTRE], [body_pt], level=lv))
    assert mask[CENTRE] and not mask[body_pt]

    # volume in mL from the layer scale
    n = int(mask.sum())
    stats = widget.mask_stats()
    assert stats["pixels"] == n and stats["ml"] == pytest.approx(n * 1.5 / 1000)
    assert "mL" in widget.area_label.text()

    # export keeps the geometry
    out = widget.export(tmp_path / "mask3d.nii.gz", what="mask")
    img = nib.load(out[0])
    assert int((np.asarray(img.dataobj) > 0).sum()) == n
    assert sorted(np.round(np.linalg.norm(img.affine[:3, :3], axis=0), 4)) == sorted(SCALE)
    labels_out = widget.export(tmp_path / "labels3d.nii.gz", what="labels")
    assert np.asarray(nib.load(labels_out[0]).dataobj).min() >= 1   # every cluster, none cut

    # persistent structures: one map over the volume
    widget.persistent_check.setChecked(True)
    assert levels.data.shape == SHAPE and levels.data.any()
    assert "Persistent" in widget.level_label.text()


def _event3d(position, view_direction, modifiers=()):
    """A 3D-view mouse event (press; the callback reads it again as the release)."""
    from test_widget import FakeEvent

    ev = FakeEvent(position, modifiers)
    ev.view_direction = tuple(view_direction)
    ev.dims_displayed = (0, 1, 2)
    return ev


@pytest.mark.gui
def test_volume_click_in_the_3d_view(segmented, blob):
    viewer, widget = segmented
    vol, blob_mask = blob
    lv = _blob_level(widget, blob_mask)
    widget.set_level(lv)
    levels = widget.levels_layer
    viewer.dims.ndisplay = 3
    # the 3D view: a cut-away at the current slice, on the camera's side
    cut = widget.view3d.cut()
    assert cut is not None and cut[0] == CENTRE[0]
    shown = np.asarray(levels.data)
    gone = slice(cut[0] + 1, None) if cut[1] > 0 else slice(0, cut[0])
    assert not shown[gone].any() and shown[cut[0]].any()
    # a click on the rendered volume: a ray from the camera through the blob's centre
    vd = np.asarray(widget.view3d.camera.view_direction, float)
    centre_world = np.asarray(levels.data_to_world(np.asarray(CENTRE, float)))
    ev_pos = centre_world - 60 * vd
    gen = widget._on_mouse(levels, _event3d(ev_pos, vd))
    next(gen)
    with pytest.raises(StopIteration):
        next(gen)
    assert widget.mask is not None
    assert dice(widget.mask, blob_mask) >= 0.9, dice(widget.mask, blob_mask)   # as a 2D click
    # the mask is its own layer, rendered as a surface; the cut follows its middle slice
    assert widget.mask_layer.rendering == "iso_categorical"
    assert widget.view3d.cut()[0] == widget.objects.model.centre_slice()
    assert not viewer.layers["vol"].visible           # no MIP fog over the 3D view
    # a ray through the mask picks the mask (it is drawn over the levels): alt-click
    # there is a negative prompt on the mask's first voxel along the ray
    from napari_cuts.prompts import segment_from_prompts

    first = widget.objects.prompts.positive
    hit = widget.objects.pick_3d(ev_pos, vd)
    assert hit is not None and widget.mask[hit]
    gen = widget._on_mouse(levels, _event3d(ev_pos, vd, ("Alt",)))
    next(gen)
    with pytest.raises(StopIteration):
        next(gen)
    p = widget.objects.prompts
    assert p.negative == (hit,) and p.positive == tuple(q for q in first if q != hit)
    assert not widget.mask[hit]
    np.testing.assert_array_equal(widget.mask, segment_from_prompts(
        widget.objects.folders.get(0), p.positive, p.negative, level=lv))
    # back to 2D: no cut, the image shown again
    viewer.dims.ndisplay = 2
    assert widget.view3d.cut() is None
    assert np.asarray(levels.data)[gone].any()
    assert viewer.layers["vol"].visible


@pytest.mark.gui
def test_volume_train_then_segment_and_threaded_cancel(docked, blob, qtbot):
    from napari_cuts._widget import Settings
    from napari_cuts.encoder import is_volume_encoder

    viewer, widget = docked
    viewer.add_image(blob[0], name="vol", scale=SCALE)
    widget.settings = Settings(budget=1, unit="epochs")
    assert widget.train()
    assert widget.encoder is not None and is_volume_encoder(widget.encoder)
    assert "volume encoder" in widget.encoder_label.text()
    # a threaded segment, cancelled once it reports progress
    widget.run_sync = False
    messages = []
    widget.runner._bridge.progress.connect(lambda d, t, m: messages.append(m))
    assert widget.segment()
    qtbot.waitUntil(lambda: len(messages) > 0, timeout=60000)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    assert widget.last_message[0] == "info" and "ancel" in widget.last_message[1]
    assert widget.segment_btn.isEnabled() and widget.train_btn.isEnabled()
    assert not widget.cancel_btn.isEnabled()
    assert widget.click((12, 24, 24)) is False        # nothing half-made to click on
    # the widget is usable: segment again, to the end
    messages.clear()
    assert widget.segment()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120000)
    assert widget.results and widget.levels_layer.data.shape == SHAPE
    assert widget.click((12, 24, 24))


@pytest.mark.gui
@pytest.mark.parametrize("kind", ["constant", "one_slice", "nan"])
def test_bad_volumes_give_a_notification(docked, volume_encoder, kind):
    viewer, widget = docked
    vol = {"constant": np.full(SHAPE, 7.0, np.float32),
           "one_slice": blob_volume()[0][:1],
           "nan": np.where(blob_volume()[1], np.nan, blob_volume()[0])}[kind]
    viewer.add_image(vol, name=kind)
    for act in (widget.train, widget.segment):
        assert act() is False
        level, msg = widget.last_message
        assert level == "error"
        assert {"constant": "constant", "one_slice": "slice", "nan": "NaN"}[kind] in msg
        assert widget.segment_btn.isEnabled() and not widget.busy
    widget.set_encoder(volume_encoder)
    assert widget.segment() is False


@pytest.mark.gui
def test_2d_weights_on_a_volume_and_volume_weights_on_2d(docked, blob, volume_encoder):
    from napari_cuts.encoder import train_encoder

    viewer, widget = docked
    viewer.add_image(blob[0], name="vol", scale=SCALE)
    widget.set_encoder(train_encoder(list(blob[0][::6]), epochs=1, seed=0))  # 2D, grey
    assert widget.segment()                          # applied slice by slice, one hierarchy
    assert widget.results[0].hierarchy.shape == SHAPE
    viewer.add_image(fundus(48), name="rgb")
    widget.image_combo.setCurrentText("rgb")
    widget.set_encoder(volume_encoder)
    assert widget.segment() is False and "volumes" in widget.last_message[1]


@pytest.mark.gui
def test_rgb_stack_is_segmented_per_image(docked):
    from napari_cuts._widget import Settings, source_from_layer

    viewer, widget = docked
    a = fundus(48)
    stack = np.stack([a, a[::-1]])                    # (N, H, W, 3)
    layer = viewer.add_image(stack, name="stack", rgb=True)
    src = source_from_layer(layer)
    assert src.volume and src.kind == "stack" and len(src.slices) == 2
    assert src.channels == 3 and src.shape == (48, 48)
    widget.settings = Settings(budget=1, unit="epochs")
    assert widget.segment()                          # trains first: there is no encoder
    assert widget.encoder.in_channels == 3
    assert widget.levels_layer.data.shape == (2, 48, 48)
    assert sorted(widget.results) == [0, 1]
    h1 = widget.results[1].hierarchy
    lab1 = np.asarray(h1.labels(min(widget.level, h1.n_levels - 1)))
    assert widget.click((1, 20, 20))
    mask = widget.mask
    from scipy import ndimage

    comp, _ = ndimage.label(lab1 == lab1[20, 20])     # the connected part (the default)
    np.testing.assert_array_equal(mask[1], comp == comp[20, 20])
    assert not mask[0].any()


# ------------------------------------------------------- the model, no Qt

def test_model_background_is_the_outer_cluster_and_nested_levels_follow():
    from napari_cuts._widget.model import LevelsDisplay

    base = np.zeros((6, 10, 10), np.int64)           # 0: air (4 fine clusters), 4: body, 5: core
    base[:, :5, :5], base[:, :5, 5:], base[:, 5:, :5], base[:, 5:, 5:] = 0, 1, 2, 3
    base[1:5, 2:8, 2:8] = 4
    base[2:4, 4:6, 4:6] = 5
    luts = [np.arange(6),                            # finest: air split 4 ways
            np.array([0, 0, 0, 0, 1, 2]),            # air one cluster
            np.array([0, 0, 0, 0, 0, 0])]            # one cluster
    d = LevelsDisplay(base, luts)
    assert d.background(1).tolist() == [True, False, False]
    assert d.background(0).tolist() == [True, True, True, True, False, False]
    assert not d.background(2).any()                 # the coarsest level hides nothing
    v = d.values(0)
    assert v[0].max() == 0 and set(np.unique(v[2:4, 4:6, 4:6])) == {6}
    assert set(np.unique(v)) == {0, 5, 6}
    assert d.values(0, hide_background=False).min() == 1
    cut = d.values(1, cut=(2, 1))
    assert not cut[3:].any() and cut[2].any()
    cut = d.values(1, cut=(2, -1))
    assert not cut[:2].any() and cut[2].any()


def test_model_first_hit_and_mask():
    from napari_cuts._widget.model import MaskModel, cut_side, first_hit

    occ = np.zeros((10, 10, 10), bool)
    occ[4:, 3, 3] = True
    hit = first_hit(lambda idx: occ[tuple(idx.T)], (-5.0, 3.0, 3.0), (20.0, 3.0, 3.0), occ.shape)
    assert hit == (4, 3, 3)
    assert first_hit(lambda idx: occ[tuple(idx.T)], (0, 0, 0), (9, 0, 0), occ.shape) is None
    assert first_hit(lambda idx: occ[tuple(idx.T)], None, None, occ.shape) is None
    assert cut_side((1.0, 0, 0)) == -1 and cut_side((-1.0, 0, 0)) == 1
    lab = np.zeros((4, 5, 5), np.uint16)
    lab[1:3, 1:4, 1:4] = 1
    lab[:, 4, :] = 2
    m = MaskModel(lab.shape)
    m.click(lambda z: lab, (1, 2, 2), "replace")
    np.testing.assert_array_equal(m.mask, lab == 1)
    m.click(lambda z: lab, (0, 4, 0), "add")
    np.testing.assert_array_equal(m.mask, (lab == 1) | (lab == 2))
    m.click(lambda z: lab, (2, 2, 2), "remove")
    np.testing.assert_array_equal(m.mask, lab == 2)
    assert m.centre_slice() == 1
    assert m.stats((2.0, 1.0, 1.0), True)["ml"] == pytest.approx((lab == 2).sum() * 2 / 1000)
    lab2 = (lab > 0).astype(np.uint16)
    m.replay(lambda z: lab2)
    assert not m.mask.any()                          # replace 1, add 1, remove 1


def test_model_from_map_relabels_sparse_ids():
    from napari_cuts._widget.model import LevelsDisplay

    lab = np.zeros((3, 20, 20), np.uint16)
    lab[:, 5:15, 5:15] = 40
    lab[1, 8:12, 8:12] = 7
    d = LevelsDisplay.from_map(lab)
    v = d.values(0)
    assert v[:, 0, 0].max() == 0                     # the outer cluster is background
    assert len(np.unique(v)) == 3 and (v[1, 8:12, 8:12] == v[1, 10, 10]).all()
