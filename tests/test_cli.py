"""The napari-cuts command end to end, on tiny images with tiny training budgets."""

import json
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest

from napari_cuts.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("segment", "evaluate", "bench"):
        assert name in out


def test_segment_writes_the_contract_outputs(tmp_path, small_fundus, capsys):
    img = tmp_path / "fundus.png"
    iio.imwrite(img, small_fundus)
    out = tmp_path / "out"
    assert main(["segment", str(img), "--out", str(out), "--seconds", "2", "--seed", "3"]) == 0
    with np.load(out / "hierarchy.npz") as z:
        labels, counts = z["labels"], z["n_clusters"]
    assert labels.shape[1:] == (64, 64) and labels.shape[0] == counts.shape[0]
    assert np.all(np.diff(counts) <= 0)
    # the stored levels are the cluster counts they claim
    assert [len(np.unique(lv)) for lv in labels] == list(counts)
    for name in ("levels.png", "persistent.png", "persistent.npy", "encoder.pt", "run.json"):
        assert (out / name).exists(), name
    assert np.load(out / "persistent.npy").shape == (64, 64)
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 3 and run["trained"] is True
    # the saved encoder is reused with --weights and gives the same hierarchy
    out2 = tmp_path / "out2"
    assert main(["segment", str(img), "--out", str(out2), "--weights", str(out / "encoder.pt"),
                 "--seed", "3"]) == 0
    with np.load(out2 / "hierarchy.npz") as z:
        np.testing.assert_array_equal(z["labels"], labels)
    assert not (out2 / "encoder.pt").exists()


def test_segment_nifti_keeps_geometry(tmp_path):
    out = tmp_path / "out"
    src = REPO / "sample_data" / "mri_slice.nii.gz"
    assert main(["segment", str(src), "--out", str(out), "--seconds", "2"]) == 0
    a, b = nib.load(src), nib.load(out / "persistent.nii.gz")
    np.testing.assert_allclose(b.affine, a.affine)
    assert b.shape[:2] == a.shape[:2]
    assert b.get_data_dtype().kind == "u"


@pytest.mark.parametrize("case", ["missing", "constant", "text", "wrong_weights", "unwritable"])
def test_bad_input_is_one_clear_line(tmp_path, capsys, case, small_fundus):
    img = tmp_path / "img.png"
    iio.imwrite(img, small_fundus)
    out = tmp_path / "out"
    args = ["segment", str(img), "--out", str(out), "--seconds", "1"]
    if case == "missing":
        args[1] = str(tmp_path / "nope.png")
        word = "nope.png"
    elif case == "constant":
        iio.imwrite(img, np.full((40, 40), 9, np.uint8))
        word = "constant"
    elif case == "text":
        bad = tmp_path / "notes.txt"
        bad.write_text("hello")
        args[1] = str(bad)
        word = "notes.txt"
    elif case == "wrong_weights":
        grey = tmp_path / "grey.png"
        iio.imwrite(grey, small_fundus[..., 0])
        assert main(["segment", str(grey), "--out", str(tmp_path / "g"), "--seconds", "1"]) == 0
        args = ["segment", str(img), "--out", str(out), "--weights", str(tmp_path / "g" / "encoder.pt")]
        word = "channel"
    else:
        (tmp_path / "afile").write_text("x")
        args[3] = str(tmp_path / "afile" / "out")
        word = "afile"
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("napari-cuts: error:")
    assert word in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (out / "hierarchy.npz").exists()


def test_bench_unknown_name(capsys):
    assert main(["bench", "nosuch"]) == 2
    assert "no benchmark named" in capsys.readouterr().err
