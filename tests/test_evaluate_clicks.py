"""`napari-cuts evaluate --clicks N`: the simulated user and the methods it drives.

The clicker rules are checked on hand-made masks; the command on a two-case Decathlon
folder of tiny volumes, where the test replays one case's clicks for random_walker with
its own numpy / scipy / scikit-image code (written from the rule, not imported) and
compares the Dice curve and the clicks.
"""

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_cuts.evaluation import clicks as U
from napari_cuts.cli import main

SHAPE = (16, 20, 18)
SPACING = (2.5, 1.0, 1.0)  # (sz, sy, sx) mm: exact in binary, z thicker than twice y / x


# --------------------------------------------------------------------------- the clicker

def test_innermost_uses_the_spacing_in_mm():
    gt = np.zeros((20, 30), bool)
    gt[1:8, 1:8] = True      # a 7 x 7 square: 4 px deep in both axes
    gt[10:15, 5:20] = True   # a 5 x 15 strip: 3 px deep across, 8 along
    assert U.first_click(gt, (1.0, 1.0)) == ((4, 4), True)
    # rows 3 mm apart: the strip's centre is 9 mm from the background, the square's 4 mm
    assert U.first_click(gt, (3.0, 1.0)) == ((12, 12), True)


def test_ties_go_to_the_first_voxel_in_c_order_and_the_outside_is_background():
    gt = np.zeros((9, 9), bool)
    gt[2:5, 2:7] = True  # a 3 x 5 bar: (3, 3), (3, 4), (3, 5) all 2 px deep
    assert U.first_click(gt, None)[0] == (3, 3)  # not the plateau's centre (3, 4)
    full = np.ones((5, 7), bool)  # the whole image: the border is next to the outside
    assert U.first_click(full, (1.0, 1.0))[0] == (2, 2)  # 3 px deep at x = 2, 3, 4
    edge = np.zeros((6, 6), bool)
    edge[:, :3] = True  # touches the image border on three sides
    assert U.first_click(edge, None)[0] == (1, 1)  # 2 px from the outside and from x = 3


def test_largest_component_and_its_sign():
    gt = np.zeros((12, 12), bool)
    gt[1:6, 1:6] = True
    mask = np.zeros_like(gt)
    mask[8:11, 8:11] = True  # a false positive of 9 pixels; the false negative has 25
    pt, pos = U.next_click(mask, gt, None)
    assert pos and pt == (3, 3)
    mask[1:6, 1:6] = True
    mask[1:6, 3] = False  # a false negative of 5; the false positive of 9 wins
    assert U.next_click(mask, gt, None) == ((9, 9), False)


def test_equal_sizes_lowest_label_then_false_negative_first():
    gt = np.zeros((10, 10), bool)
    gt[1:4, 1:4] = True
    gt[6:9, 6:9] = True  # two false negatives of 9 pixels: the first label (scan order)
    mask = np.zeros_like(gt)
    mask[6:9, 1:4] = True  # and a false positive of 9 pixels, label 1 of its own map
    assert U.next_click(mask, gt, None) == ((2, 2), True)
    gt2 = np.zeros((10, 10), bool)
    gt2[6:9, 6:9] = True
    mask2 = gt2.copy()
    mask2[1:4, 1:4] = True   # a false positive of 9 (label 1) ...
    mask2[6:9, 6:9] = False  # ... and a false negative of 9 (label 1): the negative first
    assert U.next_click(mask2, gt2, None) == ((7, 7), True)


def test_components_are_26_connected_in_3d():
    gt = np.zeros((6, 6, 6), bool)
    gt[1, 1, 1] = gt[2, 2, 2] = True  # a false negative of 2 touching at a corner
    mask = gt.copy()
    mask[1, 1, 1] = mask[2, 2, 2] = False
    mask[4, 4, 3:5] = True  # a false positive of 2 sharing a face
    # 26-connected: 2 against 2, both label 1, the false negative first (6-connected it
    # would be two components of 1 and the false positive would win)
    pt, pos = U.next_click(mask, gt, (1.0, 1.0, 1.0))
    assert pos and pt in ((1, 1, 1), (2, 2, 2))


def test_no_error_left_stops_and_carries_the_score():
    gt = np.zeros((8, 8), bool)
    gt[2:6, 2:6] = True
    assert U.next_click(gt.copy(), gt, None) is None
    calls = []

    def perfect(pos, neg):
        calls.append((list(pos), list(neg)))
        return gt.copy()

    run = U.simulate(perfect, gt, (1.0, 1.0), 5)
    assert run["dice"] == [1.0] * 5 and len(calls) == 1 and len(run["seconds"]) == 1

    def half_then_right(pos, neg):
        m = np.zeros_like(gt)
        m[2:6, 2:4] = True
        return gt.copy() if len(pos) > 1 else m

    run = U.simulate(half_then_right, gt, (1.0, 1.0), 4)
    assert run["dice"][0] == pytest.approx(2 * 8 / 24) and run["dice"][1:] == [1.0] * 3
    assert [c[1] for c in run["clicks"]] == [True, True]


def test_random_walker_seeds_balls_and_border():
    seeds = U.random_walker_seeds((9, 11, 11), [(4, 5, 5)], [(4, 5, 7)], (3.0, 1.0, 1.0))
    assert (seeds[0] == 2).all() and (seeds[:, :, -1] == 2).all()
    assert seeds[4, 5, 5] == 1 and seeds[4, 5, 7] == 1  # the positive ball drawn last
    assert seeds[4, 5, 9] == 2 and seeds[4, 5, 3] == 1
    assert seeds[5, 5, 5] == 1 and seeds[6, 5, 5] == 0  # radius 1 along the thick z
    assert seeds[4, 7, 5] == 1 and seeds[4, 8, 5] == 0  # radius 2 in-plane


# --------------------------------------------------------------------------- the command

def _case(seed: int):
    """A bright ellipsoid whose left part only is labelled: the boundary inside the
    ellipsoid is invisible, so no method is right at once."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    cy, cx = 10 + seed % 2, 9 - seed % 2
    blob = ((zz - 8) / 5.0) ** 2 + ((yy - cy) / 6.0) ** 2 + ((xx - cx) / 6.0) ** 2 < 1.0
    img = 100.0 + rng.normal(0, 12.0, SHAPE)
    img[blob] += 60.0
    lab = (blob & (xx <= cx + 1)).astype(np.uint8)
    return img.astype(np.float32), lab


def _save(path, arr):
    import nibabel as nib

    affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr.T), affine), str(path))


@pytest.fixture
def decathlon(tmp_path):
    root = tmp_path / "Task98_Clicks"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in (1, 2):
        img, lab = _case(i)
        _save(root / "imagesTr" / f"case_{i:03d}.nii.gz", img)
        _save(root / "labelsTr" / f"case_{i:03d}.nii.gz", lab)
    return root


def _my_innermost(region, sp):
    d = ndimage.distance_transform_edt(np.pad(region, 1), sampling=sp)
    d = d[tuple(slice(1, -1) for _ in region.shape)]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(d)), region.shape))


def _my_next(mask, gt, sp):
    cands = []
    for kind, err in ((0, gt & ~mask), (1, mask & ~gt)):
        lab, n = ndimage.label(err, structure=np.ones((3,) * gt.ndim))
        for i in range(1, n + 1):
            cands.append((-int((lab == i).sum()), i, kind, lab == i))
    if not cands:
        return None
    _, _, _, comp = min(cands, key=lambda c: c[:3])
    p = _my_innermost(comp, sp)
    return p, bool(gt[p])


def _my_random_walker_curve(img, gt, n):
    from skimage.segmentation import random_walker

    lo, hi = np.percentile(img.astype(np.float64), [0.5, 99.5])
    data = np.clip((img - lo) / (hi - lo), 0, 1)
    radii = (1, 2, 2)  # z is 2.5 mm > twice 1 mm
    zz, yy, xx = np.mgrid[-1:2, -2:3, -2:3]
    ball = (zz / 1.0) ** 2 + (yy / 2.0) ** 2 + (xx / 2.0) ** 2 <= 1.0
    offs = np.argwhere(ball) - np.array(radii)

    def paint(seeds, p, value):
        for o in offs:
            q = tuple(np.array(p) + o)
            if all(0 <= a < s for a, s in zip(q, seeds.shape)):
                seeds[q] = value

    pos, neg, dices, clicks = [_my_innermost(gt, SPACING)], [], [], []
    clicks.append([list(pos[0]), True])
    while True:
        seeds = np.zeros(gt.shape, np.int32)
        seeds[[0, -1]] = 2
        seeds[:, [0, -1]] = 2
        seeds[:, :, [0, -1]] = 2
        for p in neg:
            paint(seeds, p, 2)
        for p in pos:
            paint(seeds, p, 1)
        mask = random_walker(data, seeds, beta=130, mode="cg_j", tol=1e-3,
                             spacing=np.array(SPACING)) == 1
        dices.append(2 * (mask & gt).sum() / (mask.sum() + gt.sum()))
        if len(dices) == n:
            return dices, clicks
        nxt = _my_next(mask, gt, SPACING)
        if nxt is None:
            return dices + [dices[-1]] * (n - len(dices)), clicks
        (pos if nxt[1] else neg).append(nxt[0])
        clicks.append([list(nxt[0]), nxt[1]])


def test_evaluate_clicks_on_a_decathlon_folder(decathlon, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"methods": {"cuts_best": {"dice": 0.5}}}))
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nkept\n\n<!-- evaluate-clicks:Task98_Clicks -->\nold\n"
                  "<!-- /evaluate-clicks:Task98_Clicks -->\n\ntail kept\n")
    argv = ["evaluate", "--data", str(decathlon), "--out", str(out), "--clicks", "3",
            "--seeds", "1", "--epochs", "1", "--ablation", "--results-md", str(md)]
    assert main(argv) == 0
    assert "random_walker" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["methods"] == {"cuts_best": {"dice": 0.5}}  # the usual evaluation's rows kept
    clicks = res["clicks"]
    assert clicks["n"] == 3 and set(clicks["cases"]) == {"case_001", "case_002"}
    prompts = U.prompts_available() is None
    expect = {"random_walker", "slic3d"} | ({"cuts_prompts", "image_only_prompts"} if prompts
                                           else set())
    for case, curves in clicks["cases"].items():
        assert set(curves) == expect
        for curve in curves.values():
            assert len(curve) == 3 and all(0.0 <= d <= 1.0 for d in curve)
    for name in expect:
        s = clicks["methods"][name]
        assert set(s["dice_at"]) == {"1", "3", "5", "10"} and s["dice_at"]["5"] is None
        assert set(s["noc"]) == set(s["never"]) == {"80", "85", "90"}
        # the mean curve over the cases, and its largest fall from one click to the next
        # (0 where it never falls)
        mean = np.mean([clicks["cases"][c][name] for c in clicks["cases"]], axis=0)
        assert s["mean_curve"] == pytest.approx(mean)
        assert s["dice_at"]["3"] == pytest.approx(mean[2])
        assert s["largest_drop"] == pytest.approx(max(0.0, float(np.max(mean[:-1] - mean[1:]))))
    if not prompts:
        assert "not_run" in clicks["methods"]["cuts_prompts"]
    else:
        assert (out / "cases" / "case_001" / "seed1" / "run.json").exists()
    assert (out / "clicks.png").stat().st_size > 0
    assert "| random_walker |" in (out / "results.md").read_text()
    text = md.read_text()
    assert text.startswith("# Results\n\nkept\n") and text.rstrip().endswith("tail kept")
    assert "old" not in text and text.count("<!-- evaluate-clicks:Task98_Clicks -->") == 1
    assert "--clicks 3" in text and "commit:" in text and "CPUs" in text

    # one case replayed with this test's own clicker and random walker
    import nibabel as nib

    img = np.asarray(nib.load(str(decathlon / "imagesTr" / "case_001.nii.gz")).dataobj).T
    gt = np.asarray(nib.load(str(decathlon / "labelsTr" / "case_001.nii.gz")).dataobj).T > 0
    dices, seq = _my_random_walker_curve(img, gt, 3)
    assert clicks["cases"]["case_001"]["random_walker"] == pytest.approx(dices, abs=1e-9)
    assert clicks["click_sequences"]["case_001"]["random_walker"]["-"] == seq
    assert len(seq) > 1  # the run did not stop at the first click


def _retina_folder(root, names):
    import imageio.v3 as iio

    (root / "image_with_GA").mkdir(parents=True)
    (root / "label_with_GA").mkdir()
    rng = np.random.default_rng(0)
    for k, ident in enumerate(names):
        yy, xx = np.mgrid[:24, :26]
        disc = (yy - 11) ** 2 + (xx - 12 - k % 3) ** 2 < 30
        img = rng.integers(20, 60, (24, 26, 3)).astype(np.uint8)
        img[disc] = [200, 120, 60]
        iio.imwrite(root / "image_with_GA" / f"image{ident}.png", img)
        np.save(root / "label_with_GA" / f"label{ident}.npy", disc.astype(np.uint8))
    return root


def test_split_on_a_2d_folder(tmp_path):
    root = _retina_folder(tmp_path / "retina", ["1", "2", "10", "3"])
    out = tmp_path / "out"
    res = U.run_clicks_evaluation(root, out, n_clicks=2, seeds=(1,), split="dev",
                                  methods=["random_walker", "slic3d"])
    assert res["cases_order"] == ["image1", "image10"]  # the first half by sorted name
    assert set(res["cases"]) == {"image1", "image10"}
    assert res["methods"]["slic3d"]["n_cases"] == 2
    assert res["slic_size"]["image1"] in U.SLIC_SIZES_2D
    back = U.run_clicks_evaluation(root, tmp_path / "out2", n_clicks=2, seeds=(1,),
                                   split="report", methods=["random_walker"])
    assert back["cases_order"] == ["image2", "image3"]
    assert json.loads((out / "results.json").read_text())["methods"] == {}


def test_prompt_methods_get_the_segment_folders_and_reuse_them(decathlon, tmp_path,
                                                                monkeypatch):
    """The plumbing of cuts_prompts / image_only_prompts, with a stand-in for
    napari_cuts.prompts: the folders, the prompts' form, the reuse on a rerun."""
    import sys
    import types

    from napari_cuts.hierarchy import Hierarchy

    calls, saved = [], []

    def segment_from_prompts(result, positive, negative=(), *, scribbles=None, level=None):
        calls.append((result, list(positive), list(negative), level))
        hier = Hierarchy.load(f"{result}/hierarchy.npz")
        return hier.click_mask(positive[0])

    def save_prompt_data(folder, *, image, embedding=None, pools=None, spacing=None):
        saved.append((str(folder), image.shape, image.dtype, embedding, tuple(spacing)))

    fake = types.ModuleType("napari_cuts.prompts")
    fake.segment_from_prompts, fake.save_prompt_data = segment_from_prompts, save_prompt_data
    monkeypatch.setitem(sys.modules, "napari_cuts.prompts", fake)
    out = tmp_path / "out"
    kw = dict(n_clicks=2, seeds=(1,), epochs=1, cases=["case_002"],
              methods=["cuts_prompts", "image_only_prompts"])
    res = U.run_clicks_evaluation(decathlon, out, **kw)
    seg = out / "cases" / "case_002" / "seed1"
    assert {c[0] for c in calls} == {str(seg), str(out / "cases" / "case_002" / "seed1_image_only")}
    assert all(c[3] is None and all(isinstance(p, tuple) and len(p) == 3 for p in c[1] + c[2])
               for c in calls)
    # (the segment job may write its own prompt data through the stand-in too)
    assert [x for x in saved if x[0].endswith("_image_only")] == [
        (str(seg) + "_image_only", SHAPE, np.float32, None, SPACING)]
    hier = Hierarchy.load(seg.parent / "seed1_image_only" / "hierarchy.npz")
    assert hier.metadata.get("use_embeddings") is False
    assert set(res["per_seed"]["case_002"]) == {"cuts_prompts", "image_only_prompts"}
    stamp = (seg / "run.json").stat().st_mtime_ns
    saved.clear()
    U.run_clicks_evaluation(decathlon, out, **kw)
    assert (seg / "run.json").stat().st_mtime_ns == stamp and saved == []  # reused
