"""``napari-cuts bench fundus``: time to a first result on the sample fundus (quick mode)."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench():
    path = REPO / "benchmarks" / "bench_fundus.py"
    spec = importlib.util.spec_from_file_location("bench_fundus_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_fundus_quick_runs_the_command_and_reports_its_stages():
    res = _bench().run(quick=True)
    assert "error" not in res, res
    assert res["shape"] == [512, 512, 3]
    assert res["options"] == ["--seconds", "3"]
    # the stages come from the command's own run.json and fit inside the wall time
    stages = res["seconds_training"] + res["seconds_embed"] + res["seconds_condense"]
    assert 0 < stages <= res["seconds_wall"]
    assert res["peak_mb"] > 0 and res["n_levels"] >= 2
    assert "within_target" not in res          # a smoke run is not the default's time


def test_bench_lists_fundus(capsys):
    from napari_cuts.cli import main

    assert main(["bench", "nosuch"]) == 2
    assert "fundus" in capsys.readouterr().err
