"""Session folders in the core (no Qt, no napari): write, read, source checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cuts import session as core
from napari_cuts.errors import ReadError
from napari_cuts.hierarchy import Hierarchy


def _hier():
    q = np.zeros((4, 6), np.int64)
    q[:, 3:] = 1
    q[2:, :3] = 2
    return Hierarchy(q, [np.arange(3), np.array([0, 0, 1]), np.zeros(3, int)])


def test_write_read_session(tmp_path):
    src = tmp_path / "img.png"
    src.write_bytes(b"not really a png, but bytes to hash")
    h = _hier()
    m1 = h.labels(0) == 0
    m2 = h.labels(1) == 0
    objs = [{"id": 1, "name": "a", "clicks": [{"mode": "replace", "point": [0, 0], "level": 0}]},
            {"id": 2, "name": "b", "clicks": [{"mode": "replace", "point": [0, 0], "level": 1}]}]
    lab = np.where(m2, 2, np.where(m1, 1, 0)).astype(np.uint8)
    out = core.write_session(tmp_path / "s", hierarchy=h, objects=objs, labels=lab,
                             masks={1: m1, 2: m2}, source_path=src, source_shape=(4, 6),
                             geometry={"scale": [1.0, 2.0]}, level=1, current=2)
    assert core.is_session_folder(out)
    s = core.read_session(out)
    assert s.kind == "session" and s.level == 1 and s.current == 2
    assert s.source["sha256"] and s.source["size"] == src.stat().st_size
    assert s.check_source() == ("ok", "")
    np.testing.assert_array_equal(s.labels(), lab)
    masks = s.masks((4, 6))
    np.testing.assert_array_equal(masks[1], m1)           # overlapping masks kept whole
    np.testing.assert_array_equal(masks[2], m2)
    h2 = s.hierarchy()
    np.testing.assert_array_equal(h2.labels(1), h.labels(1))
    assert [o["name"] for o in s.objects] == ["a", "b"]
    assert json.loads((out / "session.json").read_text())["geometry"]["scale"] == [1.0, 2.0]
    # changed, then missing source
    src.write_bytes(b"not really a png, but bytes to hasH")
    status, msg = s.check_source()
    assert status == "changed" and str(src) in msg
    src.unlink()
    status, msg = s.check_source()
    assert status == "missing" and str(src) in msg and "open the image first" in msg


def test_session_of_several_files_checks_every_one(tmp_path):
    t1, t2 = tmp_path / "T1.nii.gz", tmp_path / "T2.nii.gz"
    t1.write_bytes(b"first sequence bytes")
    t2.write_bytes(b"second sequence bytes")
    chans = [{"name": "T1", "path": str(t1), "sequence_index": None},
             {"name": "T2", "path": str(t2), "sequence_index": None}]
    out = core.write_session(tmp_path / "s", hierarchy=_hier(), objects=[], source_path=t1,
                             source_paths=[t1, t2, t1], source_shape=(4, 6), channels=chans)
    s = core.read_session(out)
    assert [r["path"] for r in s.source["sequences"]] == [str(t1.resolve()), str(t2.resolve())]
    assert s.source["sequences"][1]["size"] == t2.stat().st_size
    assert [c["name"] for c in s.source["channels"]] == ["T1", "T2"]
    assert [str(f["path"]) for f in s.source_files()] == [str(t1.resolve()), str(t2.resolve())]
    assert s.check_source() == ("ok", "")
    t2.write_bytes(b"second sequence byteZ")            # same size, other content
    status, msg = s.check_source()
    assert status == "changed" and str(t2.resolve()) in msg and "file 2 of 2" in msg
    assert "hash" in msg and str(t1.resolve()) not in msg
    t2.unlink()
    status, msg = s.check_source()
    assert status == "missing" and str(t2.resolve()) in msg and "file 2 of 2" in msg
    # a segment folder of two files (run.json's source.sequences) is checked the same way
    seg = tmp_path / "seg"
    seg.mkdir()
    _hier().save(seg / "hierarchy.npz")
    (seg / "run.json").write_text(json.dumps({
        "input": [str(t1), str(t2)], "shape": [4, 6, 2],
        "source": {**core.file_digest(t1), "sequences": [core.file_digest(t1),
                                                         {"path": str(t2.resolve()),
                                                          "size": 21, "sha256": "0" * 64}]}}))
    status, msg = core.read_session(seg).check_source()
    assert status == "missing" and str(t2.resolve()) in msg


def test_segment_folder_is_a_session(tmp_path):
    h = _hier()
    h.save(tmp_path / "hierarchy.npz")
    (tmp_path / "run.json").write_text(json.dumps({"input": "nowhere.png", "shape": [4, 6]}))
    s = core.read_session(tmp_path)
    assert s.kind == "segment" and s.objects == []
    assert s.check_source()[0] == "missing"


def test_not_a_session(tmp_path):
    assert not core.is_session_folder(tmp_path)
    with pytest.raises(ReadError, match="not a napari-cuts session"):
        core.read_session(tmp_path)
    (tmp_path / "hierarchy.npz").write_bytes(b"junk")
    (tmp_path / "session.json").write_text("{")
    with pytest.raises(ReadError, match="session.json"):
        core.read_session(tmp_path)
