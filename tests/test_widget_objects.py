"""GUI tests of the object list (napari viewer under Xvfb): several objects, each with
its own id, mask and area; per-structure grow / shrink along the clicked lineage; undo
and redo through the viewer's keys; multi-label export that keeps the ids.

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
    """A level where the structure at each point can both grow and shrink."""
    for lv in range(1, hier.n_levels - 1):
        if all(hier.step_level(p, lv, +1) != lv and hier.step_level(p, lv, -1) != lv
               for p in pts):
            return lv
    pytest.skip("no level where every structure can grow and shrink")


def test_three_objects_grow_shrink_undo_redo_export(segmented, tmp_path):
    import nibabel as nib
    import imageio.v3 as iio

    from napari_cuts._widget import LABELS_NAME, LEVELS_NAME, MASK_NAME

    viewer, widget = segmented
    # whole clusters here (the connected option has its own test below)
    widget.connected_check.setChecked(False)
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
    lab = np.asarray(hier.labels(lv))
    for o, p in zip(model.objects, pts):
        np.testing.assert_array_equal(o.mask, lab == lab[p])
        assert widget.objects.stats(o.id)["pixels"] == int((lab == lab[p]).sum())
        assert widget.objects.stats(o.id)["mm2"] == pytest.approx(o.mask.sum() * 0.25)
    shown = viewer.layers[LABELS_NAME].data
    for o in model.objects:
        assert set(np.unique(shown[o.mask])) == {o.id}    # disjoint clusters here
    assert widget.object_list.table.rowCount() == 3
    row = widget.object_list.row_text(2)
    assert row[1] == "3" and row[2] == str(lv) and "mm" in row[3]
    assert viewer.layers.selection.active.name == LEVELS_NAME

    # grow: a strictly larger structure holding the click, the slider unmoved
    obj3 = model.current
    p3 = pts[2]
    widget.grow()
    grown = model.current
    up = hier.step_level(p3, lv, +1)
    assert grown.levels == [up] and widget.level == lv
    assert grown.mask[p3] and grown.mask.sum() > obj3.mask.sum()
    assert np.all(grown.mask[obj3.mask])
    np.testing.assert_array_equal(viewer.layers[MASK_NAME].data.astype(bool), grown.mask)
    assert widget.object_list.row_text(2)[2] == str(up)
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

    # an object of two clicks grows each of its structures
    widget.select_object(1)
    fake_click(widget, widget.levels_layer, pts[1], modifiers=("Shift",))
    two = model.current
    assert two.id == 1 and len(two.clicks) == 2
    widget.grow()
    assert model.current.levels == [hier.step_level(pts[0], lv, 1), hier.step_level(pts[1], lv, 1)]

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

class _Toy:
    """A 1D-ish toy hierarchy on a 4 x 4 grid: levels nest 4 quadrants -> halves -> all."""

    def __init__(self):
        from napari_cuts.hierarchy import Hierarchy

        q = np.zeros((4, 4), np.int64)
        q[:2, 2:], q[2:, :2], q[2:, 2:] = 1, 2, 3
        self.h = Hierarchy(q, [np.arange(4), np.array([0, 0, 1, 1]), np.zeros(4, int)])


def test_model_objects_history_and_steps():
    from napari_cuts._widget.objects import HierarchyStructures, ObjectSet

    toy = _Toy()
    st = HierarchyStructures(lambda z: toy.h)
    m = ObjectSet((4, 4))
    m.click(st, (0, 0), "replace", 0)
    assert m.ids == [1] and m.current.mask.sum() == 4
    m.new_object("b")
    m.click(st, (3, 3), "replace", 0)
    m.click(st, (3, 0), "add", 0)
    assert m.current.mask.sum() == 8 and m.labels()[3, 0] == 2
    assert m.step(st, +1)                    # each structure up: halves (overlapping)
    assert m.current.levels == [1, 1] and m.current.mask.sum() == 8
    assert m.step(st, +1) and m.current.mask.all()
    assert not m.step(st, +1)                # the root: nothing to grow, no undo step
    lab = m.labels()
    assert (lab == 2).all()                  # the later object on top
    assert m.get(1).mask.sum() == 4          # object 1 keeps its whole mask
    for _ in range(5):
        assert m.undo()
    assert m.ids == [1] and m.current.mask.sum() == 4
    assert m.redo() and m.ids == [1, 2]
    m.delete(1)
    assert m.ids == [2]
    assert m.undo() and m.ids == [1, 2]
    rec = m.to_json()
    m2 = ObjectSet((4, 4))
    m2.load(rec, None, st)
    for a, b in zip(m.objects, m2.objects):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.clicks == b.clicks and a.name == b.name
    assert not m2.can_undo
    for _ in range(60):
        m2.new_object()
    n = 0
    while m2.undo():
        n += 1
    assert n >= 20


def test_model_connected_click_takes_the_part_under_the_click_and_is_saved():
    """A click with ``connected`` takes the part of the cluster connected to it; the
    choice is stored with the click (JSON) and kept by grow / shrink and reload."""
    from napari_cuts._widget.objects import Click, HierarchyStructures, ObjectSet
    from napari_cuts.hierarchy import Hierarchy

    lab = np.zeros((6, 6), int)
    lab[0:2, 0:2] = 1
    lab[4:6, 4:6] = 1                           # the same cluster, another place
    coarse = (lab > 0) | (np.arange(6)[None, :] < 3) & (np.arange(6)[:, None] < 3)
    h = Hierarchy.from_labels(np.stack([lab, coarse.astype(int), np.zeros_like(lab)]))
    st = HierarchyStructures(lambda z: h)
    m = ObjectSet((6, 6))
    m.click(st, (0, 0), "replace", 0)
    assert m.current.mask.sum() == 8            # the whole cluster: both squares
    m.click(st, (0, 0), "replace", 0, connected=True)
    assert m.current.mask.sum() == 4 and not m.current.mask[4:, 4:].any()
    c = m.current.clicks[0]
    assert c.connected and Click.from_json(c.to_json()) == c
    assert not Click.from_json({"mode": "add", "point": [0, 0], "level": 0}).connected
    assert m.step(st, +1)                       # up to the connected 3 x 3 + 2 x 2 cluster
    assert m.current.levels == [1] and m.current.mask.sum() == 9
    rec = m.to_json()
    m2 = ObjectSet((6, 6))
    m2.load(rec, None, st)
    np.testing.assert_array_equal(m2.current.mask, m.current.mask)
    assert m2.current.clicks[0].connected


def test_connected_part_only_click_in_the_viewer(segmented):
    """With "Connected part only" ticked a click in the viewer takes the part of the
    cluster connected to the clicked pixel (scipy's 4-connected label), unticked the
    whole cluster; the saved session JSON records the choice per click."""
    from scipy import ndimage

    viewer, widget = segmented
    hier = widget.results[0].hierarchy
    # a level and a pixel whose cluster has more than one connected part
    found = None
    for lv in range(hier.n_levels - 1):
        lab = np.asarray(hier.labels(lv))
        for cid in np.unique(lab):
            comp, n = ndimage.label(lab == cid)
            if n > 1:
                found = (lv, tuple(int(v) for v in np.argwhere(comp == 1)[0]), lab == cid, comp == 1)
                break
        if found:
            break
    assert found, "the test image should have a cluster in several parts"
    lv, p, whole, part = found
    widget.set_level(lv)
    assert widget.connected_check.isChecked()          # on by default
    fake_click(widget, widget.levels_layer, p)
    obj = widget.objects.model.current
    np.testing.assert_array_equal(obj.mask, part)
    assert obj.clicks[-1].connected and json.loads(json.dumps(obj.to_json()))["clicks"][0]["connected"]
    widget.connected_check.setChecked(False)
    fake_click(widget, widget.levels_layer, p)
    obj = widget.objects.model.current
    np.testing.assert_array_equal(obj.mask, whole)
    assert not obj.clicks[-1].connected
    assert not json.loads(json.dumps(obj.to_json()))["clicks"][0]["connected"]
    widget.connected_check.setChecked(True)
    fake_click(widget, widget.levels_layer, p)
    obj = widget.objects.model.current
    np.testing.assert_array_equal(obj.mask, part)
