"""segment_from_prompts: an object re-solved from all of its prompts (2D and 3D).

Hierarchies are built by hand on tiny synthetic images, so every expected answer is
known exactly; no training."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_cuts import segment_from_prompts
from napari_cuts.errors import InputError
from napari_cuts.hierarchy import Hierarchy
from napari_cuts.prompts import PROMPTS_FILE, save_prompt_data


def _folder(tmp_path, finest, luts, image, spacing):
    hier = Hierarchy(np.asarray(finest), [np.asarray(t) for t in luts])
    hier.save(tmp_path / "hierarchy.npz")
    save_prompt_data(tmp_path, image=image, spacing=spacing)
    return tmp_path, hier


@pytest.fixture
def disc(tmp_path):
    """A 48 x 48 image: a bright disc (radius 12) with a dim rim band (to radius 18)
    around it, on a dark background. Base regions: 0 background, 1 disc, 2 rim. Levels: {0, 1, 2};
    {0, 1+2}; {0+1+2}."""
    yy, xx = np.mgrid[:48, :48]
    r = np.hypot(yy - 24, xx - 24)
    finest = np.where(r <= 12, 1, np.where(r <= 18, 2, 0))
    image = np.select([r <= 12, r <= 18], [1.0, 0.55], 0.1)
    image = image + 0.01 * np.random.default_rng(0).standard_normal(image.shape)
    luts = [np.array([0, 1, 2]), np.array([0, 1, 1]), np.array([0, 0, 0])]
    folder, hier = _folder(tmp_path, finest, luts, image, (1.0, 1.0))
    return folder, hier, finest


def test_one_click_is_the_tools_click(disc):
    folder, hier, _ = disc
    for p in [(24, 24), (24, 38), (3, 3)]:
        np.testing.assert_array_equal(segment_from_prompts(folder, [p]), hier.click_mask(p))
        for lv in range(hier.n_levels):
            np.testing.assert_array_equal(segment_from_prompts(folder, [p], level=lv),
                                          hier.structure(p, lv, connected=True))
    # duplicates of one click are one click
    np.testing.assert_array_equal(segment_from_prompts(folder, [(24, 24), (24.2, 23.9)]),
                                  hier.click_mask((24, 24)))


def test_no_positive_prompt_gives_an_empty_mask(disc):
    folder, hier, _ = disc
    assert not segment_from_prompts(folder, []).any()
    assert not segment_from_prompts(folder, [], [(5, 5)]).any()


def test_a_negative_click_takes_out_the_rim_and_keeps_the_disc(disc):
    folder, hier, finest = disc
    both = segment_from_prompts(folder, [(24, 24)], level=1)
    np.testing.assert_array_equal(both, finest > 0)          # disc + rim at level 1
    mask = segment_from_prompts(folder, [(24, 24)], [(24, 39)], level=1)
    disc_ = finest == 1
    assert not mask[finest == 2].any() and not mask[finest == 0].any()   # the rim is out
    # the disc stays, but for the single pixels sticking out of its digital outline (one
    # disc neighbour of four), which the boundary smoothing takes off
    from scipy import ndimage
    neighbours = ndimage.convolve(disc_.astype(int), [[0, 1, 0], [1, 0, 1], [0, 1, 0]], mode="constant")
    lost = disc_ & ~mask
    assert lost.sum() <= 4 and (neighbours[lost] <= 1).all()


def test_positive_negative_positive_converges(disc):
    """Clicks on the rim: positive, negative, positive. Each further prompt changes
    only what it must: the answer after the third click holds every positive and no
    negative, and a positive click never removes voxels of the previous answer."""
    folder, hier, finest = disc
    pos, neg = [(24, 24)], []
    prev = segment_from_prompts(folder, pos, neg, level=0)
    sequence = [("neg", (24, 39)), ("pos", (39, 24)), ("neg", (9, 24)), ("pos", (24, 9))]
    seen = [prev]
    for kind, p in sequence:
        (pos if kind == "pos" else neg).append(p)
        mask = segment_from_prompts(folder, pos, neg, level=0)
        assert all(mask[q] for q in pos) and not any(mask[q] for q in neg)
        if kind == "pos":
            assert not (prev & ~mask).any(), "a positive click removed voxels"
        else:
            assert not (mask & ~prev).any(), "a negative click added voxels"
        prev = mask
        seen.append(mask)
    # never back to an earlier state after a change
    changes = [not np.array_equal(a, b) for a, b in zip(seen, seen[1:])]
    for i, j in itertools.combinations(range(len(seen)), 2):
        if j > i + 1 and changes[j - 1]:
            assert not np.array_equal(seen[i], seen[j])


def test_prompts_in_any_order_give_the_identical_mask(disc):
    folder, hier, _ = disc
    pos = [(24, 24), (24, 38), (30, 20)]
    neg = [(24, 41), (3, 3)]
    ref = segment_from_prompts(folder, pos, neg)
    for pp in itertools.permutations(pos):
        for nn in itertools.permutations(neg):
            np.testing.assert_array_equal(segment_from_prompts(folder, list(pp), list(nn)), ref)


def test_scribbles_are_honoured(disc):
    folder, hier, finest = disc
    scr = np.zeros(finest.shape, np.uint8)
    scr[20:28, 22:26] = 1          # inside the disc
    scr[24, 38:42] = 2             # across the rim
    mask = segment_from_prompts(folder, [], scribbles=scr)
    assert mask[scr == 1].all() and not mask[scr == 2].any()
    assert mask[finest == 1].mean() > 0.9
    mask2 = segment_from_prompts(folder, [(24, 24)], scribbles=scr)
    assert mask2[scr == 1].all() and not mask2[scr == 2].any()


def test_volume_prompts_with_thick_slices(tmp_path):
    """A 3D ball in a 12 x 32 x 32 volume of 3 mm slices: a second positive click and a
    negative one are honoured and the answer is 3D."""
    zz, yy, xx = np.mgrid[:12, :32, :32]
    r = np.sqrt(((zz - 6) * 3.0) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2)
    finest = np.where(r <= 8, 1, np.where(r <= 11, 2, 0))
    vol = np.select([r <= 8, r <= 11], [200.0, 120.0], 20.0)
    luts = [np.array([0, 1, 2]), np.array([0, 1, 1]), np.array([0, 0, 0])]
    folder, hier = _folder(tmp_path, finest, luts, vol, (3.0, 1.0, 1.0))
    np.testing.assert_array_equal(segment_from_prompts(folder, [(6, 16, 16)]),
                                  hier.click_mask((6, 16, 16)))
    mask = segment_from_prompts(folder, [(6, 16, 16), (4, 16, 16)], [(6, 16, 26)], level=1)
    assert mask[6, 16, 16] and mask[4, 16, 16] and not mask[6, 16, 26]
    assert mask.shape == vol.shape
    assert mask[finest == 1].mean() > 0.95 and mask[finest == 0].sum() == 0


@pytest.mark.parametrize("call, words", [
    (lambda f: segment_from_prompts(f, [(60, 3)]), "positive prompt (60, 3)"),
    (lambda f: segment_from_prompts(f, [(3, 3)], [(-1, 3)]), "negative prompt (-1, 3)"),
    (lambda f: segment_from_prompts(f, [(3, 3, 3)]), "3 coordinates"),
    (lambda f: segment_from_prompts(f, [(3, 3)], [(3, 3)]), "both a positive and a negative"),
    (lambda f: segment_from_prompts(f, [(3, 3)], scribbles=np.zeros((4, 4), np.uint8)), "shape"),
    (lambda f: segment_from_prompts(f, [(3, 3)], scribbles=np.full((48, 48), 3, np.uint8)), "value"),
    (lambda f: segment_from_prompts(f, [("a", 3)]), "not a tuple of numbers"),
])
def test_bad_prompts_are_named(disc, call, words):
    folder, _, _ = disc
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        call(folder)


def test_a_folder_without_prompt_data_says_rerun_segment(disc, tmp_path_factory):
    folder, hier, _ = disc
    (folder / PROMPTS_FILE).unlink()
    with pytest.raises(InputError, match="rerun `napari-cuts segment`"):
        segment_from_prompts(folder, [(24, 24)], [(3, 3)])
    sliced = tmp_path_factory.mktemp("sliced")
    (sliced / "slices").mkdir()
    with pytest.raises(InputError, match="--slices"):
        segment_from_prompts(sliced, [(1, 1)])


def test_a_rewritten_folder_is_read_again(disc):
    folder, hier, finest = disc
    first = segment_from_prompts(folder, [(24, 24)], [(24, 39)], level=1)
    # the same folder rewritten with another hierarchy: the disc and the rim one region
    h2 = Hierarchy(np.where(finest > 0, 1, 0), [np.array([0, 1]), np.array([0, 0])])
    h2.save(folder / "hierarchy.npz")
    second = segment_from_prompts(folder, [(24, 24)], level=0)
    np.testing.assert_array_equal(second, finest > 0)
    assert not np.array_equal(first, second)


def test_segment_writes_prompt_data_and_the_click_matches(tmp_path, small_fundus):
    """The real segment job writes prompts.npz; its one click equals click_mask."""
    from napari_cuts.io import read_image, write_labels
    from napari_cuts.pipeline import segment

    src = tmp_path / "fundus.png"
    write_labels(src, np.asarray(small_fundus), provenance=None) if np.asarray(small_fundus).ndim == 2 \
        else __import__("imageio.v3", fromlist=["imwrite"]).imwrite(src, np.asarray(small_fundus))
    out = tmp_path / "out"
    segment(src, out, epochs=1, seed=0, log=lambda *a: None)
    assert (out / PROMPTS_FILE).is_file()
    hier = Hierarchy.load(out / "hierarchy.npz")
    h, w = hier.shape
    p = (h // 2, w // 2)
    np.testing.assert_array_equal(segment_from_prompts(out, [p]), hier.click_mask(p))
    shape = read_image(src).data.shape[:2]
    m = segment_from_prompts(out, [p], [(2, 2)])
    assert m.shape == tuple(shape) and m[p] and not m[2, 2]


def test_the_constant_surround_joins_no_object_unless_prompted(tmp_path):
    """A bright disc inside a grey field on a black surround (a fundus-like frame):
    the solved mask leaves the black surround out even where the hierarchy's structure
    takes it in, unless a prompt is there."""
    from napari_cuts.prompts import outside_mask

    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    image = np.select([r <= 6, r <= 16], [1.0, 0.5], 0.0)
    assert outside_mask(image, 2).sum() == int((r > 16).sum())
    assert not outside_mask(np.random.default_rng(0).random((20, 20)), 2).any()
    # the hierarchy: disc, field, surround; then the field and the surround merge first
    finest = np.select([r <= 6, r <= 16], [1, 2], 0)
    luts = [np.array([0, 1, 2]), np.array([0, 1, 0]), np.array([0, 0, 0])]
    folder, hier = _folder(tmp_path, finest, luts, image, (1.0, 1.0))
    mask = segment_from_prompts(folder, [(20, 30), (20, 28)], level=1)   # field + surround
    assert mask[finest == 2].mean() > 0.9 and not mask[r > 16].any()
    mask = segment_from_prompts(folder, [(20, 30), (20, 38)], level=1)   # the surround prompted
    assert mask[20, 38]


def test_boundary_smoothing_keeps_what_the_walker_is_sure_of():
    """The mask is smoothed at one finest voxel: a one-voxel spike where the walker is
    unsure leaves, a one-voxel-wide line where it is sure stays, and a mask that holds
    another still holds it after smoothing (the order of the seeds is kept)."""
    from napari_cuts.prompt_solver import regularised

    yy, xx = np.mgrid[:40, :40]
    x = np.where(np.hypot(yy - 20, xx - 14) <= 8, 0.8, 0.1)
    x[20, 22:24] = 0.6                          # a spike off the disc's edge, unsure
    x[5, 5:35] = 0.95                           # a line one voxel wide, sure
    m = regularised(x, (1.0, 1.0), 1.0) > 0.5
    assert not m[20, 23] and m[5, 5:35].all()
    disc = np.hypot(yy - 20, xx - 14) <= 8
    assert m[disc].mean() > 0.97 and not m[~disc & (yy > 7)].any()
    bigger = np.maximum(x, np.where(np.hypot(yy - 20, xx - 16) <= 8, 0.7, 0.0))
    assert not (m & ~(regularised(bigger, (1.0, 1.0), 1.0) > 0.5)).any()


def test_a_thin_line_between_two_clicks_stays_whole(tmp_path):
    """A bright line one pixel wide: two positive clicks at its ends give the whole line."""
    img = np.full((32, 48), 0.1)
    img[16, 4:44] = 1.0
    finest = (img > 0.5).astype(int)
    luts = [np.array([0, 1]), np.array([0, 0])]
    folder, hier = _folder(tmp_path, finest, luts, img, (1.0, 1.0))
    mask = segment_from_prompts(folder, [(16, 5), (16, 42)])
    assert mask[16, 4:44].all()
    yy, xx = np.mgrid[:32, :48]
    near_click = (np.hypot(yy - 16, xx - 5) <= 2.5) | (np.hypot(yy - 16, xx - 42) <= 2.5)
    assert not (mask & ~(finest.astype(bool) | near_click)).any()   # no background but the seeds' balls
