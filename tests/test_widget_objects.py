"""GUI tests of the object list (napari viewer under Xvfb): several objects, each with
its own id, prompts, mask and area; grow / shrink along the lineage of the object's
click (the slider moves, the object is solved there); undo and redo through the
viewer's keys; multi-label export that keeps the ids.

The object model (:mod:`napari_cuts._widget.objects`) is tested without Qt at the end.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_widget import PLUGIN, WIDGET, fake_click

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def fundus_encoder(small_fundus_module):
    from napari_cuts.encoder import train_encoder

    return train_encoder([small_fundus_module], epochs=1, seed=0)


@pytest.fixture(scope="module")
def small_fundus_module():
    import imageio.v3 as iio
    from skimage.transform import resize

    from conftest import REPO

    im = iio.imread(REPO / "sample_data" / "fundus.png")[..., :3]
    return resize(im, (64, 64), anti_aliasing=True, preserve_range=True).round().astype(np.uint8)


@pytest.fixture
def segmented(make_napari_viewer, small_fundus_module, fundus_encoder):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.run_sync = True
    viewer.add_image(small_fundus_module, name="fundus", scale=(0.5, 0.5))
    widget.set_encoder(fundus_encoder)
    assert widget.segment()
    return viewer, widget


def _press(viewer, key):
    """Press a key through the viewer's key map chain (active layer first, as napari)."""
    handler = viewer.window._qt_viewer._key_map_handler
    assert handler.press_key(key), f"{key} is not bound"
    handler.release_key(key)


def _state(widget):
    return (np.asarray(widget.labels_layer.data).copy(),
            [(o.id, o.name, tuple(o.clicks)) for o in widget.objects.model.objects],
            widget.objects.model.current_id)


def _points(widget, n=3):
    """n points in different clusters of the current level, away from the border."""
    lab = np.asarray(widget.results[0].hierarchy.labels(widget.level))
    pts, seen = [], set()
    for r in range(8, 56, 4):
        for c in range(8, 56, 4):
            if lab[r, c] not in seen and (lab == lab[r, c]).sum() >= 4:
                seen.add(lab[r, c])
                pts.append((r, c))
    assert len(pts) >= n
    return pts[:n]


def _movable(hier, pts):
    """A level where the connected structure at each point can both grow and shrink."""
    for lv in range(1, hier.n_levels - 1):
        if all(hier.step_level(p, lv, +1, connected=True) != lv
               and hier.step_level(p, lv, -1, connected=True) != lv for p in pts):
            return lv
    pytest.skip("no level where every structure can grow and shrink")


def test_three_objects_grow_shrink_undo_redo_export(segmented, tmp_path):
    import nibabel as nib
    import imageio.v3 as iio

    from napari_cuts._widget import LABELS_NAME, LEVELS_NAME, MASK_NAME

    viewer, widget = segmented
    hier = widget.results[0].hierarchy
    widget.set_level(min(hier.n_levels - 1, max(1, widget.level)))
    pts = _points(widget, 3)
    lv = _movable(hier, pts)
    widget.set_level(lv)
    states = [_state(widget) if widget.labels_layer is not None else None]

    # three objects made with New object between clicks: ids 1, 2, 3, their own areas
    for k, p in enumerate(pts):
        if k:
            assert widget.new_object() == k + 1
        fake_click(widget, widget.levels_layer, p)
    model = widget.objects.model
    assert model.ids == [1, 2, 3]
    for o, p in zip(model.objects, pts):
        # one positive click: the connected structure under it at the slider's level
        want = hier.structure(p, lv, connected=True)
        np.testing.assert_array_equal(o.mask, want)
        assert o.prompts.positive == (p,) and o.level == lv
        assert widget.objects.stats(o.id)["pixels"] == int(want.sum())
        assert widget.objects.stats(o.id)["mm2"] == pytest.approx(o.mask.sum() * 0.25)
    shown = viewer.layers[LABELS_NAME].data
    for o in model.objects:
        assert set(np.unique(shown[o.mask])) == {o.id}    # disjoint clusters here
    assert widget.object_list.table.rowCount() == 3
    row = widget.object_list.row_text(2)
    assert row[1] == "3" and row[2].startswith("1:") and row[3] == str(lv) and "mm" in row[4]
    assert viewer.layers.selection.active.name == LEVELS_NAME

    # grow: the slider one real merge up the click's lineage, the object solved there:
    # a strictly larger structure holding the click
    obj3 = model.current
    p3 = pts[2]
    widget.grow()
    grown = model.current
    up = hier.step_level(p3, lv, +1, connected=True)
    assert grown.level == up and widget.level == up
    assert grown.mask[p3] and grown.mask.sum() > obj3.mask.sum()
    assert np.all(grown.mask[obj3.mask])
    np.testing.assert_array_equal(viewer.layers[MASK_NAME].data.astype(bool), grown.mask)
    assert widget.object_list.row_text(2)[3] == str(up)
    # grow then shrink: the same mask again
    widget.shrink()
    np.testing.assert_array_equal(model.current.mask, obj3.mask)
    # shrink from the clicked level: strictly smaller, holds the click
    widget.shrink()
    small = model.current
    assert small.mask[p3] and small.mask.sum() < obj3.mask.sum()
    assert not np.any(small.mask & ~obj3.mask)
    # keys on the viewer: ] grows, [ shrinks (the levels layer is active)
    before = model.current.mask.copy()
    _press(viewer, "]")
    assert model.current.mask.sum() > before.sum()
    _press(viewer, "[")
    np.testing.assert_array_equal(model.current.mask, before)

    # an object of two positive clicks grows along its first click's lineage
    widget.select_object(1)
    fake_click(widget, widget.levels_layer, pts[1], modifiers=("Shift",))
    two = model.current
    assert two.id == 1 and len(two.clicks) == 2 and two.level == widget.level
    anchor = min(pts[0], pts[1])
    up = hier.step_level(anchor, two.level, +1, connected=True)
    assert widget.grow() == (up != two.level)
    assert model.current.level == up and widget.level == up

    # rename and delete
    widget.rename_object(2, "optic disc")
    assert model.get(2).name == "optic disc"
    widget.delete_object(3)
    assert model.ids == [1, 2]

    # undo every step through the viewer's ctrl+z, redo with ctrl+shift+z
    history = []
    while model.can_undo:
        history.append(_state(widget))
        _press(viewer, "Control-Z")
    assert model.ids == [] or all(o.mask is None for o in model.objects)
    n = len(history)
    assert n >= 12
    for k in range(n - 1, -1, -1):
        _press(viewer, "Control-Shift-Z")
        now = _state(widget)
        np.testing.assert_array_equal(now[0], history[k][0])
        assert now[1:] == history[k][1:]
    # and back down again exactly
    for k in range(n):
        np.testing.assert_array_equal(_state(widget)[0], history[k][0])
        _press(viewer, "Control-Z")

    # export all objects: ids kept, names beside; one object as a binary mask
    while model.can_redo:
        widget.redo()
    out = widget.export(tmp_path / "objects.nii.gz", what="objects")
    back = np.asarray(nib.load(out[0]).dataobj)
    back = back[..., 0] if back.ndim == 3 else back
    want = widget.objects.model.labels()
    assert np.array_equal(back.T, want) or np.array_equal(back, want)
    assert back.dtype in (np.uint8, np.uint16)
    names = json.loads((tmp_path / "objects.json").read_text())
    assert names["names"] == {str(o.id): o.name for o in model.objects if o.mask is not None}
    png = widget.export(tmp_path / "objects.png", what="objects")
    arr = iio.imread(png[0])
    np.testing.assert_array_equal(arr, want)
    assert 255 not in np.unique(arr)
    one = widget.export(tmp_path / "one.png", what="object")
    assert set(np.unique(iio.imread(one[0]))) <= {0, 255}


def test_one_object_png_is_not_0_255(segmented, tmp_path):
    import imageio.v3 as iio

    viewer, widget = segmented
    fake_click(widget, widget.levels_layer, (32, 32))
    out = widget.export(tmp_path / "o.png", what="objects")
    assert set(np.unique(iio.imread(out[0]))) <= {0, 1}


# ----------------------------------------------------------- model, no Qt

def test_model_objects_are_their_prompts_with_history():
    """Prompts change sign and never duplicate; a change is one undo step whose mask
    arrives later (stale answers refused); undo restores prompts and masks together;
    objects keep their own prompts; JSON and scribbles round trip."""
    from napari_cuts._widget.objects import ObjectSet, Prompts

    p = Prompts().add((0, 0), True)
    assert p.add((0, 0), True) is p                     # the same click again: nothing new
    q = p.add((0, 0), False)                            # alt-click on it: it turns negative
    assert q.positive == () and q.negative == ((0, 0),)
    assert p.add((1, 2.4), True).positive == ((0, 0), (1, 2))
    m = ObjectSet((4, 4))
    obj = m.set_prompts(p, 2)
    assert m.ids == [1] and obj.level == 2 and not obj.solved and obj.mask is None
    assert m.unsolved() == [obj]
    full = np.ones((4, 4), bool)
    assert not m.set_mask(1, Prompts().add((0, 0), True), 2, full)   # not these prompts
    assert not m.set_mask(1, p, 1, full)                             # not this level
    assert m.set_mask(1, p, 2, full) and m.current.solved and m.current.mask.all()
    p2 = p.add((3, 3), False)
    m.set_prompts(p2, 2)
    assert m.current.mask.all() and not m.current.solved            # the last mask stays
    half = np.zeros((4, 4), bool)
    half[:2] = True
    assert m.set_error(1, p2, 2, "no") and m.unsolved() == []
    assert m.current.mask.all() and m.current.error == "no"
    m.set_prompts(p2, 2)
    assert m.current.error is None
    assert m.set_mask(1, p2, 2, half)
    # scribbles: sparse in the model, dense out
    dense = np.zeros((4, 4), np.uint8)
    dense[3, :] = 2
    p3 = p2.with_scribbles(dense)
    assert p3.strokes == 1 and p3.count == 3 and p3.text() == "3: 1+ 1-, 1 stroke"
    np.testing.assert_array_equal(p3.scribbles((4, 4)), dense)
    m.set_prompts(p3, 2)
    m.set_mask(1, p3, 2, half)
    m.new_object("b")
    m.set_prompts(Prompts().add((3, 0), True), 0)
    assert m.get(1).prompts is p3 and m.current.id == 2
    # undo walks back: object b, the stroke, the negative point, the first click
    assert m.undo() and m.current.id == 2 and m.current.prompts.empty
    assert m.undo() and m.ids == [1]
    assert m.undo() and m.current.prompts is p2 and not m.current.prompts.has_scribbles
    np.testing.assert_array_equal(m.current.mask, half)
    assert m.undo() and m.current.prompts is p2 and m.current.error == "no"
    assert m.current.mask.all()                         # the mask kept through the error
    assert m.undo() and m.current.prompts is p and m.current.mask.all() and m.current.solved
    assert m.undo() and m.ids == [] and not m.can_undo
    while m.redo():
        pass
    assert m.ids == [1, 2] and m.get(1).prompts is p3
    recs = m.to_json()
    assert recs[0]["prompts"] == {"positive": [[0, 0]], "negative": [[3, 3]], "strokes": 1}
    m2 = ObjectSet((4, 4))
    m2.load(recs, {1: half}, m.scribbles())
    assert m2.get(1).prompts.same(p3) and m2.get(1).solved and m2.get(1).level == 2
    assert not m2.get(2).solved and m2.unsolved() == [m2.get(2)]     # no stored mask
    assert not m2.can_undo
    # Clear prompts: no prompt, no mask, at once
    m2.select(1)
    m2.set_prompts(Prompts(), 2)
    assert m2.current.mask is None and m2.current.solved
    for _ in range(60):
        m2.new_object()
    n = 0
    while m2.undo():
        n += 1
    assert n >= 20


def test_model_reads_the_clicks_of_older_sessions():
    """Sessions saved before objects were prompts have clicks (replace / add / remove):
    they come back as points (a replace starts over, remove is negative), with their
    stored masks and the last click's level."""
    from napari_cuts._widget.objects import ObjectSet, Prompts

    clicks = [{"mode": "replace", "point": [5, 5], "level": 1},
              {"mode": "replace", "point": [0, 0], "level": 2},
              {"mode": "add", "point": [1, 1], "level": 3},
              {"mode": "remove", "point": [2, 2], "level": 3, "connected": True}]
    p = Prompts.from_clicks(clicks)
    assert p.positive == ((0, 0), (1, 1)) and p.negative == ((2, 2),)
    m = ObjectSet((6, 6))
    mask = np.zeros((6, 6), bool)
    mask[:2, :2] = True
    m.load([{"id": 3, "name": "old", "colour": [1, 0, 0, 1], "clicks": clicks}], {3: mask})
    o = m.current
    assert o.id == 3 and o.prompts.same(p) and o.level == 3 and o.solved
    np.testing.assert_array_equal(o.mask, mask)
    assert o.colour == (1.0, 0.0, 0.0, 1.0)
