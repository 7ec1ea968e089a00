"""Outputs are readable by others: every writer gives a new file the permissions
the user's umask gives any new file (0o666 & ~umask), still atomically."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_cuts import fileutil, io
from napari_cuts.errors import WriteError

from dicom_helpers import write_series


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it(umask):
    assert fileutil.current_umask() == umask
    assert fileutil.new_file_mode() == 0o666 & ~umask
    assert os.umask(umask) == umask  # unchanged by the read


def test_current_umask_fallback_without_proc(umask, monkeypatch):
    real_open = open

    def no_proc(path, *a, **k):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", no_proc)
    assert fileutil.current_umask() == umask
    out = []
    threads = [threading.Thread(target=lambda: out.append(fileutil.current_umask()))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [umask] * 8
    assert os.umask(umask) == umask


def test_every_writer_gives_the_umask_permissions(tmp_path, umask):
    from napari_cuts.hierarchy import Hierarchy

    want = 0o666 & ~umask
    vol = np.zeros((4, 6, 7), bool)
    vol[1:3, 2:5, 1:6] = True
    labels = vol.astype(np.uint8) + np.pad(vol[:, 1:], ((0, 0), (0, 1), (0, 0)))
    written = [
        io.write_mask(tmp_path / "m.nii.gz", vol, provenance={"seed": 1}),
        tmp_path / "m.json",  # the provenance sidecar
        io.write_mask(tmp_path / "m.png", vol[1]),
        io.write_labels(tmp_path / "l.nii", labels),
        io.write_labels(tmp_path / "l.png", labels[1]),
        fileutil.write_json(tmp_path / "run.json", {"a": 1}),
    ]
    write_series(tmp_path / "ct", np.zeros((4, 6, 7), np.uint16), iop=[1, 0, 0, 0, 1, 0],
                 origin=[0, 0, 0], patient=True, frame_of_reference="1.2.3.4.7")
    ct = io.read_image(tmp_path / "ct")
    written += [io.write_mask(tmp_path / "m.dcm", vol, like=ct),
                io.write_labels(tmp_path / "l.dcm", labels, like=ct)]
    h = Hierarchy.from_labels(np.stack([np.arange(42).reshape(6, 7) % 4,
                                        np.arange(42).reshape(6, 7) % 2]))
    h.save(tmp_path / "hierarchy.npz")
    written.append(tmp_path / "hierarchy.npz")
    for p in written:
        assert mode(p) == want, f"{Path(p).name}: {oct(mode(p))} != {oct(want)}"
    # no temporary files left behind
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_encoder_save_gives_the_umask_permissions(tmp_path, umask):
    pytest.importorskip("torch")
    from napari_cuts.encoder import train_encoder

    enc = train_encoder(np.random.default_rng(0).random((1, 32, 32)).astype("float32"),
                        epochs=1, device="cpu", crop_size=32, batch_size=2, anchors=32)
    enc.save(tmp_path / "encoder.pt")
    assert mode(tmp_path / "encoder.pt") == 0o666 & ~umask


def test_replacing_a_file_keeps_it_atomic(tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        target = tmp_path / "x.json"
        fileutil.write_json(target, {"v": 1})
        os.chmod(target, 0o600)
        fileutil.write_json(target, {"v": 2})  # a new file: the umask's mode again
        assert mode(target) == 0o644 and '"v": 2' in target.read_text()

        def boom(*a, **k):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(fileutil.os, "fsync", boom)
        with pytest.raises(WriteError, match="x.json"):
            fileutil.write_json(target, {"v": 3})
        assert '"v": 2' in target.read_text()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
    finally:
        os.umask(old)
