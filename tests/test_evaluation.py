"""run_evaluation on tiny synthetic sets in both layouts, and its pieces."""

import csv
import importlib
import json

import numpy as np
import pytest

from napari_cuts import evaluation as E
from napari_cuts.errors import Cancelled, CutsError, InputError, ReadError

METRICS = ("dice", "hausdorff", "hd95", "ssim", "ergas", "rmse")


def _blob_image(rng, size=48, channels=3):
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    r = rng.uniform(0.15, 0.25) * size
    fg = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    base = 0.25 + 0.1 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    img = np.where(fg, 0.8, base)[..., None] * np.ones(channels)
    img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)
    return img, fg


@pytest.fixture
def retina_dir(tmp_path):
    from skimage.io import imsave

    root = tmp_path / "retina_like"
    (root / "image_with_GA").mkdir(parents=True)
    (root / "label_with_GA").mkdir()
    rng = np.random.default_rng(0)
    for n in (3, 11, 7):
        img, fg = _blob_image(rng)
        imsave(root / "image_with_GA" / f"image{n}.png", (img * 255).astype(np.uint8),
               check_contrast=False)
        np.save(root / "label_with_GA" / f"label{n}.npy", fg.astype(np.uint8))
    return root


@pytest.fixture
def nifti_dir(tmp_path):
    import nibabel as nib

    root = tmp_path / "nifti_like"
    root.mkdir()
    rng = np.random.default_rng(1)
    # a 3D case: 9 slices of 40 x 40, blob on slices 2..6 (largest on 4)
    vol = np.zeros((9, 40, 40), dtype=np.float32)
    seg = np.zeros((9, 40, 40), dtype=np.uint8)
    yy, xx = np.mgrid[:40, :40]
    for z in range(9):
        vol[z] = 100 + 20 * rng.random((40, 40))
        if 2 <= z <= 6:
            r = 9 - 2 * abs(z - 4)
            fg = (yy - 20) ** 2 + (xx - 18) ** 2 < r**2
            vol[z][fg] += 300
            seg[z][fg] = 2 if z == 4 else 1  # multi-label mask: foreground = > 0
    # stored as (X, Y, Z) like a scanner would write it
    nib.save(nib.Nifti1Image(np.transpose(vol, (2, 1, 0)), np.eye(4)), root / "case.nii.gz")
    nib.save(nib.Nifti1Image(np.transpose(seg, (2, 1, 0)), np.eye(4)), root / "case_seg.nii.gz")
    # a 2D case
    img, fg = _blob_image(rng, size=36, channels=1)
    nib.save(nib.Nifti1Image((img[..., 0] * 1000).T.astype(np.float32), np.eye(4)),
             root / "flat.nii.gz")
    nib.save(nib.Nifti1Image(fg.T.astype(np.uint8), np.eye(4)), root / "flat_seg.nii.gz")
    return root


@pytest.fixture
def cuts_backend():
    """The real pipeline: encoder, condensation and spectral k-means must import."""
    for mod in ("napari_cuts.encoder", "napari_cuts.condensation", "napari_cuts.clustering"):
        importlib.import_module(mod)
    return True


# --------------------------------------------------------------------------- datasets

def test_load_retina_layout(retina_dir):
    ds = E.load_dataset(retina_dir)
    assert ds.layout == "retina"
    assert [s.name for s in ds.samples] == ["image3", "image7", "image11"]  # numeric order
    for s in ds.samples:
        assert s.image.shape == (48, 48, 3) and s.image.dtype == np.float32
        assert 0.0 <= s.image.min() and s.image.max() <= 1.0
        assert s.mask.dtype == bool and s.mask.shape == (48, 48) and s.mask.any()
    assert len(E.load_dataset(retina_dir, limit=2).samples) == 2


def test_load_nifti_layout_picks_mask_slices(nifti_dir):
    ds = E.load_dataset(nifti_dir)
    assert ds.layout == "nifti"
    names = [s.name for s in ds.samples]
    # largest-mask slice 4 and two neighbours each side, all holding mask; the 2D case once
    assert names == ["case_z002", "case_z003", "case_z004", "case_z005", "case_z006", "flat"]
    for s in ds.samples:
        assert s.mask.any() and s.mask.dtype == bool
        assert s.image.shape[:2] == s.mask.shape and s.image.shape[-1] == 1
        # the mask sits on the bright blob: intensities agree with the labels
        assert s.image[..., 0][s.mask].mean() > s.image[..., 0][~s.mask].mean() + 0.3


def test_bad_folders(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="neither evaluation layout"):
        E.load_dataset(tmp_path / "stuff")
    with pytest.raises(ReadError):
        E.load_dataset(tmp_path / "missing")
    with pytest.raises(CutsError):
        E.run_evaluation(tmp_path / "stuff", tmp_path / "out", methods=["slic"])


def test_bad_arguments(retina_dir, tmp_path):
    with pytest.raises(InputError, match="unknown method"):
        E.run_evaluation(retina_dir, tmp_path / "o", methods=["kmeans"])
    with pytest.raises(InputError):
        E.run_evaluation(retina_dir, tmp_path / "o", seeds=(1, 1), methods=["slic"])


def test_summarise_means_over_images_then_seeds():
    rec = lambda d: {**{k: d for k in METRICS}, "empty_pred": d == 0}  # noqa: E731
    per = {1: [rec(0.2), rec(0.4)], 2: [rec(0.6), rec(0.0)]}
    s = E.summarise(per)
    assert s["dice"] == pytest.approx(np.mean([0.3, 0.3]))
    sem1 = np.std([0.2, 0.4], ddof=1) / np.sqrt(2)
    sem2 = np.std([0.6, 0.0], ddof=1) / np.sqrt(2)
    assert s["dice_sem"] == pytest.approx((sem1 + sem2) / 2)
    assert s["dice_seed_sd"] == pytest.approx(0.0)
    assert s["n_empty"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- full runs

def test_baselines_only_run(retina_dir, tmp_path):
    out = tmp_path / "out"
    res = E.run_evaluation(retina_dir, out, seeds=(1, 2),
                           methods=["random", "watershed", "felzenszwalb", "slic"])
    assert set(res["methods"]) == {"random", "watershed", "felzenszwalb", "slic"}
    # deterministic baselines are the same for every seed; random is not
    assert res["methods"]["slic"]["dice_seed_sd"] == 0.0
    assert res["methods"]["random"]["dice_seed_sd"] > 0.0
    assert res["methods"]["slic"]["dice"] > res["methods"]["random"]["dice"] + 0.3
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 4 * 2 * 3


def test_full_run_on_retina_layout(retina_dir, tmp_path, cuts_backend):
    out = tmp_path / "out"
    calls = []
    res = E.run_evaluation(retina_dir, out, seeds=(1, 2), seconds=2,
                           progress=lambda d, t, m: calls.append((d, t, m)))
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    # the default rows: every method but the ablation rows (--ablation adds them)
    assert set(on_disk["methods"]) == set(E.METHODS) - set(E.ABLATION_METHODS)
    assert "cuts_click_refined" in on_disk["methods"]
    for name, r in on_disk["methods"].items():
        for k in METRICS:
            assert k in r and f"{k}_sem" in r, (name, k)
        assert 0.0 <= r["dice"] <= 1.0
    assert on_disk["n_images"] == 3 and on_disk["seeds"] == [1, 2]
    assert on_disk["seconds"] > 0
    m = on_disk["methods"]
    # the oracle level is at least as good as any single-map label hint
    assert m["cuts_best"]["dice"] >= m["cuts_persistent"]["dice"] - 1e-9
    md = (out / "results.md").read_text()
    for name in on_disk["methods"]:
        assert E.DISPLAY[name] in md
    assert "0.735" in md  # the paper's figure beside ours
    for fig in ("dice.png", "examples.png"):
        assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # progress: never decreasing, ends complete
    done = [c[0] for c in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1]


def test_run_on_nifti_layout(nifti_dir, tmp_path, cuts_backend):
    out = tmp_path / "out"
    # volumes="slices": the per-slice samples (a volume folder is scored in 3D by default,
    # tests/test_evaluation_3d.py)
    res = E.run_evaluation(nifti_dir, out, seeds=(3,), seconds=2,
                           methods=["slic", "cuts_click", "cuts_persistent"], limit=4,
                           volumes="slices")
    assert res["n_images"] == 4 and res["layout"] == "nifti"
    assert set(res["methods"]) == {"slic", "cuts_click", "cuts_persistent"}
    assert (out / "results.md").exists() and (out / "examples.png").exists()
    assert "paper Dice" in (out / "results.md").read_text()


def test_cancel_stops_and_writes_nothing(retina_dir, tmp_path):
    out = tmp_path / "out"
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled):
        E.run_evaluation(retina_dir, out, seeds=(1,), methods=["slic", "random"], cancel=cancel)
    assert not (out / "results.json").exists()


# --------------------------------------------------------------------------- ablation, refined click

def _np_label_hint_dice(lab, gt):
    lab = np.asarray(lab).astype(np.int64)
    m = lab == int(np.argmax(np.bincount(lab[gt])))
    return 2.0 * np.logical_and(m, gt).sum() / (m.sum() + gt.sum())


def _np_dice(m, gt):
    return 2.0 * np.logical_and(m, gt).sum() / (m.sum() + gt.sum())


def _np_innermost(gt):
    from scipy import ndimage

    d = ndimage.distance_transform_edt(np.pad(gt, 1))[1:-1, 1:-1]
    return np.unravel_index(int(np.argmax(d)), gt.shape)


def test_2d_ablation_rows_come_from_their_own_hierarchies(retina_dir, tmp_path, monkeypatch,
                                                          cuts_backend, capsys):
    """``evaluate --ablation`` on 2D images: image_only_* on a hierarchy of
    segment_image(use_embeddings=False), embedding_only_* on one of image_weight=0, the
    same oracle and click as the CUTS rows, recomputed here with numpy; and the refined
    click lies between the click and the best of its <= 7 lineage candidates."""
    from napari_cuts import pipeline
    from napari_cuts.cli import main

    calls = []
    real = pipeline.segment_image

    def spy(encoder, image, **kw):
        res = real(encoder, image, **kw)
        calls.append((np.asarray(image).copy(), dict(kw), res.hierarchy))
        return res

    monkeypatch.setattr(pipeline, "segment_image", spy)
    out = tmp_path / "abl"
    rc = main(["evaluate", "--data", str(retina_dir), "--out", str(out), "--seeds", "1",
               "--epochs", "1", "--ablation", "--methods", "cuts_best", "cuts_click",
               "cuts_click_refined", *E.ABLATION_METHODS])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {"cuts_best", "cuts_click", "cuts_click_refined",
                                   *E.ABLATION_METHODS}
    md = (out / "results.md").read_text()
    for name in E.ABLATION_METHODS:
        assert E.DISPLAY[name] in md
    rows = {(r["method"], r["image"]): r for r in csv.DictReader(open(out / "per_image.csv"))}
    ds = E.load_dataset(retina_dir)
    variant = {"cuts": lambda kw: "use_embeddings" not in kw and "image_weight" not in kw,
               "image_only": lambda kw: kw.get("use_embeddings") is False,
               "embedding_only": lambda kw: kw.get("image_weight") == 0}
    assert len(calls) == 3 * len(ds.samples)  # one hierarchy per image and variant
    per_method = {m: [] for m in res["methods"]}
    for smp in ds.samples:
        gt = smp.mask
        pt = _np_innermost(gt)
        for prefix, is_it in variant.items():
            (hier,) = [h for img, kw, h in calls
                       if is_it(kw) and img.shape == smp.image.shape and np.allclose(img, smp.image)]
            meta = hier.metadata
            assert meta["use_embeddings"] is (prefix != "image_only")
            if prefix == "embedding_only":
                assert meta["image_weight"] == 0
            best = max(_np_label_hint_dice(hier.labels(lv), gt) for lv in range(hier.n_levels))
            got = float(rows[(f"{prefix}_best", smp.name)]["dice"])
            assert got == pytest.approx(best, abs=1e-5), (prefix, smp.name)
            # the click: the tool's own answer at the innermost point (the 2D rule): the
            # 4-connected component (scipy) holding the click of the clicked cluster, at
            # the level chosen on the connected sizes
            from scipy import ndimage

            assert E.CLICK_CONNECTED
            lv_c = hier.click_level(pt, connected=True)
            assert int(rows[(f"{prefix}_click", smp.name)]["level"]) == lv_c
            lab = np.asarray(hier.labels(lv_c))
            comp, _ = ndimage.label(lab == lab[pt])
            click = comp == comp[pt]
            d_click = _np_dice(click, gt)
            got_click = float(rows[(f"{prefix}_click", smp.name)]["dice"])
            assert got_click == pytest.approx(d_click, abs=1e-5), (prefix, smp.name)
            per_method[f"{prefix}_best"].append(best)
            per_method[f"{prefix}_click"].append(d_click)
            if prefix != "cuts":
                continue
            # refined: >= the click, and the best of the click and its lineage candidates
            # (steps between sizes of the connected structure, its connected part)
            start = int(rows[("cuts_click", smp.name)]["level"])
            cands = {start}
            for step in (+1, -1):
                lv = start
                for _ in range(3):
                    lv = hier.step_level(pt, lv, step, connected=True)
                    cands.add(lv)
            assert len(cands) <= 7

            def _part(lv):
                lab = np.asarray(hier.labels(lv))
                comp, _ = ndimage.label(lab == lab[pt])
                return comp == comp[pt]

            cand_d = [_np_dice(_part(lv), gt) for lv in cands]
            refined = float(rows[("cuts_click_refined", smp.name)]["dice"])
            assert refined >= got_click - 1e-5  # per_image.csv: 6 significant digits
            assert refined <= max(cand_d + [d_click]) + 1e-6
            assert refined == pytest.approx(max(cand_d + [d_click]), abs=1e-5)
            per_method["cuts_click_refined"].append(refined)
            # the whole cluster (the box unticked): every part of the clicked cluster, at
            # the level chosen on the whole cluster's sizes
            lv = int(rows[("cuts_click_whole", smp.name)]["level"])
            assert lv == hier.click_level(pt, connected=False)
            lab = np.asarray(hier.labels(lv))
            d_whole = _np_dice(lab == lab[pt], gt)
            assert float(rows[("cuts_click_whole", smp.name)]["dice"]) == pytest.approx(
                d_whole, abs=1e-5)
            assert d_whole <= 1.0 and np.count_nonzero(lab == lab[pt]) >= np.count_nonzero(
                _part(lv))
            per_method["cuts_click_whole"].append(d_whole)
    for m, vals in per_method.items():
        assert res["methods"][m]["dice"] == pytest.approx(np.mean(vals), abs=1e-6), m


def test_refine_candidates_walk_the_lineage():
    """Candidates: the start level, then up to 3 real merges up and 3 strictly smaller
    structures down, each a structure holding the click, no repeats."""
    from napari_cuts.hierarchy import Hierarchy

    # a 1 x 8 strip merged pairwise: 8 -> 4 -> 2 -> 1 clusters, with repeated levels
    lab = np.array([
        [[0, 1, 2, 3, 4, 5, 6, 7]],
        [[0, 1, 2, 3, 4, 5, 6, 7]],
        [[0, 0, 1, 1, 2, 2, 3, 3]],
        [[0, 0, 0, 0, 1, 1, 1, 1]],
        [[0, 0, 0, 0, 1, 1, 1, 1]],
        [[0, 0, 0, 0, 0, 0, 0, 0]],
    ])
    h = Hierarchy.from_labels(lab)
    pt = (0, 1)
    levels = E.refine_candidates(h, pt, 2)
    assert levels[0] == 2 and len(set(levels)) == len(levels)
    sizes = [int((h.labels(lv) == h.labels(lv)[pt]).sum()) for lv in levels]
    assert sizes[0] == 2 and sorted(sizes[1:]) == [1, 4, 8]
    gt = np.zeros((1, 8), bool)
    gt[0, :4] = True
    start = h.labels(2) == h.labels(2)[pt]
    m, info = E.refine_click(h, pt, gt, start, 2)
    assert m.sum() == 4 and info["setting"].startswith("step +1")
