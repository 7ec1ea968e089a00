"""GUI tests of objects as prompts in the dock widget (napari viewer under Xvfb).

Tiny synthetic images with hand-made hierarchies (no training: ``pipeline.segment_image``
and ``segment_volume`` are replaced by stand-ins that return them): every mask the
widget shows is compared with what :func:`napari_cuts.prompts.segment_from_prompts`
gives for the same prompts on the folder the widget solves in.
"""

from __future__ import annotations

import json
import time
import types

import numpy as np
import pytest

from test_widget import PLUGIN, WIDGET, fake_click

pytestmark = pytest.mark.gui

SIDE = 32
CENTRE = (16, 16)
RIM = (16, 26)             # in the rim band, right of the disc
RIM2 = (26, 16)            # in the rim band, below the disc
VSHAPE = (12, 20, 20)          # slices of at least 17 x 17: the encoder's window


def disc_image():
    """(32, 32) uint8: a bright disc (radius 6) in a dimmer rim band (to radius 11) on a
    dark ramp; and its base regions (0 background, 1 disc, 2 rim)."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    r = np.hypot(yy - CENTRE[0], xx - CENTRE[1])
    base = np.where(r <= 6, 1, np.where(r <= 11, 2, 0))
    img = np.select([r <= 6, r <= 11], [230.0, 150.0], 20.0) + 0.5 * xx
    img = img + np.random.default_rng(0).normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), base


def ball_volume():
    """(12, 20, 20) float32: a bright ball in a dimmer shell; base regions as above."""
    zz, yy, xx = np.mgrid[:VSHAPE[0], :VSHAPE[1], :VSHAPE[2]]
    r = np.sqrt((zz - 6) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2)
    base = np.where(r <= 3, 1, np.where(r <= 5.5, 2, 0))
    vol = np.select([r <= 3, r <= 5.5], [200.0, 120.0], 10.0)
    vol = vol + np.random.default_rng(1).normal(0, 2, vol.shape)
    return vol.astype(np.float32), base


def _hierarchy(base):
    """Levels {bg, disc, rim}; {bg, disc + rim}; {all}."""
    from napari_cuts.hierarchy import Hierarchy

    return Hierarchy(np.asarray(base), [np.array([0, 1, 2]), np.array([0, 1, 1]),
                                        np.array([0, 0, 0])])


def _fake_encoder():
    def save(path):
        from pathlib import Path

        Path(path).write_bytes(b"not an encoder")

    return types.SimpleNamespace(in_channels=1, metadata={}, save=save)


@pytest.fixture
def stand_in(monkeypatch):
    """``segment_image`` / ``segment_volume`` return the hand-made hierarchies."""
    from napari_cuts import pipeline

    def seg_image(encoder, image, **kw):
        _, base = disc_image()
        return pipeline.SegmentResult(_hierarchy(base), None, 1, [], {})

    def seg_volume(encoder, array, **kw):
        _, base = ball_volume()
        return pipeline.SegmentResult(_hierarchy(base), None, 1, [], {})

    monkeypatch.setattr(pipeline, "segment_image", seg_image)
    monkeypatch.setattr(pipeline, "segment_volume", seg_volume)


def _segmented(viewer, widget, data, **kw):
    viewer.add_image(data, name="img", **kw)
    widget.set_encoder(_fake_encoder())
    assert widget.segment()
    assert widget.results
    return widget.objects.folders.get(0)


@pytest.fixture
def disc2d(make_napari_viewer, stand_in):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.run_sync = True
    img, _ = disc_image()
    folder = _segmented(viewer, widget, img, scale=(0.5, 0.5))
    widget.set_level(1)                    # disc and rim together: prompts must split them
    return viewer, widget, folder


def _solve(folder, widget, scribbles=None):
    from napari_cuts.prompts import segment_from_prompts

    p = widget.objects.prompts
    return segment_from_prompts(folder, p.positive, p.negative, scribbles=scribbles,
                                level=widget.level)


def _shown(viewer):
    from napari_cuts._widget import MASK_NAME

    return np.asarray(viewer.layers[MASK_NAME].data).astype(bool)


def test_positive_negative_positive_clicks_give_the_solvers_masks(disc2d):
    from napari_cuts._widget import LEVELS_NAME
    from napari_cuts._widget.objects import NEGATIVE_COLOUR, POSITIVE_COLOUR
    from napari_cuts._widget.promptlayers import POINTS_NAME, PROMPTS_NAME

    viewer, widget, folder = disc2d
    assert (folder / "hierarchy.npz").is_file() and (folder / "prompts.npz").is_file()
    levels = viewer.layers[LEVELS_NAME]
    plain_opacity = levels.opacity
    fake_click(widget, levels, CENTRE)                            # positive
    one = _shown(viewer)
    np.testing.assert_array_equal(one, _solve(folder, widget))
    np.testing.assert_array_equal(one, widget.results[0].hierarchy.structure(CENTRE, 1, True))
    fake_click(widget, viewer.layers["img"], RIM, modifiers=("Alt",))   # negative, on the image
    two = _shown(viewer)
    np.testing.assert_array_equal(two, _solve(folder, widget))
    assert two[CENTRE] and not two[RIM] and two.sum() < one.sum()
    fake_click(widget, levels, RIM2, modifiers=("Shift",))        # positive again
    three = _shown(viewer)
    np.testing.assert_array_equal(three, _solve(folder, widget))
    assert three[CENTRE] and three[RIM2] and not three[RIM]
    obj = widget.objects.current
    assert obj.prompts.positive == (CENTRE, RIM2) and obj.prompts.negative == (RIM,)
    assert obj.level == 1 and obj.solved

    # the points layer: positive green, negative red, in the image's geometry
    pts = viewer.layers[POINTS_NAME]
    np.testing.assert_array_equal(np.asarray(pts.data), [CENTRE, RIM2, RIM])
    np.testing.assert_allclose(pts.face_color, [POSITIVE_COLOUR, POSITIVE_COLOUR,
                                                NEGATIVE_COLOUR])
    np.testing.assert_allclose(pts.scale, viewer.layers["img"].scale)
    assert PROMPTS_NAME in [lay.name for lay in viewer.layers]
    assert viewer.layers.selection.active.name == LEVELS_NAME     # clicks keep going there

    # the object list: the prompt count; its swatch is the mask's colour
    row = widget.object_list.row_text(0)
    assert row[2].startswith("3:") and "2+" in row[2] and "1-" in row[2]
    colour = widget.objects.current.colour
    np.testing.assert_allclose(widget.object_list.swatch(0), colour, atol=0.01)
    mask_layer = widget.mask_layer
    np.testing.assert_allclose(mask_layer.colormap.map(np.array([1]))[0], colour, atol=0.01)
    np.testing.assert_allclose(widget.labels_layer.colormap.map(np.array([1]))[0], colour,
                               atol=0.01)
    # the levels are dimmed and outlined while the object is edited
    assert levels.opacity < plain_opacity and levels.contour == 1
    assert widget.clear_prompts()
    assert widget.mask is None and not _shown(viewer).any()
    assert levels.opacity == pytest.approx(plain_opacity) and levels.contour == 0
    assert len(viewer.layers[POINTS_NAME].data) == 0


def test_deleting_a_point_in_the_points_layer_solves_again(disc2d):
    from napari_cuts._widget.promptlayers import POINTS_NAME

    viewer, widget, folder = disc2d
    widget.click(CENTRE)
    widget.click(RIM, "negative")
    with_neg = widget.mask.copy()
    pts = viewer.layers[POINTS_NAME]
    k = [tuple(int(v) for v in p) for p in pts.data].index(RIM)
    pts.selected_data = {k}
    pts.remove_selected()
    assert widget.objects.prompts.negative == ()
    np.testing.assert_array_equal(widget.mask, _solve(folder, widget))
    assert not np.array_equal(widget.mask, with_neg)
    # a point added with the layer's own tool is a positive prompt
    pts.add(np.array([RIM2], float))
    assert widget.objects.prompts.positive == (CENTRE, RIM2)
    np.testing.assert_array_equal(widget.mask, _solve(folder, widget))
    assert widget.undo() and widget.objects.prompts.positive == (CENTRE,)


def _stroke(qtbot, widget, layer, point, value):
    """One brush stroke in the "CUTS prompts" layer (napari's own paint), then the
    event loop until the widget has taken it."""
    before = widget.objects.prompts
    layer.paint(point, value)
    qtbot.waitUntil(lambda: widget.objects.prompts is not before, timeout=5000)


def test_a_scribble_stroke_solves_again_and_undo_redo_walk_the_prompts(disc2d, qtbot):
    from napari_cuts._widget.promptlayers import POINTS_NAME, PROMPTS_NAME

    viewer, widget, folder = disc2d
    widget.click(CENTRE)
    states = [(widget.objects.prompts, widget.mask.copy())]
    widget.click(RIM, "negative")
    states.append((widget.objects.prompts, widget.mask.copy()))
    scr = viewer.layers[PROMPTS_NAME]
    scr.brush_size = 3
    _stroke(qtbot, widget, scr, (16, 5), 2)    # a background stroke left of the rim
    painted = np.asarray(scr.data).copy()
    assert set(np.unique(painted)) == {0, 2}
    obj = widget.objects.current
    assert obj.prompts.has_scribbles and obj.prompts.strokes == 1
    np.testing.assert_array_equal(widget.mask, _solve(folder, widget, painted))
    assert not widget.mask[16, 5]
    assert "1 stroke" in widget.object_list.row_text(0)[2]
    states.append((widget.objects.prompts, widget.mask.copy()))

    # undo walks back through the stroke and the points, redo forward again
    for prompts, mask in reversed(states[:-1]):
        assert widget.undo()
        assert widget.objects.prompts.same(prompts)
        np.testing.assert_array_equal(widget.mask, mask)
        assert len(viewer.layers[POINTS_NAME].data) == prompts.count
    assert not np.asarray(scr.data).any()                  # the stroke is gone from the layer
    for prompts, mask in states[1:]:
        assert widget.redo()
        assert widget.objects.prompts.same(prompts)
        np.testing.assert_array_equal(widget.mask, mask)
    np.testing.assert_array_equal(np.asarray(scr.data), painted)

    # a second object keeps its own prompts; the first keeps its own
    assert widget.new_object() == 2
    assert len(viewer.layers[POINTS_NAME].data) == 0 and not np.asarray(scr.data).any()
    widget.click(RIM2)
    assert widget.objects.model.get(1).prompts.same(states[-1][0])
    widget.select_object(1)
    np.testing.assert_array_equal(np.asarray(scr.data), painted)
    assert len(viewer.layers[POINTS_NAME].data) == 2
    assert widget.object_list.row_text(1)[2].startswith("1:")


def test_a_solver_error_keeps_the_mask_and_shows_the_message(disc2d, qtbot):
    from napari_cuts._widget.promptlayers import PROMPTS_NAME

    viewer, widget, folder = disc2d
    widget.click(CENTRE)
    scr = viewer.layers[PROMPTS_NAME]
    scr.brush_size = 1
    _stroke(qtbot, widget, scr, RIM, 1)        # an object scribble on the rim
    before = widget.mask.copy()
    widget.click(RIM, "negative")          # a negative prompt on it: the solver refuses
    np.testing.assert_array_equal(widget.mask, before)
    np.testing.assert_array_equal(_shown(viewer), before)
    text = widget.object_list.message.text()
    assert "negative prompt" in text and "scribble" in text
    assert widget.last_message[0] == "warning" and "negative prompt" in widget.last_message[1]
    assert widget.objects.current.error is not None
    # the next good change clears it
    assert widget.undo()
    assert widget.object_list.message.text() == ""
    np.testing.assert_array_equal(widget.mask, before)


def test_a_newer_prompt_supersedes_a_running_solve(disc2d, qtbot):
    viewer, widget, folder = disc2d
    widget.run_sync = False
    res = widget.objects.resolver
    real = res.solve
    ran = []

    def slow(req):
        ran.append(req.prompts)
        time.sleep(0.3 if len(ran) == 1 else 0.0)
        return real(req)

    res.solve = slow
    widget.click(CENTRE)                       # one click: the tool's click, at once
    assert widget.objects.current.solved and not ran
    np.testing.assert_array_equal(widget.mask, _solve(folder, widget))
    widget.click(RIM, "negative")              # solved in a worker (slowly)
    widget.click(RIM2)                         # waits ...
    widget.click((14, 16))                     # ... and is superseded by this one
    assert res.busy and "Solving" in widget.object_list.message.text()
    qtbot.waitUntil(lambda: not res.busy and widget.objects.current.solved, timeout=20000)
    assert len(ran) == 2 and res.dropped == 1  # the waiting request never ran; the first dropped
    assert ran[-1] is widget.objects.prompts
    np.testing.assert_array_equal(widget.mask, _solve(folder, widget))
    assert widget.object_list.message.text() == ""


def test_session_round_trip_keeps_prompts_and_masks(make_napari_viewer, stand_in, tmp_path,
                                                    qtbot):
    import imageio.v3 as iio

    from napari_cuts.prompts import segment_from_prompts

    img, _ = disc_image()
    path = tmp_path / "disc.png"
    iio.imwrite(path, img)
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.run_sync = True
    viewer.open(str(path), plugin=PLUGIN)
    widget.set_encoder(_fake_encoder())
    assert widget.segment()
    widget.set_level(1)
    widget.click(CENTRE)
    widget.click(RIM, "negative")
    _stroke(qtbot, widget, widget.objects.prompt_layers.scribbles, (16, 5), 2)
    widget.new_object("second")
    widget.click(RIM2)
    saved = {o.id: (o.prompts, o.level, o.mask.copy()) for o in widget.objects.model.objects}
    folder = widget.save_session(tmp_path / "session")
    assert folder is not None
    for name in ("prompts.npz", "scribbles.npz", "masks.npz", "objects.json"):
        assert (folder / name).is_file(), name
    recs = json.loads((folder / "objects.json").read_text())["objects"]
    assert recs[0]["prompts"]["positive"] == [list(CENTRE)]
    assert recs[0]["prompts"]["negative"] == [list(RIM)] and recs[0]["level"] == 1
    # the folder alone solves the prompts to the saved masks
    for i, (prompts, level, mask) in saved.items():
        scr = prompts.scribbles(mask.shape)
        np.testing.assert_array_equal(
            segment_from_prompts(folder, prompts.positive, prompts.negative, scribbles=scr,
                                 level=level), mask)
    viewer.close()

    viewer = make_napari_viewer()
    viewer.open(str(path), plugin=PLUGIN)
    viewer.open(str(folder), plugin=PLUGIN)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.run_sync = True
    model = widget.objects.model
    assert model is not None and model.ids == [1, 2]
    for o in model.objects:
        prompts, level, mask = saved[o.id]
        assert o.prompts.same(prompts) and o.level == level and o.solved
        np.testing.assert_array_equal(o.mask, mask)
    assert widget.objects.folders.get(0) == folder
    # solving again in the reopened session gives the same mask; prompts go on
    widget.select_object(1)
    assert widget.undo() is False
    widget.objects.model.relevel(None)
    widget.objects.model.relevel(1)
    widget.objects.loaded()
    np.testing.assert_array_equal(widget.mask, saved[1][2])
    widget.click(RIM2)
    assert widget.objects.current.prompts.positive == (CENTRE, RIM2)
    assert widget.mask[RIM2]


def test_volume_prompts_in_2d_and_3d_views(make_napari_viewer, stand_in):
    from napari_cuts.prompts import segment_from_prompts

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.run_sync = True
    vol, base = ball_volume()
    folder = _segmented(viewer, widget, vol, scale=(2.0, 1.0, 1.0))
    widget.set_level(1)
    fake_click(widget, widget.levels_layer, (6, 10, 10))       # a slice in the 2D view
    np.testing.assert_array_equal(widget.mask, base > 0)
    # the 3D view: the voxel a ray through the shell lands on is a negative prompt
    viewer.dims.ndisplay = 3
    assert widget.levels_layer.contour == 0                    # no outlines in 3D
    start = np.asarray(widget.levels_layer.data_to_world((6, 10, -20.0)))
    hit = widget.objects.pick_3d(start, (0.0, 0.0, 1.0), (0, 1, 2))
    assert hit is not None and hit[0] == 6 and hit[1] == 10 and base[hit] == 2
    assert widget.click(hit, "negative")
    p = widget.objects.prompts
    want = segment_from_prompts(folder, p.positive, p.negative, level=1)
    np.testing.assert_array_equal(widget.mask, want)
    assert widget.mask[6, 10, 10] and not widget.mask[hit]
