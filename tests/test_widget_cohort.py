"""GUI tests of "Apply to all images" (issue 12, napari viewer under Xvfb): three small
synthetic images show the same bright blob (and a grey bar) at different places; one is
segmented, its blob clicked, and Apply to all images finds the blob in the other two with
the same encoder (no training): one mask layer each, named after the image, its area in
mm² from the layer scale, Dice against the true blob computed here. A cancel in the
thread worker after the first image leaves no layer at all; images of another kind are
skipped with the reason; without a click it says what to do.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_widget import PLUGIN, WIDGET, fake_click
from test_widget_volume import dice

pytestmark = pytest.mark.gui

SIDE = 48
#: (blob centre, bar top-left) of each image
PLACES = {"A": ((14, 14), (30, 6)), "B": ((32, 30), (6, 8)), "C": ((16, 34), (34, 10))}


def blob_image(name: str, seed: int):
    """(SIDE, SIDE) float32 and the blob mask: a bright disc (r = 6) and a grey bar on a
    ramp with noise."""
    (cy, cx), (by, bx) = PLACES[name]
    yy, xx = np.mgrid[:SIDE, :SIDE]
    blob = (yy - cy) ** 2 + (xx - cx) ** 2 < 6 ** 2
    bar = (yy >= by) & (yy < by + 6) & (xx >= bx) & (xx < bx + 20)
    rng = np.random.default_rng(seed)
    img = 20 + 120 * blob + 55 * bar + 0.25 * xx + rng.normal(0, 2, (SIDE, SIDE))
    return img.astype(np.float32), blob


@pytest.fixture(scope="module")
def images():
    return {n: blob_image(n, k) for k, n in enumerate(PLACES)}


@pytest.fixture(scope="module")
def encoder(images):
    from napari_cuts.encoder import train_encoder

    return train_encoder([images["A"][0]], epochs=1, seed=0)


@pytest.fixture
def clicked(make_napari_viewer, images, encoder):
    """Three images open (scale 0.5 mm), A segmented and its blob clicked."""
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.run_sync = True
    for n, (img, _) in images.items():
        viewer.add_image(img, name=n, scale=(0.5, 0.5))
    widget.image_combo.setCurrentText("A")
    widget.set_encoder(encoder)
    assert not widget.apply_all_btn.isEnabled()
    assert widget.segment()
    assert widget.apply_to_all() is False                      # no click yet
    assert "click the structure first" in widget.last_message[1]
    fake_click(widget, widget.levels_layer, PLACES["A"][0])
    # the blob is 120 above its surround (noise SD 2): the click gives all of it but a few
    # boundary pixels
    assert dice(widget.mask, images["A"][1]) >= 0.9
    assert widget.apply_all_btn.isEnabled()
    return viewer, widget


def test_apply_to_all_finds_the_blob_in_every_other_image(clicked, images, monkeypatch):
    import napari_cuts.encoder as E
    import time

    viewer, widget = clicked
    rgb = np.random.default_rng(1).integers(0, 255, (SIDE, SIDE, 3)).astype(np.uint8)
    viewer.add_image(rgb, name="rgb", rgb=True)

    def no_training(*a, **k):
        raise AssertionError("Apply to all images trained an encoder")

    monkeypatch.setattr(E, "train_encoder", no_training)
    t0 = time.perf_counter()
    assert widget.apply_to_all()
    seconds = time.perf_counter() - t0
    scores = {}
    for n in ("B", "C"):
        lay = viewer.layers[f"{n} CUTS match"]
        assert widget.cohort.match_layer(n).name == lay.name    # (the widget holds a proxy)
        assert lay.data.shape == (SIDE, SIDE) and tuple(lay.scale) == (0.5, 0.5)
        scores[n] = dice(lay.data > 0, images[n][1])
        info = lay.metadata["napari_cuts_match"]
        assert info["mm2"] == pytest.approx(np.count_nonzero(lay.data) * 0.25)
        assert info["reference"] == "A"
    print(f"\napply to all: Dice B {scores['B']:.2f}, C {scores['C']:.2f} in {seconds:.2f} s")
    # the same blob, as plain, elsewhere: found whole in each other image
    assert min(scores.values()) >= 0.9
    assert "A CUTS match" not in [lay.name for lay in viewer.layers]
    text = widget.apply_label.text()
    assert "B:" in text and "mm\u00b2" in text and "skipped" in text and "'rgb'" in text
    assert "3 channel(s), not 1" in text
    assert [r["image"] for r in widget.cohort.rows] == ["B", "C"]
    # clicks still go to the reference's levels, and a second run replaces the layers
    assert viewer.layers.selection.active.name == widget.levels_layer.name
    assert widget.apply_to_all()
    assert [lay.name for lay in viewer.layers].count("B CUTS match") == 1


def test_cancel_after_the_first_image_leaves_no_layer(clicked, qtbot, monkeypatch):
    import napari_cuts.matching as matching

    viewer, widget = clicked
    real = matching.match_image
    done = []

    def then_cancel(*a, **k):
        out = real(*a, **k)             # the first image is matched for real, then Cancel
        done.append(out["mask_pixels"])
        widget.runner.cancel()
        return out

    monkeypatch.setattr(matching, "match_image", then_cancel)
    before = [lay.name for lay in viewer.layers]
    widget.run_sync = False
    assert widget.apply_to_all()
    assert widget.busy and widget.cancel_btn.isEnabled()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    assert len(done) == 1                                        # one image was finished
    assert [lay.name for lay in viewer.layers] == before         # and no layer was made
    assert widget.last_message[0] == "info" and "ancel" in widget.last_message[1]
    assert widget.cohort.rows == [] and widget.apply_all_btn.isEnabled()


def test_no_other_image_of_the_kind_says_so(make_napari_viewer, images, encoder):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.run_sync = True
    viewer.add_image(images["A"][0], name="A")
    viewer.add_image(np.random.default_rng(0).random((4, 32, 32)).astype(np.float32),
                     name="vol")
    widget.image_combo.setCurrentText("A")
    widget.set_encoder(encoder)
    assert widget.segment()
    fake_click(widget, widget.levels_layer, PLACES["A"][0])
    assert widget.apply_to_all() is False
    level, msg = widget.last_message
    assert level == "error" and "No other open image" in msg and "'vol' is a volume" in msg


def blob_volume_at(centre, seed: int):
    """(10, 32, 32) float32: a grey body with a bright ellipsoid at ``centre``."""
    z, y, x = np.mgrid[:10, :32, :32].astype(np.float32)
    body = (z - 5) ** 2 / 30 + (y - 16) ** 2 / 200 + (x - 16) ** 2 / 200 < 1
    cz, cy, cx = centre
    blob = (z - cz) ** 2 / 6 + (y - cy) ** 2 / 20 + (x - cx) ** 2 / 20 < 1
    rng = np.random.default_rng(seed)
    return (5 + 45 * body + 90 * blob + rng.normal(0, 2, z.shape)).astype(np.float32), blob


def test_apply_to_all_volumes_in_ml(make_napari_viewer):
    from napari_cuts.pipeline import train_volume_encoder

    ref, ref_blob = blob_volume_at((5, 11, 11), 0)
    other, other_blob = blob_volume_at((5, 20, 19), 1)
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.run_sync = True
    viewer.add_image(ref, name="ref", scale=(2.0, 1.0, 1.0))
    viewer.add_image(other, name="other", scale=(2.0, 1.0, 1.0))
    viewer.add_image(np.random.default_rng(2).random((SIDE, SIDE)).astype(np.float32),
                     name="flat 2D")
    widget.image_combo.setCurrentText("ref")
    widget.set_encoder(train_volume_encoder(ref, spacing=(2.0, 1.0, 1.0), epochs=1, seed=0))
    assert widget.segment()
    fake_click(widget, widget.levels_layer, (5, 11, 11))
    # the ellipsoid is 90 above the body (noise SD 2): clicked, and matched in the other
    # volume, whole but for a few boundary voxels
    assert dice(widget.mask, ref_blob) >= 0.9
    assert widget.apply_to_all()
    lay = viewer.layers["other CUTS match"]
    d = dice(lay.data > 0, other_blob)
    info = lay.metadata["napari_cuts_match"]
    print(f"\napply to all (volume): Dice {d:.2f}, {info['ml']:.3f} mL")
    assert d >= 0.9 and info["ml"] == pytest.approx(np.count_nonzero(lay.data) * 2 / 1000)
    assert "mL" in widget.apply_label.text() and "'flat 2D' is a 2D image" in widget.apply_label.text()


def test_apply_to_folder_writes_masks_and_a_summary(clicked, images, tmp_path):
    import csv

    import imageio.v3 as iio

    viewer, widget = clicked
    folder = tmp_path / "cohort"
    folder.mkdir()
    for n in ("B", "C"):
        iio.imwrite(folder / f"{n}.png", np.clip(images[n][0], 0, 255).round().astype(np.uint8))
    (folder / "broken.png").write_bytes(b"not a png")
    before = [lay.name for lay in viewer.layers]
    assert widget.apply_to_folder(folder)
    out = folder / "cuts_masks"
    rows = list(csv.DictReader(open(out / "summary.csv", encoding="utf-8")))
    assert [(r["image"].split("/")[-1], r["status"]) for r in rows] == [
        ("B.png", "ok"), ("C.png", "ok"), ("broken.png", "error")]    # in name order
    scores = {n: dice(iio.imread(out / f"{n}_mask.png") > 0, images[n][1]) for n in ("B", "C")}
    print(f"\napply to folder: Dice B {scores['B']:.2f}, C {scores['C']:.2f}")
    assert min(scores.values()) >= 0.9                      # as Apply to all images
    assert int(rows[0]["mask_pixels"]) == np.count_nonzero(iio.imread(out / "B_mask.png"))
    assert not (out / "broken_mask.png").exists()
    assert [lay.name for lay in viewer.layers] == before          # no layer is opened
    assert "2 mask(s) written" in widget.apply_label.text() and "1 failed" in widget.apply_label.text()
