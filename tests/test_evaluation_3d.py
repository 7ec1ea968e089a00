"""`napari-cuts evaluate` on volumes: Decathlon and *_seg.nii.gz folders scored in 3D.

The synthetic volumes are built so that the mean of per-slice Dice differs from the
3D Dice: the structure is a bright blob (label 1) plus a part with the background's
intensity (label 2) on slices of its own, which no method can see. The test computes
the expected 3D Dice itself, with numpy, from the hierarchies the run saved.
"""

import csv
import json

import numpy as np
import pytest

from napari_cuts import evaluation as E
from napari_cuts.cli import main
from napari_cuts.errors import InputError
from napari_cuts.hierarchy import Hierarchy

SHAPE = (12, 40, 40)
SPACING = (2.0, 0.8, 0.8)  # (sz, sy, sx) mm


def _case(seed: int, float_labels: bool):
    """(image (Z, Y, X), labels (Z, Y, X)): label 1 a bright ellipsoid on slices 2..8,
    label 2 an invisible box (background intensity) on slices 9..10."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    cy, cx = 20 + 2 * seed, 19 - seed
    blob = ((zz - 5) / 3.5) ** 2 + ((yy - cy) / 9.0) ** 2 + ((xx - cx) / 8.0) ** 2 < 1.0
    box = (zz >= 9) & (zz <= 10) & (abs(yy - cy) < 6) & (abs(xx - cx) < 6)
    img = 0.2 + 0.05 * np.sin(xx / 3.0) + rng.normal(0, 0.02, SHAPE)
    img[blob] = 0.8 + rng.normal(0, 0.02, int(blob.sum()))
    lab = np.zeros(SHAPE, dtype=np.float32 if float_labels else np.uint8)
    lab[blob] = 1
    lab[box] = 2
    if float_labels:  # stored as float with rounding noise, as some Decathlon cases are
        lab[blob] = np.float32(1.0000001)
        lab[box] = np.float32(2.0000002)
    if seed % 2:
        img = (img * 1000.0).astype(np.float32)  # another intensity scale: float32
    else:
        img = np.clip(img * 255, 0, 255).astype(np.uint8)  # uint8 like some crops
    return img, lab


def _save(path, arr):
    import nibabel as nib

    affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])  # voxel (x, y, z)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr.T), affine), str(path))


@pytest.fixture
def cases():
    return {f"case_{i:03d}": _case(i, float_labels=(i == 2)) for i in (1, 2)}


@pytest.fixture
def decathlon_dir(tmp_path, cases):
    root = tmp_path / "Task99_Synthetic"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name, (img, lab) in cases.items():
        _save(root / "imagesTr" / f"{name}.nii.gz", img)
        _save(root / "labelsTr" / f"{name}.nii.gz", lab)
    (root / "imagesTr" / "._case_001.nii.gz").write_bytes(b"macOS resource fork")
    return root


@pytest.fixture
def seg_dir(tmp_path, cases):
    root = tmp_path / "nifti_volumes"
    root.mkdir()
    for name, (img, lab) in cases.items():
        _save(root / f"{name}.nii.gz", img)
        _save(root / f"{name}_seg.nii.gz", lab)
    return root


# ------------------------------------------------------------------ numpy references

def _gt(lab, values):
    return np.isin(np.rint(lab.astype(np.float64)), values)


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _best_level_mask(hier, gt):
    """Label hint (cluster most frequent under gt, lowest id on ties) at every level,
    the one with the best 3D Dice."""
    best, best_d = None, -1.0
    for lv in range(hier.n_levels):
        lab = np.asarray(hier.labels(lv)).astype(np.int64)
        m = lab == int(np.argmax(np.bincount(lab[gt])))
        d = _dice(m, gt)
        if d > best_d:
            best, best_d = m, d
    return best, best_d


def _slice_mean_dice(pred, gt):
    return float(np.mean([_dice(pred[z], gt[z]) for z in range(gt.shape[0]) if gt[z].any()]))


def _rows(out, method):
    return {r["case"]: r for r in csv.DictReader(open(out / "per_case.csv"))
            if r["method"] == method}


def _check_best_is_3d(out, cases, values, res):
    rows = _rows(out, "cuts_best")
    assert set(rows) == set(cases)
    expected = []
    for name, (_, lab) in cases.items():
        gt = _gt(lab, values)
        assert int(rows[name]["gt_voxels"]) == int(gt.sum())
        hier = Hierarchy.load(out / "hierarchies" / f"{name}_seed1.npz")
        assert hier.labels(0).shape == SHAPE
        mask, d3 = _best_level_mask(hier, gt)
        # the synthetic structure makes per-slice and 3D Dice disagree
        assert abs(_slice_mean_dice(mask, gt) - d3) > 0.05
        assert float(rows[name]["dice"]) == pytest.approx(d3, abs=1e-5)
        assert int(rows[name]["pred_voxels"]) == int(mask.sum())
        expected.append(d3)
    assert res["methods"]["cuts_best"]["dice"] == pytest.approx(np.mean(expected), abs=1e-9)


# ----------------------------------------------------------------------------- tests

def test_decathlon_python_entry_scores_in_3d(decathlon_dir, tmp_path, cases):
    out = tmp_path / "out"
    res = E.run_evaluation(decathlon_dir, out, seeds=(1,), epochs=1, labels=[1, 2],
                           methods=["cuts_best", "cuts_click", "cuts_persistent"],
                           save_hierarchies=True)
    assert res["layout"] == "decathlon" and res["scoring"] == "3d"
    assert res["n_images"] == 2 and res["cases"] == sorted(cases)
    assert res["label_values"] == [1, 2] and res["units"]["hausdorff"] == "mm"
    assert set(res["methods"]) == {"cuts_best", "cuts_click", "cuts_persistent"}
    _check_best_is_3d(out, cases, [1, 2], res)
    m = res["methods"]
    assert m["cuts_best"]["dice"] >= m["cuts_persistent"]["dice"] - 1e-9
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    md = (out / "results.md").read_text()
    assert "in mm" in md and "never a mean over slices" in md and "cuts_click" in md
    for f in ("dice.png", "examples.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_decathlon_cli_with_a_label_subset(decathlon_dir, tmp_path, cases, capsys):
    out = tmp_path / "cli"
    rc = main(["evaluate", "--data", str(decathlon_dir), "--out", str(out), "--seeds", "1",
               "--epochs", "1", "--label", "1", "--methods", "cuts_best", "slic3d",
               "--save-hierarchies"])
    assert rc == 0, capsys.readouterr().err
    assert "3D" in capsys.readouterr().out  # results.md is printed
    res = json.loads((out / "results.json").read_text())
    assert res["label_values"] == [1]
    # --label 1 leaves out the invisible part: a different, smaller ground truth
    for name, (_, lab) in cases.items():
        assert _gt(lab, [1]).sum() < _gt(lab, [1, 2]).sum()
    _check_best_is_3d_label1 = {n: _gt(lab, [1]) for n, (_, lab) in cases.items()}
    rows = _rows(out, "cuts_best")
    for name, gt in _check_best_is_3d_label1.items():
        assert int(rows[name]["gt_voxels"]) == int(gt.sum())
        hier = Hierarchy.load(out / "hierarchies" / f"{name}_seed1.npz")
        _, d3 = _best_level_mask(hier, gt)
        assert float(rows[name]["dice"]) == pytest.approx(d3, abs=1e-5)
    slic_rows = _rows(out, "slic3d")
    assert set(slic_rows) == set(cases)
    assert all("n_segments=" in r["setting"] for r in slic_rows.values())
    # the bright blob alone is an easy structure for supervoxels
    assert res["methods"]["slic3d"]["dice"] > 0.5


def test_seg_folder_is_scored_in_3d(seg_dir, tmp_path, cases):
    out = tmp_path / "seg"
    res = E.run_evaluation(seg_dir, out, seeds=(1,), epochs=1, methods=["cuts_best"],
                           save_hierarchies=True)
    assert res["layout"] == "nifti" and res["scoring"] == "3d" and res["n_images"] == 2
    assert res["label_values"] is None  # default: every non-zero label
    _check_best_is_3d(out, cases, [1, 2], res)


def test_load_volumes_labels_split_and_cases(decathlon_dir, cases):
    vs = E.load_volumes(decathlon_dir)
    assert vs.layout == "decathlon" and [v.name for v in vs.volumes] == sorted(cases)
    for v in vs.volumes:
        img, lab = cases[v.name]
        assert v.image.shape == SHAPE and v.image.dtype == np.float32
        assert 0.0 <= v.image.min() and v.image.max() <= 1.0
        assert v.spacing == pytest.approx(SPACING)
        np.testing.assert_array_equal(v.mask, _gt(lab, [1, 2]))
    one = E.load_volumes(decathlon_dir, labels=[2])
    for v in one.volumes:
        np.testing.assert_array_equal(v.mask, _gt(cases[v.name][1], [2]))
    assert [v.name for v in E.load_volumes(decathlon_dir, split="dev").volumes] == ["case_001"]
    assert [v.name for v in E.load_volumes(decathlon_dir, split="report").volumes] == ["case_002"]
    assert [v.name for v in E.load_volumes(decathlon_dir, cases=["case_002.nii.gz"]).volumes] \
        == ["case_002"]
    with pytest.raises(InputError, match="not found"):
        E.load_volumes(decathlon_dir, cases=["case_009"])
    with pytest.raises(InputError, match="empty"):
        E.load_volumes(decathlon_dir, labels=[7])


def test_select_cases_and_case_lists(tmp_path):
    names = [f"hippocampus_{i:03d}" for i in (40, 3, 17, 1, 8)]
    assert E.select_cases(names, split="dev") == ["hippocampus_001", "hippocampus_003",
                                                  "hippocampus_008"]
    assert E.select_cases(names, split="report") == ["hippocampus_017", "hippocampus_040"]
    assert E.select_cases(names, limit=2) == ["hippocampus_001", "hippocampus_003"]
    f = tmp_path / "cases.txt"
    f.write_text("# report cases\nhippocampus_040.nii.gz\n\nhippocampus_017  # two\n")
    assert E.select_cases(names, cases=E.read_case_list(f)) == ["hippocampus_017",
                                                                "hippocampus_040"]
    with pytest.raises(InputError):
        E.select_cases(names, split="test")


def test_hausdorff_3d_in_mm_on_surfaces():
    a = np.zeros((10, 20, 20), bool)
    b = np.zeros_like(a)
    a[2:5, 5:10, 5:10] = True
    b[2:5, 5:10, 8:13] = True  # shifted 3 voxels along x
    assert E.hausdorff_3d(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert E.hausdorff_3d(a, b, (3.0, 1.0, 0.5)) == pytest.approx(1.5)
    c = np.zeros_like(a)
    c[7:9, 5:10, 5:10] = True  # shifted along z (slice axis): 5 slices of 2 mm
    assert E.hausdorff_3d(a, c, (2.0, 1.0, 1.0)) == pytest.approx(10.0)
    assert E.hausdorff_3d(a, a, (2.0, 1.0, 1.0)) == 0.0
    empty = np.zeros_like(a)
    diag = np.sqrt((10 * 2.0) ** 2 + 20.0**2 + 20.0**2)
    assert E.hausdorff_3d(empty, a, (2.0, 1.0, 1.0)) == pytest.approx(diag)
    s = E.score_3d(b, a, (1.0, 1.0, 1.0))
    assert s["dice"] == pytest.approx(2 * 2 * 5 * 3 / (2 * 75))
    assert s["hd95"] <= s["hausdorff"] and not s["empty_pred"]


def test_3d_argument_errors(decathlon_dir, tmp_path):
    with pytest.raises(InputError, match="for volumes"):
        E.run_evaluation(decathlon_dir, tmp_path / "o", methods=["slic"])
    assert main(["evaluate", "--data", str(decathlon_dir), "--out", str(tmp_path / "o2"),
                 "--methods", "slic3d", "--cases", "nosuch"]) == 2


def test_3d_refined_click_and_embedding_only_rows(decathlon_dir, tmp_path, cases):
    """cuts_click_refined: >= cuts_click on every case and the best of the click and its
    <= 6 lineage steps; embedding_only_best on the image_weight=0 hierarchy."""
    out = tmp_path / "refined"
    res = E.run_evaluation(decathlon_dir, out, seeds=(1,), epochs=1,
                           methods=["cuts_click", "cuts_click_refined", "embedding_only_best",
                                    "embedding_only_click"], save_hierarchies=True)
    assert set(res["methods"]) == {"cuts_click", "cuts_click_refined", "embedding_only_best",
                                   "embedding_only_click"}
    assert "cuts_click_refined" in (out / "results.md").read_text()
    click, refined = _rows(out, "cuts_click"), _rows(out, "cuts_click_refined")
    emb_best = _rows(out, "embedding_only_best")
    for name, (_, lab) in cases.items():
        gt = _gt(lab, [1, 2])
        hier = Hierarchy.load(out / "hierarchies" / f"{name}_seed1.npz")
        pt = E.innermost_point(gt)
        start = hier.click_level(pt)  # the tool's own answer on volumes
        assert int(click[name]["level"]) == start
        d_click = _dice(hier.labels(start) == hier.labels(start)[pt], gt)
        assert float(click[name]["dice"]) == pytest.approx(d_click, abs=1e-5)
        cands = {start}
        for step in (+1, -1):
            lv = start
            for _ in range(3):
                lv = hier.step_level(pt, lv, step)
                cands.add(lv)
        best_cand = max(_dice(hier.labels(lv) == hier.labels(lv)[pt], gt) for lv in cands)
        d_ref = float(refined[name]["dice"])
        assert d_ref >= d_click - 1e-5  # per_case.csv keeps 6 significant digits
        assert d_ref == pytest.approx(best_cand, abs=1e-5)
        h_emb = Hierarchy.load(out / "hierarchies" / f"{name}_seed1_embedding_only.npz")
        assert h_emb.metadata["image_weight"] == 0 and h_emb.metadata["use_embeddings"]
        _, d_emb = _best_level_mask(h_emb, gt)
        assert float(emb_best[name]["dice"]) == pytest.approx(d_emb, abs=1e-5)
