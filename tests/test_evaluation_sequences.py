"""`napari-cuts evaluate` on cases of several sequences (issue 18): `case_<seq>.nii.gz`
files with `case_seg.nii.gz` form one case, one channel per sequence, and `--ablation`
adds each sequence alone (`seq_<name>_best`, `seq_<name>_click`, its own encoder).

The synthetic cases make the target distinct only in the combination of the two
sequences: three adjacent boxes A | B | C along x, A bright in t1 only, B (the target)
bright in both, C bright in flair only. In t1 alone B and A are one uniform bright
region; in flair alone B and C are. The test recomputes the 3D Dice of the rows from the
hierarchies the run saved, with numpy.
"""

import csv
import json
from typing import Optional

import nibabel as nib
import numpy as np
import pytest

from napari_cuts import evaluation as E
from napari_cuts.cli import main
from napari_cuts.errors import InputError
from napari_cuts.hierarchy import Hierarchy

SHAPE = (12, 24, 24)  # (Z, Y, X)
ZOOMS = (0.9, 0.9, 2.0)  # NIfTI voxel (x, y, z) in mm
ORIGIN = (-10.0, 12.0, 4.0)


def _affine(shift_mm=0.0, zooms=ZOOMS):
    a = np.diag(list(zooms) + [1.0])
    a[:3, 3] = ORIGIN
    a[0, 3] += shift_mm
    return a


def _save(path, zyx, affine=None):
    """Save a (Z, Y, X[, C]) array as NIfTI (voxel order x, y, z[, c])."""
    arr = np.asarray(zyx)
    vox = arr.transpose(2, 1, 0) if arr.ndim == 3 else arr.transpose(2, 1, 0, 3)
    img = nib.Nifti1Image(np.ascontiguousarray(vox), _affine() if affine is None else affine)
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    nib.save(img, str(path))
    return path


def combination_case(seed: int, width: int = 6, side: Optional[int] = None):
    """``(t1, flair, labels)``, each ``(Z, Y, X)``: labels 1 = A, 2 = B (the target),
    3 = C, three adjacent boxes along x on slices 2..9, ``2 * width`` voxels along y;
    B is ``width`` wide, A and C ``side`` (default ``width``); t1 bright on A and B,
    flair bright on B and C, Gaussian noise everywhere. ``width`` 6 gives
    :data:`SHAPE`; ``benchmarks/two_sequences.py`` writes wider ones (regions wider
    than the encoder's receptive field, and A, C twice as wide as B, so that what one
    sequence alone can see, B with its look-alike, scores at most 0.5)."""
    side = width if side is None else int(side)
    rng = np.random.default_rng(seed)
    shape = (SHAPE[0], 2 * width + 12, width + 2 * side + 6)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    y0 = 6 + seed % 3
    band = (zz >= 2) & (zz <= 9) & (yy >= y0) & (yy < y0 + 2 * width)
    x0 = 3 + seed % 2
    lab = np.zeros(shape, np.uint8)
    for value, lo, wd in ((1, x0, side), (2, x0 + side, width), (3, x0 + side + width, side)):
        lab[band & (xx >= lo) & (xx < lo + wd)] = value
    t1 = np.array([0.2, 0.9, 0.9, 0.2], np.float32)[lab] + rng.normal(0, 0.03, shape)
    flair = np.array([0.2, 0.2, 0.9, 0.9], np.float32)[lab] + rng.normal(0, 0.03, shape)
    return (1000 * t1).astype(np.float32), (800 * flair).astype(np.float32), lab


def _write_cases(root, seeds=(1, 2), width: int = 6, side: Optional[int] = None):
    root.mkdir(parents=True, exist_ok=True)
    cases = {}
    for s in seeds:
        name = f"sub{s:02d}"
        t1, flair, lab = combination_case(s, width, side)
        _save(root / f"{name}_t1.nii.gz", t1)
        _save(root / f"{name}_flair.nii.gz", flair)
        _save(root / f"{name}_seg.nii.gz", (lab == 2).astype(np.uint8))
        cases[name] = (t1, flair, lab == 2)
    return cases


@pytest.fixture
def seq_dir(tmp_path):
    root = tmp_path / "two_sequences"
    return root, _write_cases(root)


# ------------------------------------------------------------------ numpy references

def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _best_level(hier, gt):
    """Label hint (the cluster most frequent under gt) at every level; the best 3D Dice."""
    best = -1.0
    for lv in range(hier.n_levels):
        lab = np.asarray(hier.labels(lv)).astype(np.int64)
        d = _dice(lab == int(np.argmax(np.bincount(lab[gt]))), gt)
        best = max(best, d)
    return best


def _rows(out, method):
    return {r["case"]: r for r in csv.DictReader(open(out / "per_case.csv"))
            if r["method"] == method}


def _per_channel(hier):
    enc = hier.metadata["encoder"]
    return enc["in_channels"] // (2 * int(enc.get("context_slices", 0) or 0) + 1)


# ----------------------------------------------------------------------------- tests

def test_sequence_files_form_one_case_in_sorted_order(seq_dir):
    root, cases = seq_dir
    found, notes = E.nifti_cases(root)
    assert [c.name for c in found] == sorted(cases) and notes == []
    assert all(c.sequences == ["flair", "t1"] for c in found)
    vs = E.load_volumes(root)
    assert vs.layout == "nifti" and vs.sequences == ["flair", "t1"]
    assert vs.sequence_source == "files"
    for v in vs.volumes:
        t1, flair, gt = cases[v.name]
        assert v.image.shape == SHAPE + (2,) and v.sequences == ["flair", "t1"]
        np.testing.assert_allclose(v.image[..., 0], E.robust_unit(flair), atol=1e-6)
        np.testing.assert_allclose(v.image[..., 1], E.robust_unit(t1), atol=1e-6)
        np.testing.assert_array_equal(v.mask, gt)
        assert v.spacing == pytest.approx((ZOOMS[2], ZOOMS[1], ZOOMS[0]))


def test_prefix_with_its_own_mask_is_a_single_file_case(tmp_path):
    """``x_t1.nii.gz`` with ``x_t1_seg.nii.gz`` is the single-file case ``x_t1``;
    ``y_t1`` / ``y_flair`` with only ``y_seg`` are two sequences of ``y``; a file with
    ``case.nii.gz`` beside it, or no mask, is left out with a note."""
    t1, flair, gt = combination_case(1)
    seg = gt.astype(np.uint8)
    for name, arr in (("x_t1", t1), ("x_t1_seg", seg), ("y_t1", t1), ("y_flair", flair),
                      ("y_seg", seg), ("z", t1), ("z_t2", flair), ("z_seg", seg),
                      ("stray", t1)):
        _save(tmp_path / f"{name}.nii.gz", arr)
    found, notes = E.nifti_cases(tmp_path)
    by = {c.name: c for c in found}
    assert sorted(by) == ["x_t1", "y", "z"]
    assert by["x_t1"].sequences is None and [p.name for p in by["x_t1"].images] == ["x_t1.nii.gz"]
    assert by["y"].sequences == ["flair", "t1"]
    assert [p.name for p in by["y"].images] == ["y_flair.nii.gz", "y_t1.nii.gz"]
    assert by["z"].sequences is None and [p.name for p in by["z"].images] == ["z.nii.gz"]
    assert any("z_t2.nii.gz" in n and "z.nii.gz" in n for n in notes)
    assert any("stray.nii.gz" in n for n in notes)
    # one-file cases and two-sequence cases cannot share one encoder
    with pytest.raises(InputError, match="same sequences"):
        E.load_volumes(tmp_path)
    # the single-file cases alone are scored as before
    vs = E.load_volumes(tmp_path, cases=["x_t1", "z"])
    assert [v.image.shape for v in vs.volumes] == [SHAPE, SHAPE] and vs.sequences is None


def test_evaluate_ablation_rows_per_sequence(seq_dir, tmp_path, capsys):
    root, cases = seq_dir
    out = tmp_path / "out"
    rc = main(["evaluate", "--data", str(root), "--out", str(out), "--seeds", "1",
               "--epochs", "1", "--ablation", "--save-hierarchies"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    seq_rows = ["seq_flair_best", "seq_flair_click", "seq_t1_best", "seq_t1_click"]
    assert list(res["methods"]) == [*E.METHODS_3D, *seq_rows]
    assert res["sequences"] == {"names": ["flair", "t1"], "keys": ["flair", "t1"],
                                "source": "files"}
    md = (out / "results.md").read_text()
    for m in ["cuts_best", "cuts_click", *seq_rows]:
        assert f"| `{m}`" in md
    assert "sequence t1 alone" in md and "flair, t1" in md
    # what each encoder read, as the encoders recorded it
    runs = res["runs"]
    assert runs["all"]["channels"] == 2 and runs["all"]["sequences"] == ["flair", "t1"]
    for key, ch in (("flair", 0), ("t1", 1)):
        r = runs[f"seq_{key}"]
        assert r["channels"] == 1 and r["sequences"] == [key] and r["channel"] == ch
        assert r["encoder_in_channels"] == 2 * r["context_slices"] + 1
        assert r["rows"] == [f"seq_{key}_best", f"seq_{key}_click"]
        assert r["steps"]["1"] >= 1 and r["train_seconds_used"]["1"] > 0
    for method in ["cuts_best", "cuts_click", *seq_rows]:
        per = _rows(out, method)
        assert set(per) == set(cases)
        assert res["methods"][method]["dice"] == pytest.approx(
            np.mean([float(r["dice"]) for r in per.values()]), abs=1e-5)
    for name, (_, _, gt) in cases.items():
        pt = E.innermost_point(gt)
        h_all = Hierarchy.load(out / "hierarchies" / f"{name}_seed1.npz")
        assert _per_channel(h_all) == 2
        assert float(_rows(out, "cuts_best")[name]["dice"]) == pytest.approx(
            _best_level(h_all, gt), abs=1e-5)
        for key in ("flair", "t1"):
            h = Hierarchy.load(out / "hierarchies" / f"{name}_seed1_seq_{key}.npz")
            assert _per_channel(h) == 1  # trained and run on that one sequence
            assert h.labels(0).shape == SHAPE
            best = _rows(out, f"seq_{key}_best")[name]
            assert float(best["dice"]) == pytest.approx(_best_level(h, gt), abs=1e-5)
            click = _rows(out, f"seq_{key}_click")[name]
            lv = int(click["level"])
            lab = np.asarray(h.labels(lv))
            pred = lab == lab[pt]
            assert int(click["pred_voxels"]) == int(pred.sum())
            assert float(click["dice"]) == pytest.approx(_dice(pred, gt), abs=1e-5)


def test_mismatched_grids_name_both_files(tmp_path, capsys):
    root = tmp_path / "bad"
    cases = _write_cases(root, seeds=(1,))
    t1, flair, gt = cases["sub01"]
    _save(root / "sub01_flair.nii.gz", flair, _affine(shift_mm=0.005))  # within 0.01 mm
    assert E.load_volumes(root).sequences == ["flair", "t1"]
    _save(root / "sub01_flair.nii.gz", flair, _affine(shift_mm=0.5))
    with pytest.raises(InputError, match=r"sub01_flair\.nii\.gz.*sub01_t1\.nii\.gz.*0\.5 mm"):
        E.load_volumes(root)
    rc = main(["evaluate", "--data", str(root), "--out", str(tmp_path / "o"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "sub01_flair.nii.gz" in err and "sub01_t1.nii.gz" in err and "one grid" in err
    _save(root / "sub01_flair.nii.gz", flair[:, :, :20])  # another shape
    with pytest.raises(InputError, match=r"sub01_flair\.nii\.gz.*sub01_t1\.nii\.gz.*shapes differ"):
        E.load_volumes(root)
    _save(root / "sub01_flair.nii.gz", flair)
    _save(root / "sub01_seg.nii.gz", gt.astype(np.uint8), _affine(shift_mm=2.0))
    with pytest.raises(InputError, match=r"sub01_seg\.nii\.gz and sub01_flair\.nii\.gz"):
        E.load_volumes(root)
    assert not (tmp_path / "o").exists()  # nothing half written


def test_cases_with_other_sequences_are_named(tmp_path):
    root = tmp_path / "mixed"
    cases = _write_cases(root)
    (root / "sub02_flair.nii.gz").rename(root / "sub02_t2.nii.gz")
    with pytest.raises(InputError, match=r"sub02 has the sequences t1, t2 but sub01 has flair, t1"):
        E.load_volumes(root)
    assert [v.name for v in E.load_volumes(root, cases=["sub01"]).volumes] == ["sub01"]
    assert set(cases) == {"sub01", "sub02"}


def test_decathlon_4d_names_from_dataset_json_or_index(tmp_path):
    root = tmp_path / "Task98"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for s in (1, 2):
        t1, flair, gt = combination_case(s)
        _save(root / "imagesTr" / f"case_{s}.nii.gz", np.stack([flair, t1], axis=-1))
        _save(root / "labelsTr" / f"case_{s}.nii.gz", gt.astype(np.uint8))
    vs = E.load_volumes(root)
    assert vs.sequences == ["0", "1"] and vs.sequence_source == "index"
    assert vs.volumes[0].image.shape == SHAPE + (2,)
    (root / "dataset.json").write_text(json.dumps(
        {"name": "synthetic", "modality": {"1": "T1w", "0": "FLAIR"}}))
    vs = E.load_volumes(root)
    assert vs.sequences == ["FLAIR", "T1w"] and vs.sequence_source == "dataset.json"
    assert E.sequence_methods(E.sequence_keys(vs.sequences)) == [
        "seq_FLAIR_best", "seq_FLAIR_click", "seq_T1w_best", "seq_T1w_click"]
    assert E.sequence_keys(["T1 post", "T1-post", "flair"]) == ["0", "1", "flair"]
    with pytest.raises(InputError, match="seq_FLAIR_best"):
        E.run_evaluation(root, tmp_path / "o", seeds=(1,), epochs=1, methods=["seq_T2_best"])
    assert not (tmp_path / "o").exists()


def test_two_sequences_benchmark_writes_wider_cases(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "two_sequences.py"
    spec = importlib.util.spec_from_file_location("two_sequences", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(tmp_path / "w8"), "--width", "8"]) == 0
    for case in ("sub01", "sub02"):
        seg = np.asarray(nib.load(str(tmp_path / "w8" / f"{case}_seg.nii.gz")).dataobj)
        t1 = np.asarray(nib.load(str(tmp_path / "w8" / f"{case}_t1.nii.gz")).dataobj)
        fl = np.asarray(nib.load(str(tmp_path / "w8" / f"{case}_flair.nii.gz")).dataobj)
        # stored x, y, z: B is 8 wide (x), 16 high (y), on 8 slices; A and C 16 wide
        assert seg.shape == t1.shape == (8 + 2 * 16 + 6, 2 * 8 + 12, SHAPE[0])
        assert int(seg.sum()) == 8 * 16 * 8
        xs = np.flatnonzero(seg.any(axis=(1, 2)))
        assert xs.size == 8 and np.all(np.diff(xs) == 1)
        # what one sequence alone shows: B with A (t1) or with C (flair), 3x B's size,
        # so their union scores 0.5 Dice
        for img in (t1, fl):
            bright = img > 0.5 * img.max()
            assert int(bright.sum()) == 3 * int(seg.sum())
            assert 2 * (bright & (seg > 0)).sum() / (bright.sum() + seg.sum()) == 0.5
    # the default width is the test's own geometry at width 6
    t1, _, lab = combination_case(1)
    assert t1.shape == SHAPE and int((lab == 2).sum()) == 6 * 12 * 8
    assert mod.main([str(tmp_path / "bad"), "--width", "x"]) == 2
    assert "whole number" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
