"""benchmarks/bench_volume.py runs end to end (on a tiny volume) and is wired into `bench`."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from napari_cuts.cli import main

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_volume.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_volume_under_test", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_volume_on_a_tiny_volume(tmp_path):
    import nibabel as nib

    zz, yy, xx = np.mgrid[:24, :40, :40]
    blob = ((zz - 12) / 6.0) ** 2 + ((yy - 20) / 9.0) ** 2 + ((xx - 18) / 8.0) ** 2 < 1
    rng = np.random.default_rng(0)
    img = (0.3 + 0.05 * np.sin(yy / 4.0) + rng.normal(0, 0.02, blob.shape)).astype(np.float32)
    img[blob] = 0.9
    nib.save(nib.Nifti1Image(img.T.copy(), np.eye(4)), str(tmp_path / "v.nii.gz"))
    nib.save(nib.Nifti1Image(blob.astype(np.uint8).T.copy(), np.eye(4)), str(tmp_path / "s.nii.gz"))
    res = _load().run(quick=True, volume=tmp_path / "v.nii.gz", seg=tmp_path / "s.nii.gz",
                      seconds=1, timeout=600)
    assert "error" not in res, res
    # the given budget reached the child process
    assert res["shape"] == [24, 40, 40] and res["train_budget_seconds"] == 1.0
    # every stage was timed (a positive number, not NaN), the stages run one after the
    # other within the total, and the segmentation's own stages within it
    s = res["seconds"]
    stages = ("read", "train", "segment", "write_hierarchy", "persistent", "write_persistent")
    for stage in stages + ("grid", "embed", "condense"):
        assert 0.0 < s[stage] < s["total"], (stage, s)
    assert sum(s[k] for k in stages) <= s["total"], s
    assert s["grid"] + s["embed"] + s["condense"] <= s["segment"], s
    assert res["peak_mb"] >= res["baseline_mb"] > 0
    assert res["slider_ms"]["n"] == 3 * res["n_levels"]
    # 15 replace and 15 add clicks timed; the median no more than the slowest
    assert res["click_ms"]["n"] == 30
    assert 0.0 < res["click_ms"]["replace_median"] <= res["click_ms"]["max"]
    for part in ("ventricles", "lateral_ventricles"):
        q = res["dice"][part]
        for key in ("label_hint_best", "click_at_best_level", "click_best", "tool_click",
                    "persistent_click", "persistent_label_hint"):
            assert 0.0 <= q[key] <= 1.0, (part, key)
        assert q["click_best"] >= q["click_at_best_level"] - 1e-12
    assert set(res["targets"]) >= {"peak_under_6_gb", "slider_under_100_ms"}


def test_bench_lists_volume(capsys):
    assert main(["bench", "nosuch"]) == 2
    assert "volume" in capsys.readouterr().err
