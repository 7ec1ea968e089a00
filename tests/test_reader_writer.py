"""The napari reader/writer contributions, without a viewer or Qt."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from napari_cuts import io
from napari_cuts._reader import napari_get_reader
from napari_cuts._writer import write_labels
from napari_cuts.errors import ReadError


def oblique(zooms=(0.8, 0.9, 2.5)):
    c, s = np.cos(0.4), np.sin(0.4)
    a = np.eye(4)
    a[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag(zooms)
    a[:3, 3] = [-30.0, 12.0, 7.5]
    return a


@pytest.fixture
def nifti(tmp_path):
    vox = np.random.default_rng(0).integers(0, 1000, (9, 8, 6)).astype(np.int16)
    aff = oblique()
    img = nib.Nifti1Image(vox, aff)
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=1)
    path = tmp_path / "brain.nii.gz"
    nib.save(img, str(path))
    return path, vox, aff


def test_get_reader_rejects_unsupported(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert napari_get_reader(str(tmp_path / "a.txt")) is None
    assert napari_get_reader([str(tmp_path / "a.txt")]) is None
    assert napari_get_reader(["a.png", "b.png"]) is None  # one path at a time
    assert napari_get_reader(str(tmp_path)) is None  # a folder without DICOM
    assert napari_get_reader(None) is None
    assert napari_get_reader(42) is None


def test_reader_nifti_layer(nifti):
    path, vox, aff = nifti
    reader = napari_get_reader(str(path))
    assert callable(reader)
    assert callable(napari_get_reader([str(path)]))
    layers = reader(str(path))
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image"
    np.testing.assert_array_equal(data, vox.transpose(2, 1, 0))
    assert kwargs["name"] == "brain"
    # scale from the affine: voxel sizes along the array axes (Z, Y, X)
    np.testing.assert_allclose(kwargs["scale"], np.linalg.norm(aff[:3, :3], axis=0)[::-1], rtol=1e-5)
    np.testing.assert_allclose(kwargs["metadata"]["affine"], aff[:, [2, 1, 0, 3]], atol=1e-5)
    assert kwargs["metadata"]["source"] == str(path)
    assert kwargs["rgb"] is False
    # the rotation only moves the origin: translate is the origin in the voxel-aligned frame
    rot = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)
    np.testing.assert_allclose(kwargs["translate"], (rot.T @ aff[:3, 3])[::-1], atol=1e-4)


def test_reader_png_and_broken_file(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "p.png")
    (data, kwargs, kind), = napari_get_reader(str(tmp_path / "p.png"))(str(tmp_path / "p.png"))
    np.testing.assert_array_equal(data, img)
    assert kwargs["rgb"] is True and kwargs["scale"] == (1.0, 1.0)
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    reader = napari_get_reader(str(tmp_path / "broken.nii.gz"))
    with pytest.raises(ReadError, match="broken.nii.gz"):
        reader(str(tmp_path / "broken.nii.gz"))


def test_reader_4d_note_is_warned(tmp_path):
    vol = np.zeros((5, 6, 4, 2), np.float32)
    img = nib.Nifti1Image(vol, np.eye(4))
    img.header.set_xyzt_units("mm", "sec")  # a time series (no time unit: sequences)
    nib.save(img, str(tmp_path / "t.nii"))
    with pytest.warns(UserWarning, match="first volume"):
        (data, kwargs, _), = napari_get_reader(str(tmp_path / "t.nii"))(str(tmp_path / "t.nii"))
    assert data.shape == (4, 6, 5)
    assert any("first volume" in n for n in kwargs["metadata"]["notes"])


def test_writer_round_trip_with_layer_metadata(nifti, tmp_path):
    path, vox, aff = nifti
    (data, kwargs, _), = napari_get_reader(str(path))(str(path))
    labels = (data // 100).astype(np.int32)  # up to 10 labels
    meta = {"name": "seg", "scale": kwargs["scale"], "translate": kwargs["translate"],
            "metadata": kwargs["metadata"]}
    written = write_labels(str(tmp_path / "seg.nii.gz"), labels, meta)
    assert written == [str(tmp_path / "seg.nii.gz")]
    out, src = nib.load(written[0]), nib.load(str(path))
    assert out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(out.affine, src.affine)
    np.testing.assert_array_equal(out.get_qform(), src.get_qform())
    np.testing.assert_array_equal(out.get_sform(), src.get_sform())
    np.testing.assert_array_equal(np.asarray(out.dataobj), labels.transpose(2, 1, 0))
    # and back through our own reader
    np.testing.assert_array_equal(io.read_image(written[0]).data, labels)


def test_writer_binary_and_scale_only(tmp_path):
    mask = np.zeros((4, 10, 12), np.int64)
    mask[1:3, 2:8, 3:9] = 1
    meta = {"scale": (2.5, 0.7, 0.6), "translate": (10.0, -5.0, 3.0), "metadata": {}}
    path = write_labels(str(tmp_path / "m.nii"), mask, meta)[0]
    out = nib.load(path)
    assert out.get_data_dtype() == np.uint8  # binary -> mask rules
    np.testing.assert_allclose(out.affine, [[0.6, 0, 0, 3.0], [0, 0.7, 0, -5.0],
                                            [0, 0, 2.5, 10.0], [0, 0, 0, 1]])
    back = io.read_image(path)
    assert back.layer_kwargs()["scale"] == pytest.approx((2.5, 0.7, 0.6))
    assert back.layer_kwargs()["translate"] == pytest.approx((10.0, -5.0, 3.0))

    # 2D binary -> 0/255 PNG; labels -> colour PNG
    write_labels(str(tmp_path / "m.png"), mask[1], {"scale": (1, 1), "metadata": {}})
    png = np.asarray(Image.open(tmp_path / "m.png"))
    assert png.dtype == np.uint8 and set(np.unique(png)) == {0, 255}
    labels = np.arange(120).reshape(10, 12) % 5
    write_labels(str(tmp_path / "l.png"), labels, {"metadata": None})
    colour = np.asarray(Image.open(tmp_path / "l.png"))
    np.testing.assert_array_equal(colour, io.label_colours(4)[labels])


def test_writer_labels_not_matching_source_grid_use_scale(nifti, tmp_path):
    path, vox, aff = nifti
    (data, kwargs, _), = napari_get_reader(str(path))(str(path))
    one_slice = (data[0] > 500).astype(np.uint8)  # 2D labels from a 3D image's metadata
    meta = {"scale": kwargs["scale"][1:], "translate": kwargs["translate"][1:],
            "metadata": kwargs["metadata"]}
    out = nib.load(write_labels(str(tmp_path / "s.nii.gz"), one_slice, meta)[0])
    np.testing.assert_allclose(out.header.get_zooms()[:2], kwargs["scale"][1:][::-1], rtol=1e-5)


def test_io_does_not_import_napari_or_qt():
    import subprocess

    code = (
        "import sys, napari_cuts.io, napari_cuts._reader, napari_cuts._writer; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'torch')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_manifest_names_exist():
    """The names napari.yaml points at (if the manifest is there yet)."""
    manifest = Path(__file__).resolve().parents[1] / "src" / "napari_cuts" / "napari.yaml"
    if not manifest.exists():
        pytest.skip("napari.yaml not written yet")
    text = manifest.read_text()
    if "napari_cuts._reader:napari_get_reader" in text:
        assert callable(napari_get_reader)
    if "napari_cuts._writer:write_labels" in text:
        assert callable(write_labels)
