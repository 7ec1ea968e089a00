"""``napari-cuts batch``: a cohort on dask.distributed (napari_cuts.cohort).

One module-scoped LocalCluster (2 single-threaded worker processes) serves most tests
through ``--scheduler``; one test starts its own 1-worker cluster (``--workers 1``) and
one a CLI run in a subprocess that is killed mid-run. Images are 48 x 48, training 1 epoch.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_cuts import cohort, matching
from napari_cuts.cli import main
from napari_cuts.errors import InputError
from napari_cuts.hierarchy import Hierarchy
from picture_helpers import pale_disk

iio = pytest.importorskip("imageio.v3")
distributed = pytest.importorskip("distributed")

SIZE = 48
CENTRES = [(18, 20), (28, 26), (22, 30)]
RADIUS = 9


def _disk(centre, size=SIZE, r=RADIUS):
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r


def _picture(i: int) -> np.ndarray:
    """A textured RGB picture: a pale disk on a reddish gradient, noisy."""
    return pale_disk(SIZE, CENTRES[i], RADIUS, seed=100 + i)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort_in")
    for i in range(3):
        iio.imwrite(d / f"img{i}.png", _picture(i))
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture(scope="module")
def encoder_file(images, tmp_path_factory):
    from napari_cuts.pipeline import get_encoder

    enc, _ = get_encoder([_picture(i) for i in range(3)], epochs=1, seed=0)
    path = tmp_path_factory.mktemp("cohort_enc") / "encoder.pt"
    enc.save(path)
    return path


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None)
    client = Client(lc, set_as_default=False)
    client.wait_for_workers(2, timeout=60)
    yield client, lc.scheduler_address
    client.close()
    lc.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _rows(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == cohort.CSV_COLUMNS
        return list(reader)


def _mtimes(out: Path) -> dict:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "summary.csv"}


def _same_outputs(a: Path, b: Path, stems) -> None:
    """The per-input files of two runs hold the same results (hierarchy arrays; the
    PNG and NIfTI files byte for byte; done.json but for timings)."""
    for s in stems:
        ha, hb = np.load(a / s / "hierarchy.npz"), np.load(b / s / "hierarchy.npz")
        for k in ("labels", "n_clusters", "finest", "luts", "iterations"):
            np.testing.assert_array_equal(ha[k], hb[k], err_msg=f"{s}: {k}")
        names = sorted(p.name for p in (a / s).iterdir())
        assert names == sorted(p.name for p in (b / s).iterdir())
        for n in names:
            if n.endswith((".png", ".nii.gz")):
                assert (a / s / n).read_bytes() == (b / s / n).read_bytes(), f"{s}/{n}"
        da, db = (json.loads((x / s / "done.json").read_text()) for x in (a, b))
        for d in (da, db):
            d["row"].pop("seconds")
        assert da["row"] == db["row"] and da["info"] == db["info"]


# ----------------------------------------------------------------- unit level

def test_expand_inputs_folders_sorted_unique_stems(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for d in (a, b):
        iio.imwrite(d / "x.png", _picture(0))
    iio.imwrite(a / "w.png", _picture(1))
    (a / "readme.md").write_text("-")
    items = cohort.expand_inputs([a, b / "x.png", a / "w.png"])
    assert [i.stem for i in items] == ["w", "x", "x_2"]       # folder sorted; duplicate path once
    assert all(i.path.is_absolute() for i in items)
    with pytest.raises(InputError, match="no such file"):
        cohort.expand_inputs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no supported image"):
        cohort.expand_inputs([tmp_path / "empty"])


def test_match_structure_finds_the_cluster_with_the_prototype_feature():
    # two levels on an 8 x 8 image; features on a 4 x 4 grid (pool 2)
    fine = np.zeros((8, 8), np.int64)
    fine[:4, :4], fine[:4, 4:], fine[4:, :4], fine[4:, 4:] = 0, 1, 2, 3
    coarse = np.where(fine < 2, 0, 1)
    h = Hierarchy.from_labels(np.stack([fine, coarse]))
    feats = np.zeros((4, 4, 3), np.float32)
    feats[:2, :2] = (1, 0, 0)
    feats[:2, 2:] = (0, 1, 0)
    feats[2:, :] = (0, 0, 1)
    means, areas = cohort.structure_means(h, feats, 2)
    assert [m.shape for m in means] == [(4, 3), (2, 3)]
    np.testing.assert_allclose(areas[0], 0.25)
    proto = cohort.prototype_at(h, feats, 2, (1, 6))       # top right
    # its mean z-scored feature, and its centroid on the grid scaled to [-1, 1]
    std = cohort.standardised(feats)
    np.testing.assert_allclose(proto["prototype"], std[:2, 2:].reshape(-1, 3).mean(0))
    np.testing.assert_allclose(proto["centroid"], (-0.5, 0.5))
    lv, cid, sim = cohort.match_structure(h, feats, 2, (0, 1, 0))   # a plain vector: cosine
    assert (h.labels(lv) == cid)[1, 6] and (h.labels(lv) == cid).sum() == 16 and sim > 0.999
    # in the match space, with the centroid: the same quarter, score = cosine (distance 0)
    lv, cid, score = cohort.match_structure(h, cohort.match_space(feats), 2, proto)
    assert (h.labels(lv) == cid)[1, 6] and (h.labels(lv) == cid).sum() == 16
    assert score == pytest.approx(1.0)
    # the bottom half (coarse level, 50%) matches (0, 0, 1) better than a quarter does
    lv, cid, _ = cohort.match_structure(h, feats, 2, (0, 0, 1))
    assert (h.labels(lv) == cid).sum() in (16, 32) and (h.labels(lv) == cid)[7, 0]
    with pytest.raises(InputError, match="no structure"):
        cohort.match_structure(h, feats, 2, (1, 0, 0), min_area=0.9)


def test_prototype_of_a_mask_and_the_extent_closest_in_size():
    # three nested levels on an 8 x 8 image: quarters, halves, the whole; grid pool 2
    fine = np.zeros((8, 8), np.int64)
    fine[:4, :4], fine[:4, 4:], fine[4:, :4], fine[4:, 4:] = 0, 1, 2, 3
    half = np.where(fine < 2, 0, 1)
    h = Hierarchy.from_labels(np.stack([fine, half, np.zeros_like(fine)]))
    rng = np.random.default_rng(0)
    feats = rng.normal(0, 1, (4, 4, 3)).astype(np.float32)
    mask = np.zeros((8, 8), bool)
    mask[:4, 4:] = True                                   # the top-right quarter
    proto = cohort.prototype_of_mask(feats, 2, mask)
    std = cohort.standardised(feats)
    np.testing.assert_allclose(proto["prototype"], std[:2, 2:].reshape(-1, 3).mean(0), atol=1e-9)
    # the same as the cluster mean structure_means gives (pixel-weighted), positions last
    means, _ = cohort.structure_means(h, cohort.match_space(feats), 2)
    np.testing.assert_allclose(proto["prototype"] + proto["centroid"], means[0][1], atol=1e-9)
    with pytest.raises(InputError, match="empty"):
        cohort.prototype_of_mask(feats, 2, np.zeros((8, 8), bool))
    # extent: the cluster on the point's lineage whose size is closest (the root never)
    assert cohort.extent_level(h, (6, 1), 0.25) == 0
    assert cohort.extent_level(h, (6, 1), 0.45) == 1
    assert cohort.extent_level(h, (6, 1), 0.99) == 1
    # matched_mask with the area keeps the quarter the prototype names
    lv, cid, m, info = cohort.matched_mask(h, feats, 2, proto, area=0.25)
    assert lv == 0 and m[1, 6] and m.sum() == 16 and info["match_similarity"] > 0.999
    lv, _, m, _ = cohort.matched_mask(h, feats, 2, proto, area=0.5)
    assert lv == 1 and m[1, 6] and m.sum() == 32


# ------------------------------------------------------------- the command

def test_batch_local_cluster_then_two_workers_identical(images, cluster, tmp_path, capsys):
    """--workers 1 trains the encoder (OUT/encoder.pt) and matches the reference click in
    every input; a 2-worker cluster with those weights gives the same results."""
    out1 = tmp_path / "w1"
    ref = images / "img0.png"
    pt = [str(v) for v in CENTRES[0]]
    rc = main(["batch", str(images), "--out", str(out1), "--epochs", "1", "--workers", "1",
               "--reference", str(ref), "--point", *pt])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (out1 / "encoder.pt").is_file()
    if cohort._has_bokeh():
        assert "dashboard http" in err
    rows = _rows(out1)
    assert [r["image"] for r in rows] == [str(images / f"img{i}.png") for i in range(3)]
    for i, r in enumerate(rows):
        assert r["status"] == "ok" and r["error"] == ""
        d = out1 / f"img{i}"
        assert {p.name for p in d.iterdir()} == {"hierarchy.npz", "persistent.png", "mask.png",
                                                  "prompts.npz", "run.json", "done.json"}
        mask = iio.imread(d / "mask.png") > 0
        assert int(r["mask_pixels"]) == int(mask.sum()) > 0
        assert r["area_mm2"] == "" and r["volume_ml"] == ""    # pictures: no physical spacing
        h = Hierarchy.load(d / "hierarchy.npz")
        assert int(r["n_clusters"]) == int(h.n_clusters[int(r["level"])])
        # the match is whole clusters of its level (the best one, and any that look as
        # much like the reference: multifocal structures): no cluster is cut
        lab = np.asarray(h.labels(int(r["level"])))
        inside = np.unique(lab[mask])
        np.testing.assert_array_equal(mask, np.isin(lab, inside))
        disk = _disk(CENTRES[i])
        assert (mask & disk).sum() > 0.5 * mask.sum()            # the disk, found in each
    assert not list(out1.glob(".partial-*"))

    out2 = tmp_path / "w2"
    rc = main(["batch", *(str(images / f"img{i}.png") for i in range(3)), "--out", str(out2),
               "--weights", str(out1 / "encoder.pt"), "--scheduler", cluster[1],
               "--reference", str(ref), "--point", *pt])
    assert rc == 0, capsys.readouterr().err
    assert not (out2 / "encoder.pt").exists()
    _same_outputs(out1, out2, [f"img{i}" for i in range(3)])
    r1, r2 = _rows(out1), _rows(out2)
    for a, b in zip(r1, r2):
        a.pop("seconds"), b.pop("seconds")
    assert r1 == r2

    # rerun: nothing recomputed, nothing rewritten, no cluster needed (a dead address)
    before = _mtimes(out2)
    res = cohort.run_batch([images / f"img{i}.png" for i in range(3)], out2,
                           weights=out1 / "encoder.pt", reference=ref, point=CENTRES[0],
                           scheduler=f"tcp://127.0.0.1:{_closed_port()}")
    assert res["computed"] == 0 and res["skipped"] == 3 and res["failed"] == 0
    assert _mtimes(out2) == before
    assert [r["status"] for r in _rows(out2)] == ["skipped"] * 3
    assert [r["mask_pixels"] for r in _rows(out2)] == [r["mask_pixels"] for r in r1]

    # another seed is another result: recomputed
    res = cohort.run_batch([images / "img1.png"], out2, weights=out1 / "encoder.pt", seed=1,
                           client=cluster[0])
    assert res["computed"] == 1 and res["skipped"] == 0


def test_corrupt_file_among_good_ones(images, encoder_file, cluster, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    for i in (0, 1):
        (d / f"img{i}.png").write_bytes((images / f"img{i}.png").read_bytes())
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    good = (images / "img2.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 3])
    out = tmp_path / "out"
    rc = main(["batch", str(d), "--out", str(out), "--weights", str(encoder_file),
               "--scheduler", cluster[1]])
    err = capsys.readouterr().err
    assert rc == 1
    assert "2 of 4 inputs failed" in err
    rows = {Path(r["image"]).name: r for r in _rows(out)}
    for bad in ("broken.png", "truncated.png"):
        assert rows[bad]["status"] == "error"
        assert bad in rows[bad]["error"] and "\n" not in rows[bad]["error"]
        assert not (out / Path(bad).stem).exists()
    for ok in ("img0.png", "img1.png"):
        assert rows[ok]["status"] == "ok"
        assert (out / Path(ok).stem / "done.json").is_file()
        assert (out / Path(ok).stem / "persistent.png").is_file()
        assert not (out / Path(ok).stem / "mask.png").exists()      # no reference click
    # a rerun retries the failed inputs only
    before = _mtimes(out)
    res = cohort.run_batch([d], out, weights=encoder_file, client=cluster[0])
    assert (res["computed"], res["skipped"], res["failed"]) == (0, 2, 2)
    assert _mtimes(out) == before


def test_reference_point_outside_or_on_constant_area(images, encoder_file, tmp_path, capsys):
    flat = np.zeros((SIZE, SIZE), np.uint8)
    flat[_disk((24, 24))] = 200
    iio.imwrite(tmp_path / "flat.png", flat)
    dead = f"tcp://127.0.0.1:{_closed_port()}"
    common = ["batch", str(images), "--out", str(tmp_path / "out"), "--weights",
              str(encoder_file), "--scheduler", dead]
    cases = [
        (["--reference", str(images / "img0.png"), "--point", "10", "60"], "lies outside"),
        (["--reference", str(images / "img0.png"), "--point", "-1", "5"], "lies outside"),
        (["--reference", str(images / "img0.png"), "--point", "1", "2", "3"], "give 2"),
        (["--reference", str(tmp_path / "flat.png"), "--point", "2", "2"], "constant area"),
        (["--point", "2", "2"], "go together"),
    ]
    for extra, words in cases:
        t0 = time.monotonic()
        rc = main(common + extra)
        err = capsys.readouterr().err.strip()
        assert rc == 2, (extra, err)
        assert words in err and len(err.splitlines()) == 1, err
        assert time.monotonic() - t0 < 3                     # before any cluster or training
    iio.imwrite(tmp_path / "const.png", np.full((SIZE, SIZE), 7, np.uint8))
    rc = main(common + ["--reference", str(tmp_path / "const.png"), "--point", "3", "3"])
    assert rc == 2 and "constant" in capsys.readouterr().err
    # the disk of the flat image is a structure: accepted
    from napari_cuts.io import read_image

    assert cohort.check_reference_point(read_image(tmp_path / "flat.png"), (24, 24)) == (24, 24)


def test_scheduler_nobody_listens_fails_fast(images, encoder_file, tmp_path, capsys):
    addr = f"tcp://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    rc = main(["batch", str(images), "--out", str(tmp_path / "out"), "--weights",
               str(encoder_file), "--scheduler", addr])
    took = time.monotonic() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert f"cannot reach a dask scheduler at {addr}" in err and len(err.splitlines()) == 1
    assert took < 15


def test_worker_killed_mid_write_is_retried(images, encoder_file, cluster, tmp_path):
    """A worker process dies (SIGKILL) while writing img1's folder: distributed retries
    the task elsewhere, the half-written folder is never taken for done, and the results
    equal a run without the crash."""
    client = cluster[0]
    inputs = [images / f"img{i}.png" for i in range(3)]
    ref_kw = dict(reference=images / "img0.png", point=CENTRES[0])
    clean = tmp_path / "clean"
    cohort.run_batch(inputs, clean, weights=encoder_file, client=client, **ref_kw)
    crashed = tmp_path / "crashed"
    flag = tmp_path / "crashed-once"
    pids = set(client.run(os.getpid).values())
    res = cohort.run_batch(inputs, crashed, weights=encoder_file, client=client,
                           _crash_once=("img1", str(flag)), **ref_kw)
    assert flag.exists()                                     # it did die, once
    assert (res["computed"], res["failed"]) == (3, 0), [r.get("error") for r in res["rows"]]
    assert not list(crashed.glob(".partial-*"))
    _same_outputs(clean, crashed, ["img0", "img1", "img2"])
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(os.getpid).values()) != pids     # the nanny replaced the dead worker


def test_run_killed_then_rerun_completes_the_rest(images, encoder_file, cluster, tmp_path):
    """Kill a whole CLI run (client and local workers) mid-run: every input folder left
    is complete; a rerun computes exactly the missing ones and leaves the others as
    they were."""
    d = tmp_path / "in"
    d.mkdir()
    for k in range(8):
        iio.imwrite(d / f"im{k}.png", np.roll(_picture(k % 3), 3 * k, axis=1))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "napari_cuts.cli", "batch", str(d), "--out", str(out),
           "--weights", str(encoder_file), "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any((p / "done.json").exists() for p in out.glob("im*")):
                break
            time.sleep(0.02)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)
    time.sleep(0.5)
    items = cohort.expand_inputs([d])
    finished = [it.stem for it in items if (out / it.stem).exists()]
    assert finished, "nothing finished before the kill"
    print(f"finished before the kill: {len(finished)} of {len(items)}")
    sha = cohort._sha256_file(encoder_file)
    for it in items:
        if it.stem in finished:
            exp = {"done_version": cohort.DONE_VERSION, "encoder_sha256": sha, "seed": 0,
                   "reference": None, "input": str(it.path),
                   "input_signature": cohort.input_signature(it.path)}
            assert cohort.is_done(out / it.stem, exp) is not None, it.stem
    before = _mtimes(out)
    res = cohort.run_batch([d], out, weights=encoder_file, client=cluster[0])
    assert res["skipped"] == len(finished) and res["computed"] == 8 - len(finished)
    assert res["failed"] == 0
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if k in before and not k.startswith(".")} == {
        k: v for k, v in before.items() if not k.startswith(".")}
    assert not list(out.glob(".partial-*"))
    assert all(r["status"] in ("ok", "skipped") for r in _rows(out))


def test_mixing_2d_images_and_volumes_is_refused(images, tmp_path, capsys):
    import nibabel as nib

    vol = np.random.default_rng(0).normal(100, 5, (20, 20, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "vol.nii.gz")
    rc = main(["batch", str(images / "img0.png"), str(tmp_path / "vol.nii.gz"), "--out",
               str(tmp_path / "out"), "--epochs", "1", "--scheduler",
               f"tcp://127.0.0.1:{_closed_port()}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "mixes volumes (vol.nii.gz) and 2D images (img0.png)" in err, err


def test_batch_input_folder_opens_as_a_session(images, encoder_file, cluster, tmp_path):
    """Each input's folder of `batch` opens through the plugin's reader like a `segment`
    folder: the image, the levels, and the cohort's encoder found for it."""
    from napari_cuts.session import is_session_folder, read_session

    client = cluster[0]
    out = tmp_path / "b"
    cohort.run_batch([images / "img0.png"], out, weights=encoder_file, client=client)
    folder = out / "img0"
    assert is_session_folder(folder)
    sess = read_session(folder)
    assert sess.check_source()[0] == "ok"
    assert sess.encoder_path is not None and sess.encoder_path.name == "encoder.pt"
    from napari_cuts._reader import napari_get_reader

    layers = napari_get_reader(str(folder))(str(folder))
    kinds = [lay[2] if len(lay) > 2 else "image" for lay in layers]
    assert kinds[0] == "image" and "labels" in kinds
    assert layers[0][0].shape[:2] == sess.hierarchy().shape


def test_matched_mask_takes_every_part_of_a_multifocal_structure():
    """Two lesions that look alike are both matched; a structure that looks different,
    and the background, are not."""
    fine = np.zeros((12, 12), np.int64)
    fine[1:4, 1:4] = 1            # lesion A
    fine[8:11, 7:10] = 2          # lesion B, like A
    fine[1:4, 8:11] = 3           # another structure, unlike A
    h = Hierarchy.from_labels(np.stack([fine, fine, np.zeros_like(fine)]))
    rng = np.random.default_rng(1)
    feats = rng.normal(0, 0.1, (12, 12, 3)).astype(np.float32)
    feats[(fine == 1) | (fine == 2)] += np.array([3.0, 0.0, 0.0], np.float32)
    feats[fine == 3] += np.array([0.0, 3.0, 0.0], np.float32)
    ref = cohort.prototype_at(h, feats, 1, (2, 2))
    assert ref["mask_pixels"] == 9
    # the appearance alone (no centroid): both look-alikes
    lv, cid, m, info = cohort.matched_mask(h, feats, 1, ref["prototype"])
    np.testing.assert_array_equal(m, (fine == 1) | (fine == 2))
    assert len(info["match_clusters"]) == 2 and cid in info["match_clusters"]
    # without the rule (a similarity bar above 1) only one lesion would be taken
    old = matching.MATCH_SIMILAR
    try:
        matching.MATCH_SIMILAR = 1.01
        _, _, m1, _ = cohort.matched_mask(h, feats, 1, ref["prototype"])
    finally:
        matching.MATCH_SIMILAR = old
    assert m1.sum() == 9 and (m1 & m).sum() == 9
    # with the reference centroid (what batch and the widget pass): the look-alike at
    # the reference's place, not the one across the image
    _, _, m2, info2 = cohort.matched_mask(h, feats, 1, ref)
    np.testing.assert_array_equal(m2, fine == 1)
    assert len(info2["match_clusters"]) == 1


def test_match_space_balances_the_image_columns_and_adds_positions():
    rng = np.random.default_rng(0)
    feats = rng.normal(0, 1, (6, 4, 10)).astype(np.float32)
    sp = cohort.match_space(feats, n_image=2)
    std = cohort.standardised(feats)
    assert sp.shape == (6, 4, 12)
    np.testing.assert_allclose(sp[..., :8], std[..., :8])
    np.testing.assert_allclose(sp[..., 8:10], std[..., 8:] * 2.0)     # sqrt(8 / 2)
    np.testing.assert_allclose(sp[:, 0, 10], (np.arange(6) + 0.5) / 6 * 2 - 1)
    np.testing.assert_allclose(sp[0, :, 11], (np.arange(4) + 0.5) / 4 * 2 - 1)
    # no embeddings (n_image 0) or only image columns: nothing rescaled
    np.testing.assert_allclose(cohort.match_space(feats)[..., :10], std)
    np.testing.assert_allclose(cohort.match_space(feats, n_image=10)[..., :10], std)


def test_a_prototype_from_another_encoder_gets_a_clear_message():
    fine = np.zeros((8, 8), np.int64)
    fine[:4] = 1
    h = Hierarchy.from_labels(np.stack([fine, np.zeros_like(fine)]))
    feats = np.random.default_rng(0).normal(0, 1, (8, 8, 3)).astype(np.float32)
    with pytest.raises(InputError, match="same encoder"):
        cohort.matched_mask(h, feats, 1, {"prototype": [1.0] * 5, "centroid": [0.0, 0.0]})
    with pytest.raises(InputError, match="2D images and volumes"):
        cohort.matched_mask(h, feats, 1, {"prototype": [1.0] * 3, "centroid": [0.0] * 3})


def test_appearance_similarity_counts_direction_and_strength():
    p = np.array([2.0, 0.0, 0.0])
    means = np.array([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [4.0, 0.0, 0.0],
                      [0.0, 2.0, 0.0], [-2.0, 0.0, 0.0]])
    np.testing.assert_allclose(cohort.appearance_similarity(means, p), (1, 0.5, 0.5, 0, -1))


def test_the_place_decides_between_look_alikes_only():
    """A white blob that moved across the image is still found, although a grey bar
    sits where the reference blob was; between two white blobs the nearer one wins."""
    fine = np.zeros((16, 16), np.int64)
    fine[2:6, 2:6] = 1            # grey bar at the reference place (top left)
    fine[10:14, 10:14] = 2        # white blob (bottom right)
    h = Hierarchy.from_labels(np.stack([fine, np.zeros_like(fine)]))
    feats = np.zeros((16, 16, 2), np.float32)
    feats[..., 0] = np.where(fine == 1, 1.0, np.where(fine == 2, 3.0, 0.0))
    feats[..., 1] = np.random.default_rng(0).normal(0, 0.01, (16, 16))
    space = cohort.match_space(feats)
    blob = cohort.structure_means(h, space, 1)[0][0][2]
    proto = {"prototype": list(blob[:2]), "centroid": [-0.5, -0.5]}
    _, _, m, info = cohort.matched_mask(h, feats, 1, proto)
    np.testing.assert_array_equal(m, fine == 2)
    # two white blobs: the one near the reference centroid
    feats[..., 0] = np.where(fine > 0, 3.0, 0.0)
    space = cohort.match_space(feats)
    blob = cohort.structure_means(h, space, 1)[0][0][2]
    _, _, m, _ = cohort.matched_mask(h, feats, 1, {"prototype": list(blob[:2]),
                                                   "centroid": [-0.5, -0.5]})
    np.testing.assert_array_equal(m, fine == 1)
    _, _, m, _ = cohort.matched_mask(h, feats, 1, {"prototype": list(blob[:2]),
                                                   "centroid": [0.5, 0.5]})
    np.testing.assert_array_equal(m, fine == 2)
