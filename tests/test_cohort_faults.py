"""``napari-cuts batch`` when dask workers die at any moment (issue 31).

Real processes: a ``dask scheduler`` and ``dask worker`` commands (free ports, one
thread each, every one stopped at the end; ``benchmarks/bench_cohort.DaskProcesses``),
and the CLI's own LocalCluster (``--workers 2``). A worker is killed, SIGKILL or
SIGTERM, at a moment a task signals: every task writes a marker file as it starts a
phase when :data:`napari_cuts.cohort.TEST_MARKER_ENV` names a folder, and waits there
while ``hold-<phase>`` exists until ``release-<phase>`` does; the test waits for the
marker, kills the worker whose pid it names, then releases. Nothing is timed and
nothing sleeps for a result. Each run must write every output, equal to a one-worker
run's, with no error; a rerun computes nothing (it is given a scheduler address where
nobody listens). Images are 48 x 48, the encoder one epoch, trained once for the module.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from napari_cuts import cohort
from napari_cuts.cli import main
from picture_helpers import pale_disk

iio = pytest.importorskip("imageio.v3")
distributed = pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]
SIZE = 48
N = 5
STEMS = [f"img{i}" for i in range(N)]
POINT = (20, 22)
WAIT = 120.0          # a deadline for a marker to appear (a hung run fails, never hangs)


def _picture(i: int) -> np.ndarray:
    """A pale disk on a reddish gradient, noisy, the disk a little elsewhere each time."""
    return pale_disk(SIZE, (20 + 2 * (i % 3), 22 + 2 * (i % 2)), 9, seed=300 + i)


@functools.lru_cache(maxsize=None)
def _bench():
    spec = importlib.util.spec_from_file_location("bench_cohort_under_test",
                                                  REPO / "benchmarks" / "bench_cohort.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults_in")
    for i in range(N):
        iio.imwrite(d / f"img{i}.png", _picture(i))
    return d


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    from napari_cuts.pipeline import get_encoder

    enc, _ = get_encoder([_picture(i) for i in range(N)], epochs=1, seed=0)
    path = tmp_path_factory.mktemp("faults_enc") / "encoder.pt"
    enc.save(path)
    return path


def _args(images, encoder_file, out) -> list[str]:
    return ["batch", str(images), "--out", str(out), "--weights", str(encoder_file),
            "--reference", str(images / "img0.png"), "--point", *map(str, POINT)]


@pytest.fixture(scope="module")
def one_worker(images, encoder_file, tmp_path_factory):
    """The outputs of a clean one-worker run (the CLI's LocalCluster)."""
    out = tmp_path_factory.mktemp("faults_one") / "out"
    assert main(_args(images, encoder_file, out) + ["--workers", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A ``dask scheduler`` process for the module; workers are started per test."""
    procs = _bench().DaskProcesses(tmp_path_factory.mktemp("faults_dask"))
    try:
        procs.start_scheduler()
        yield procs
    finally:
        procs.stop()


@pytest.fixture
def workers(scheduler, tmp_path):
    """Two ``dask worker`` processes (one thread each) whose tasks write markers into
    a fresh folder; all of them stopped at the end of the test."""
    markers = tmp_path / "markers"
    markers.mkdir()
    scheduler.env = {cohort.TEST_MARKER_ENV: str(markers), "PYTHONUNBUFFERED": "1"}
    scheduler.start_workers(2)
    try:
        yield scheduler, markers
    finally:
        scheduler.stop_workers()


def _killer(markers, phase, kill, out, after_done=0):
    """Kill the worker of the first task reaching ``phase`` (``bench_cohort.KillAt``)."""
    return _bench().KillAt(markers, phase, kill, out, STEMS, after_done=after_done, wait=WAIT)


def _rows(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_same(a: Path, b: Path) -> None:
    """Every input's outputs of ``b`` equal those of ``a`` (hierarchy arrays; picture
    files byte for byte; the summary rows but for timings); the reference too."""
    for s in STEMS:
        ha, hb = np.load(a / s / "hierarchy.npz"), np.load(b / s / "hierarchy.npz")
        for k in ("labels", "n_clusters", "finest", "luts"):
            np.testing.assert_array_equal(ha[k], hb[k], err_msg=f"{s}: {k}")
        for name in ("persistent.png", "mask.png"):
            assert (a / s / name).read_bytes() == (b / s / name).read_bytes(), f"{s}/{name}"
        ra, rb = (json.loads((x / s / "done.json").read_text())["row"] for x in (a, b))
        ra.pop("seconds"), rb.pop("seconds")
        ra.pop("image"), rb.pop("image")
        assert ra == rb, s
    pa, pb = (json.loads((x / "reference.json").read_text()) for x in (a, b))
    assert pa["prototype"] == pb["prototype"] and pa["level"] == pb["level"]
    assert not list(b.glob(".partial-*"))


def _assert_complete_then_rerun_skips(one_worker, images, encoder_file, out):
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok"] * N, rows
    _assert_same(one_worker, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != "summary.csv"}
    nobody = f"tcp://127.0.0.1:{_bench().free_port()}"      # no cluster to compute with
    res = cohort.run_batch([images], out, weights=encoder_file,
                           reference=images / "img0.png", point=POINT, scheduler=nobody)
    assert (res["computed"], res["skipped"], res["failed"]) == (0, N, 0)
    assert [r["status"] for r in _rows(out)] == ["skipped"] * N
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != "summary.csv"} == before


def _run_cli(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err
    assert "internal error" not in err, err
    return rc, err


# ------------------------------------------------------------ real processes

@pytest.mark.parametrize("sig,phase", [
    (signal.SIGKILL, "encoder"),         # while the encoder's bytes are sent out
    (signal.SIGKILL, "reference"),
    (signal.SIGTERM, "reference"),
    (signal.SIGKILL, "img2.write"),      # mid-way through the inputs, writing one's files
    (signal.SIGTERM, "img2.write"),
])
def test_dask_worker_process_killed(sig, phase, workers, images, encoder_file, one_worker,
                                    tmp_path, capsys):
    """Two ``dask worker`` commands; one's process group killed while the encoder's
    bytes are sent out, while the reference is segmented (the encoder's bytes may have
    lived only there), or while an input's files are written after others finished:
    the batch ends complete, as one worker would have made it, and a rerun (no
    scheduler even reachable) computes nothing."""
    procs, markers = workers
    out = tmp_path / "out"
    midway = phase.startswith("img")
    killer = _killer(markers, phase, lambda pid: procs.kill_worker_of(pid, sig), out,
                     after_done=1 if midway else 0)
    rc, err = _run_cli(_args(images, encoder_file, out) + ["--scheduler", procs.address], capsys)
    killer.check()
    assert rc == 0, err
    if midway:
        assert killer.done_at_kill >= 1
    else:   # the encoder's bytes, or the reference, made again on the worker left
        assert len(list(markers.glob(f"{phase}@*.started"))) >= 2
    _assert_complete_then_rerun_skips(one_worker, images, encoder_file, out)


def test_no_worker_left_waits_then_stops_and_a_rerun_resumes(workers, images, encoder_file,
                                                            one_worker, tmp_path, capsys):
    """Every worker killed mid-way: the batch waits --worker-timeout, writes
    summary.csv (finished rows ok, the rest pending) and exits non-zero with one line
    naming the scheduler; with a worker again, the rerun computes only the rest."""
    procs, markers = workers
    out = tmp_path / "out"

    def kill_all(pid):
        for w in list(procs.workers):
            os.killpg(w.pid, signal.SIGTERM)

    killer = _killer(markers, "img3", kill_all, out, after_done=1)
    rc, err = _run_cli(_args(images, encoder_file, out) + ["--scheduler", procs.address,
                                                           "--worker-timeout", "2"], capsys)
    killer.check()
    assert rc != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("napari-cuts: error: no dask worker") and procs.address in last, err
    rows = _rows(out)
    finished = [r["image"] for r in rows if r["status"] == "ok"]
    assert 1 <= len(finished) < N and all(r["status"] in ("ok", "pending") for r in rows), rows
    procs.stop_workers()
    procs.start_workers(1)
    rc, err = _run_cli(_args(images, encoder_file, out) + ["--scheduler", procs.address], capsys)
    assert rc == 0, err
    statuses = {r["image"]: r["status"] for r in _rows(out)}
    assert all(statuses[name] == "skipped" for name in finished), statuses
    assert set(statuses.values()) <= {"ok", "skipped"} and "ok" in statuses.values(), statuses
    _assert_same(one_worker, out)


# ------------------------------------------------------------ the CLI's LocalCluster

@pytest.mark.parametrize("sig,phase", [
    (signal.SIGKILL, "reference"),
    (signal.SIGTERM, "img2"),            # mid-way through the inputs
])
def test_local_cluster_worker_killed(sig, phase, images, encoder_file, one_worker, tmp_path,
                                     monkeypatch, capsys):
    """``--workers 2``: a worker process of the LocalCluster killed at the same moments
    (its nanny starts a new one). The scheduler here gives up on a task at its first
    lost worker (``allowed-failures`` 0: KilledWorker), so the batch itself submits the
    reference or the input again: complete, equal to one worker, a rerun computes
    nothing."""
    import dask

    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(cohort.TEST_MARKER_ENV, str(markers))   # the workers inherit it
    out = tmp_path / "out"
    killer = _killer(markers, phase, lambda pid: os.kill(pid, sig), out,
                     after_done=0 if phase == "reference" else 1)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        rc, err = _run_cli(_args(images, encoder_file, out) + ["--workers", "2"], capsys)
    killer.check()
    assert rc == 0, err
    assert "KilledWorker" in err and "submitting it again (2 of" in err, err
    assert len(list(markers.glob(f"{phase}@*.started"))) == 2
    monkeypatch.delenv(cohort.TEST_MARKER_ENV)
    _assert_complete_then_rerun_skips(one_worker, images, encoder_file, out)
