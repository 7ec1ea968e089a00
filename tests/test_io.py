"""Tests of napari_cuts.io: reading pictures, NIfTI and DICOM, writing masks/labels."""

from __future__ import annotations

import gzip
import io as _bytesio
import json
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.uid import generate_uid

from napari_cuts import io
from napari_cuts.errors import InputError, ReadError, WriteError

from dicom_helpers import (  # tests/ is on sys.path (pytest's rootdir import mode)
    dicom_base, enhanced_multiframe, oblique_iop, rotation, write_series,
)

# NAPARI_CUTS_FUZZ_EXAMPLES=2000 for a longer fuzzing run
FUZZ = settings(
    max_examples=int(os.environ.get("NAPARI_CUTS_FUZZ_EXAMPLES", "50")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# ----------------------------------------------------------------------------- helpers


def oblique_affine(zooms=(0.8, 0.9, 2.5), origin=(-40.0, 25.0, -12.5)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = rotation(0.2, -0.3, 0.5) @ np.diag(zooms)
    a[:3, 3] = origin
    return a


def save_nifti(path, data, affine, qcode=1, scode=2):
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=qcode)
    img.header.set_sform(affine, code=scode)
    nib.save(img, str(path))
    return img


def bundled(name: str):
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(name, download=False)
    except TypeError:  # older pydicom without download=
        path = None
    if path is None:
        pytest.skip(f"pydicom does not bundle {name} in this version")
    return path


def png_rgb16(arr: np.ndarray, filters=(0, 1, 2, 3, 4)) -> bytes:
    """Encode (H, W, C) uint16 as a 16-bit PNG, cycling through the row filters."""
    h, w, c = arr.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    bpp = 2 * c
    rows = arr.astype(">u2").reshape(h, w * c).view(np.uint8).reshape(h, w * bpp).astype(int)
    out = bytearray()
    prev = np.zeros(w * bpp, int)
    for y in range(h):
        ft = filters[y % len(filters)]
        cur = rows[y]
        left = np.concatenate([np.zeros(bpp, int), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, int), prev[:-bpp]])
        if ft == 0:
            f = cur
        elif ft == 1:
            f = cur - left
        elif ft == 2:
            f = cur - prev
        elif ft == 3:
            f = cur - (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
            f = cur - pred
        out.append(ft)
        out.extend((f % 256).astype(np.uint8).tobytes())
        prev = cur

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b""))


def world_of(affine, idx) -> np.ndarray:
    return (affine @ np.append(np.asarray(idx, float), 1.0))[:3]


# ----------------------------------------------------------------------------- pictures


def test_png_grey_rgb_rgba_palette_16bit(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, rng.integers(0, 256, (20, 30), dtype=np.uint8)])
    grey16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgba).save(tmp_path / "a.png")
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")

    g = io.read_image(tmp_path / "g.png")
    assert g.format == "png" and not g.rgb and g.affine is None
    np.testing.assert_array_equal(g.data, grey)
    assert g.spacing == (1.0, 1.0) and g.ndim_spatial == 2
    c = io.read_image(tmp_path / "c.png")
    assert c.rgb and c.ndim_spatial == 2
    np.testing.assert_array_equal(c.data, rgb)
    a = io.read_image(tmp_path / "a.png")
    assert a.rgb and a.data.shape == (20, 30, 3)
    np.testing.assert_array_equal(a.data, rgb)
    assert any("alpha" in n for n in a.notes)
    g16 = io.read_image(tmp_path / "g16.png")
    assert g16.data.dtype == np.uint16
    np.testing.assert_array_equal(g16.data, grey16)
    p = io.read_image(tmp_path / "p.png")
    assert p.rgb and p.data.shape == (20, 30, 3)
    np.testing.assert_array_equal(p.data, np.asarray(pal.convert("RGB")))
    assert any("palette" in n for n in p.notes)
    kw = c.layer_kwargs()
    assert kw["rgb"] is True and kw["scale"] == (1.0, 1.0) and kw["translate"] == (0.0, 0.0)
    assert kw["name"] == "c" and kw["metadata"]["source"] == str(tmp_path / "c.png")
    json.dumps(kw["metadata"])


@pytest.mark.parametrize("channels", [3, 4, 2])
def test_png_16bit_colour_all_filters(tmp_path, channels):
    rng = np.random.default_rng(channels)
    arr = rng.integers(0, 65536, (11, 9, channels)).astype(np.uint16)
    (tmp_path / "x.png").write_bytes(png_rgb16(arr))
    img = io.read_image(tmp_path / "x.png")
    assert img.data.dtype == np.uint16
    expected = arr[..., :3] if channels == 4 else (arr[..., 0] if channels == 2 else arr)
    np.testing.assert_array_equal(img.data, expected)
    assert img.rgb == (channels != 2)


def test_jpeg_and_tiff(tmp_path):
    import tifffile

    rng = np.random.default_rng(1)
    rgb = (np.linspace(0, 255, 40 * 50 * 3).reshape(40, 50, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.jpeg", quality=95)
    j = io.read_image(tmp_path / "c.jpg")
    assert j.format == "jpeg" and j.rgb and j.data.shape == (40, 50, 3)
    assert np.abs(j.data.astype(int) - rgb).mean() < 4
    jg = io.read_image(tmp_path / "g.jpeg")
    assert not jg.rgb and jg.data.shape == (40, 50)

    rgb16 = rng.integers(0, 65536, (12, 13, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c16.tif", rgb16, photometric="rgb")
    t = io.read_image(tmp_path / "c16.tif")
    assert t.format == "tiff" and t.rgb and t.data.dtype == np.uint16
    np.testing.assert_array_equal(t.data, rgb16)

    rgba = rng.integers(0, 256, (12, 13, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tiff", rgba, photometric="rgb", extrasamples=["unassalpha"])
    ta = io.read_image(tmp_path / "a.tiff")
    np.testing.assert_array_equal(ta.data, rgba[..., :3])

    stack = rng.integers(0, 4000, (5, 12, 3), dtype=np.uint16)  # X == 3: still a stack
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    ts = io.read_image(tmp_path / "s.tif")
    assert not ts.rgb and ts.ndim_spatial == 3
    np.testing.assert_array_equal(ts.data, stack)

    grey16 = rng.integers(0, 65536, (12, 13), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "g16.tif", grey16)
    np.testing.assert_array_equal(io.read_image(tmp_path / "g16.tif").data, grey16)


def test_palette_tiff(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(tmp_path / "p.tif")
    img = io.read_image(tmp_path / "p.tif")
    assert img.rgb
    np.testing.assert_array_equal(img.data, np.asarray(pal.convert("RGB")))


# ----------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti_round_trip_oblique(tmp_path, ext):
    rng = np.random.default_rng(3)
    vox = rng.integers(-1000, 3000, (9, 8, 7)).astype(np.int16)  # (i, j, k)
    aff = oblique_affine()
    src = tmp_path / f"src{ext}"
    save_nifti(src, vox, aff)
    img = io.read_image(src)
    assert img.format == "nifti" and img.ndim_spatial == 3 and not img.rgb
    np.testing.assert_array_equal(img.data, vox.transpose(2, 1, 0))  # (Z, Y, X)
    # the affine maps array (z, y, x) to the same world point as nibabel's (i, j, k)
    for ijk in [(0, 0, 0), (8, 7, 6), (3, 5, 2)]:
        np.testing.assert_allclose(world_of(img.affine, ijk[::-1]), world_of(aff, ijk), atol=1e-4)
    np.testing.assert_allclose(img.spacing, [2.5, 0.9, 0.8], rtol=1e-5)
    np.testing.assert_allclose(img.metadata["nifti_affine"], nib.load(src).affine)
    json.dumps(img.metadata)

    # labels back with the source geometry: data and header geometry exact
    labels = (img.data > 1000).astype(np.uint8) + (img.data > 2000)
    out = io.write_labels(tmp_path / f"labels{ext}", labels, like=img)
    back = io.read_image(out)
    np.testing.assert_array_equal(back.data, labels)
    np.testing.assert_array_equal(back.affine, img.affine)
    s, o = nib.load(src), nib.load(out)
    np.testing.assert_array_equal(np.asarray(o.dataobj), labels.transpose(2, 1, 0))
    np.testing.assert_array_equal(o.affine, s.affine)
    np.testing.assert_array_equal(o.get_qform(), s.get_qform())
    np.testing.assert_array_equal(o.get_sform(), s.get_sform())
    assert int(o.header["qform_code"]) == int(s.header["qform_code"]) == 1
    assert int(o.header["sform_code"]) == int(s.header["sform_code"]) == 2
    assert o.header.get_zooms() == s.header.get_zooms()


def test_nifti_mask_with_like_sform_only_and_differing_qform(tmp_path):
    """qform and sform disagree (and sform is sheared): both are reproduced bit for bit."""
    vox = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    sform = oblique_affine((1.1, 1.2, 3.0))
    sform[0, 1] += 0.3  # shear: not representable as a qform
    qform = np.diag([2.0, 2.0, 2.0, 1.0])
    img = nib.Nifti1Image(vox, None)
    img.header.set_qform(qform, code=1)
    img.header.set_sform(sform, code=4)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    src = io.read_image(tmp_path / "s.nii.gz")
    out = io.write_mask(tmp_path / "m.nii.gz", src.data > 50, like=src)
    s, o = nib.load(tmp_path / "s.nii.gz"), nib.load(out)
    assert o.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(o.affine, s.affine)
    np.testing.assert_array_equal(o.get_qform(), s.get_qform())
    np.testing.assert_array_equal(o.get_sform(), s.get_sform())
    np.testing.assert_array_equal(np.asarray(o.dataobj), (vox > 50).astype(np.uint8))


def test_nifti_2d_and_4d(tmp_path):
    rng = np.random.default_rng(4)
    aff = oblique_affine()
    im2 = rng.random((10, 12)).astype(np.float32)
    save_nifti(tmp_path / "two.nii.gz", im2, aff)
    two = io.read_image(tmp_path / "two.nii.gz")
    assert two.ndim_spatial == 2
    np.testing.assert_array_equal(two.data, im2.T)
    np.testing.assert_allclose(two.spacing, [0.9, 0.8], rtol=1e-5)
    assert len(two.layer_kwargs()["scale"]) == 2
    # a 2D mask goes back on the same grid
    out = io.write_mask(tmp_path / "m2.nii.gz", two.data > 0.5, like=two)
    o = nib.load(out)
    np.testing.assert_array_equal(o.affine, nib.load(tmp_path / "two.nii.gz").affine)
    np.testing.assert_array_equal(np.asarray(o.dataobj), (im2 > 0.5).astype(np.uint8))

    # (X, Y, 1) reads as 2D and writes back as (X, Y, 1)
    save_nifti(tmp_path / "one.nii", im2[:, :, None], aff)
    one = io.read_image(tmp_path / "one.nii")
    assert one.data.shape == (12, 10)
    o1 = nib.load(io.write_mask(tmp_path / "m1.nii", one.data > 0.5, like=one))
    assert o1.shape == (10, 12, 1)

    vol4 = rng.random((6, 7, 5, 3)).astype(np.float32)
    # with a time unit a 4D file is a time series: its first volume (without one, a
    # handful of volumes are sequences: tests/test_sequences.py)
    img4 = nib.Nifti1Image(vol4, aff)
    img4.header.set_qform(aff, code=1)
    img4.header.set_sform(aff, code=2)
    img4.header.set_xyzt_units("mm", "sec")
    nib.save(img4, str(tmp_path / "four.nii.gz"))
    four = io.read_image(tmp_path / "four.nii.gz")
    np.testing.assert_array_equal(four.data, vol4[..., 0].transpose(2, 1, 0))
    assert any("first volume" in n for n in four.notes)


def test_nifti_scaling_and_mni(tmp_path):
    vox = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    img = nib.Nifti1Image(vox, np.eye(4))
    img.header.set_slope_inter(0.5, 10)
    nib.save(img, str(tmp_path / "sc.nii"))
    got = io.read_image(tmp_path / "sc.nii")
    np.testing.assert_allclose(got.data, vox.T * 0.5 + 10)

    mni = Path(__file__).resolve().parents[1].parent / "shared/data/mni152/mni152_2009a_t1_1mm.nii.gz"
    if not mni.exists():
        return
    m = io.read_image(mni)
    ref = nib.load(str(mni))
    assert m.data.shape == ref.shape[::-1]
    np.testing.assert_allclose(m.spacing, ref.header.get_zooms()[::-1])


# ----------------------------------------------------------------------------- DICOM


def test_dicom_series_shuffled_oblique(tmp_path):
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 4000, (6, 10, 12)).astype(np.uint16)
    iop = oblique_iop()
    origin = np.array([-120.0, 80.5, 33.0])
    order = [3, 0, 5, 1, 4, 2]
    write_series(tmp_path / "ser", raw, iop=iop, origin=origin, order=order,
                 ps=(0.7, 0.7), dz=2.5, slope=0.5, intercept=-100.0)
    img = io.read_image(tmp_path / "ser")
    assert img.format == "dicom" and img.data.shape == (6, 10, 12)
    assert img.data.dtype == np.float32
    np.testing.assert_allclose(img.data, raw * 0.5 - 100.0)  # the right order and values
    np.testing.assert_allclose(img.spacing, (2.5, 0.7, 0.7), rtol=1e-6)
    # every voxel lands where DICOM puts it: ipp_k + r * dr * col_dir + c * dc * row_dir (LPS)
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_dir, col_dir)
    for k, r, c in [(0, 0, 0), (5, 9, 11), (2, 3, 7)]:
        lps = origin + k * 2.5 * normal + r * 0.7 * col_dir + c * 0.7 * row_dir
        ras = lps * np.array([-1, -1, 1])
        np.testing.assert_allclose(world_of(img.affine, (k, r, c)), ras, atol=1e-6)
    assert img.metadata["slice_order"] == "position"
    assert img.metadata["series_uid"]
    json.dumps(img.layer_kwargs()["metadata"])

    # a mask written to NIfTI lands on the same world points
    out = io.write_mask(tmp_path / "m.nii.gz", img.data > 500, like=img)
    o = nib.load(out)
    assert int(o.header["sform_code"]) == 1
    np.testing.assert_allclose(o.affine, img.affine[:, [2, 1, 0, 3]], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(o.dataobj), (img.data > 500).T.astype(np.uint8))
    back = io.read_image(out)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-5)


def test_dicom_series_without_positions_uses_instance_number(tmp_path):
    rng = np.random.default_rng(6)
    raw = rng.integers(0, 1000, (4, 8, 9)).astype(np.uint16)
    write_series(tmp_path / "s", raw, iop=[1, 0, 0, 0, 1, 0], origin=[0, 0, 0],
                 order=[2, 0, 3, 1], slope=1, intercept=0)
    for f in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient
        ds.save_as(f)
    img = io.read_image(tmp_path / "s")
    np.testing.assert_array_equal(img.data, raw)
    assert img.data.dtype == np.uint16
    assert img.metadata["slice_order"] == "InstanceNumber"
    assert any("ImagePositionPatient" in n for n in img.notes)


def test_dicom_folder_with_two_series(tmp_path):
    rng = np.random.default_rng(7)
    big = rng.integers(0, 1000, (5, 8, 8)).astype(np.uint16)
    small = rng.integers(0, 1000, (2, 6, 7)).astype(np.uint16)
    uid_big = write_series(tmp_path / "f", big, iop=[1, 0, 0, 0, 1, 0], origin=[0, 0, 0],
                           desc="AX T1", slope=1, intercept=-10, prefix="a")
    uid_small = write_series(tmp_path / "f" / "sub", small, iop=[1, 0, 0, 0, 0, -1],
                             origin=[5, 5, 5], desc="COR loc", slope=1, intercept=0, prefix="b")
    (tmp_path / "f" / "notes.txt").write_text("not an image")
    img = io.read_image(tmp_path / "f")
    assert img.metadata["series_uid"] == uid_big
    np.testing.assert_array_equal(img.data, big.astype(np.int32) - 10)
    assert any("2 image series" in n and "AX T1" in n for n in img.notes)
    every = io.read_all(tmp_path / "f")
    assert [i.metadata["series_uid"] for i in every] == [uid_big, uid_small]
    np.testing.assert_array_equal(every[1].data, small)
    # coronal: rows run inferior (-z in LPS and RAS), slices along -y LPS = +y RAS... as computed
    row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 0, -1.0])
    normal = np.cross(row_dir, col_dir)
    lps = np.array([5, 5, 5]) + 1 * 2.5 * normal + 3 * 0.7 * col_dir + 4 * 0.7 * row_dir
    np.testing.assert_allclose(world_of(every[1].affine, (1, 3, 4)), lps * [-1, -1, 1], atol=1e-6)


def test_dicom_multiframe_enhanced(tmp_path):
    rng = np.random.default_rng(8)
    raw = rng.integers(0, 3000, (5, 7, 9)).astype(np.uint16)
    iop = oblique_iop()
    slopes = [1, 2, 1, 3, 1]
    enhanced_multiframe(tmp_path / "mf.dcm", raw, iop=iop, origin=[1.0, 2.0, 3.0],
                        ps=(0.6, 0.8), dz=1.5, order=[4, 2, 0, 3, 1], slopes=slopes)
    img = io.read_image(tmp_path / "mf.dcm")
    assert img.data.shape == (5, 7, 9)
    expected = np.stack([raw[k].astype(np.int32) * slopes[k] - 1024 for k in range(5)])
    np.testing.assert_array_equal(img.data, expected)
    np.testing.assert_allclose(img.spacing, (1.5, 0.6, 0.8), rtol=1e-6)
    assert img.metadata["n_frames"] == 5
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    lps = np.array([1.0, 2.0, 3.0]) + 4 * 1.5 * np.cross(row_dir, col_dir) + 6 * 0.6 * col_dir + 8 * 0.8 * row_dir
    np.testing.assert_allclose(world_of(img.affine, (4, 6, 8)), lps * [-1, -1, 1], atol=1e-6)


def test_dicom_bundled_ct_mr_match_pydicom_and_nibabel():
    from pydicom.pixels import apply_modality_lut

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel calls its DICOM readers experimental
        from nibabel.nicom import dicomwrappers

    for name in ("CT_small.dcm", "MR_small.dcm"):
        path = bundled(name)
        ds = pydicom.dcmread(path)
        img = io.read_image(path)
        assert img.format == "dicom" and img.ndim_spatial == 2
        np.testing.assert_allclose(img.data, apply_modality_lut(ds.pixel_array, ds))
        np.testing.assert_allclose(img.spacing, [float(v) for v in ds.PixelSpacing])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = dicomwrappers.wrapper_from_data(ds)
            ref = np.asarray(w.affine)  # nibabel: index (row, column, slice) -> LPS
        lps = np.diag([-1.0, -1, 1, 1]) @ img.affine  # ours: (slice, row, column) -> RAS
        np.testing.assert_allclose(lps[:3, 1], ref[:3, 0], atol=1e-5)
        np.testing.assert_allclose(lps[:3, 2], ref[:3, 1], atol=1e-5)
        np.testing.assert_allclose(lps[:3, 3], ref[:3, 3], atol=1e-4)
        assert img.layer_kwargs()["name"] == Path(name).stem


def test_dicom_bundled_multiframe_rtdose():
    path = bundled("rtdose.dcm")
    ds = pydicom.dcmread(path)
    img = io.read_image(path)
    n = int(ds.NumberOfFrames)
    assert img.data.shape == (n, ds.Rows, ds.Columns)
    offsets = np.asarray(ds.GridFrameOffsetVector, float)
    order = np.argsort(offsets * np.sign(offsets[-1] - offsets[0] or 1.0), kind="stable")
    np.testing.assert_allclose(img.spacing[0], np.abs(np.diff(np.sort(offsets))).mean(), rtol=1e-6)
    expected = ds.pixel_array[order].astype(np.float64) * float(ds.DoseGridScaling)
    np.testing.assert_allclose(img.data, expected, rtol=1e-6)


# ----------------------------------------------------------------------------- read errors


def test_read_errors_name_the_file(tmp_path):
    cases = {}
    p = tmp_path / "missing.nii.gz"
    cases[p] = "no such file"
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    cases[p] = "empty"
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    cases[p] = "unsupported"
    p = tmp_path / "random.dcm"
    p.write_bytes(np.random.default_rng(9).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    cases[p] = ""
    src = tmp_path / "full.nii.gz"
    save_nifti(src, np.random.default_rng(9).random((20, 20, 20)).astype(np.float32), np.eye(4))
    p = tmp_path / "trunc.nii.gz"
    p.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    cases[p] = ""
    raw = tmp_path / "full.nii"
    save_nifti(raw, np.zeros((20, 20, 20), np.float32), np.eye(4))
    p = tmp_path / "trunc.nii"
    p.write_bytes(raw.read_bytes()[:2000])
    cases[p] = "truncated"
    p = tmp_path / "bad.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    cases[p] = ""
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    (empty_dir / "readme.txt").write_text("x")
    cases[empty_dir] = "no DICOM images"
    for path, words in cases.items():
        with pytest.raises(ReadError) as info:
            io.read_image(path)
        msg = str(info.value)
        assert str(path) in msg, msg
        assert words.lower() in msg.lower(), msg


def test_is_supported(tmp_path):
    assert io.is_supported("x.nii.gz") and io.is_supported("X.PNG") and io.is_supported("a.tiff")
    assert not io.is_supported("x.txt") and not io.is_supported(tmp_path)
    assert not io.is_supported(12345)
    raw = np.zeros((2, 3, 4), np.uint16)
    write_series(tmp_path / "d", raw, iop=[1, 0, 0, 0, 1, 0], origin=[0, 0, 0])
    assert io.is_supported(tmp_path / "d")
    # a DICOM file without extension is recognised by its magic
    f = next((tmp_path / "d").iterdir())
    f.rename(tmp_path / "d" / "IM0001")
    assert io.is_supported(tmp_path / "d" / "IM0001")
    assert io.read_image(tmp_path / "d" / "IM0001").format == "dicom"
    assert set(io.SUPPORTED_EXTENSIONS) >= {".nii", ".nii.gz", ".dcm", ".png", ".jpg", ".tif"}


# ----------------------------------------------------------------------------- writing


def test_write_dtypes_and_png(tmp_path):
    mask = np.zeros((20, 30), bool)
    mask[5:10, 3:20] = True
    o = nib.load(io.write_mask(tmp_path / "m.nii.gz", mask))
    assert o.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(o.dataobj), mask.T.astype(np.uint8))

    few = (np.arange(600).reshape(20, 30) % 7).astype(np.int64)
    assert nib.load(io.write_labels(tmp_path / "f.nii", few)).get_data_dtype() == np.uint8
    many = np.arange(600).reshape(20, 30).astype(np.int64)  # 600 labels > 255
    o = nib.load(io.write_labels(tmp_path / "l.nii.gz", many))
    assert o.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asarray(o.dataobj), many.T)
    huge = many * 1000
    assert nib.load(io.write_labels(tmp_path / "h.nii", huge)).get_data_dtype() == np.uint32
    for f in tmp_path.glob("*.nii*"):
        assert nib.load(f).get_data_dtype() != np.int64

    io.write_mask(tmp_path / "m.png", mask.astype(np.int64))
    png = np.asarray(Image.open(tmp_path / "m.png"))
    assert png.dtype == np.uint8 and png.ndim == 2
    assert set(np.unique(png)) == {0, 255}
    np.testing.assert_array_equal(png == 255, mask)

    io.write_labels(tmp_path / "c.png", few)
    colour = np.asarray(Image.open(tmp_path / "c.png"))
    assert colour.shape == (20, 30, 3) and colour.dtype == np.uint8
    lut = io.label_colours(int(few.max()))
    np.testing.assert_array_equal(colour, lut[few])
    assert len({tuple(c) for c in lut}) == len(lut)  # distinct colours
    np.testing.assert_array_equal(lut[0], [0, 0, 0])

    io.write_labels(tmp_path / "raw.png", many, colour=False)
    raw = io.read_image(tmp_path / "raw.png")
    assert raw.data.dtype == np.uint16
    np.testing.assert_array_equal(raw.data, many)

    with pytest.raises(InputError):
        io.write_mask(tmp_path / "neg.nii", np.array([[0, -1], [2, 3]]))
    with pytest.raises(InputError):
        io.write_mask(tmp_path / "v.png", np.zeros((3, 4, 5), np.uint8))
    with pytest.raises(WriteError, match="bad.jpg"):
        io.write_mask(tmp_path / "bad.jpg", mask)


def test_write_with_spacing_and_provenance(tmp_path):
    vol = np.zeros((4, 5, 6), np.uint8)
    vol[1:3, 2:4, 1:5] = 1
    out = io.write_mask(tmp_path / "seg.nii.gz", vol, spacing=(2.5, 0.7, 0.6),
                        provenance={"seed": 3, "level": 2, "parameters": {"k": np.int64(10)}})
    o = nib.load(out)
    np.testing.assert_allclose(o.header.get_zooms(), (0.6, 0.7, 2.5), rtol=1e-6)
    back = io.read_image(out)
    np.testing.assert_allclose(back.spacing, (2.5, 0.7, 0.6), rtol=1e-6)
    np.testing.assert_array_equal(back.data, vol)
    side = json.loads((tmp_path / "seg.json").read_text())
    assert side["seed"] == 3 and side["parameters"] == {"k": 10}
    from napari_cuts import __version__

    assert side["napari_cuts_version"] == __version__
    descrip = bytes(o.header["descrip"]).rstrip(b"\x00").decode()
    assert "napari-cuts" in descrip and "seed=3" in descrip and len(descrip) <= 80


def test_write_shape_mismatch_with_like(tmp_path):
    save_nifti(tmp_path / "s.nii", np.zeros((5, 6, 7), np.int16), oblique_affine())
    src = io.read_image(tmp_path / "s.nii")
    with pytest.raises(InputError, match="does not match"):
        io.write_mask(tmp_path / "m.nii", np.zeros((6, 6, 5), bool), like=src)


def test_write_error_parent_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "mask.nii.gz"
    with pytest.raises(WriteError) as info:
        io.write_mask(target, np.ones((4, 4), bool))
    assert str(target) in str(info.value)
    assert not target.exists()


def test_write_is_atomic_when_replace_fails(tmp_path, monkeypatch):
    final = tmp_path / "keep.png"
    io.write_mask(final, np.ones((4, 4), bool))
    before = final.read_bytes()

    def boom(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(WriteError) as info:
        io.write_mask(final, np.zeros((4, 4), bool))
    assert str(final) in str(info.value)
    with pytest.raises(WriteError):
        io.write_labels(tmp_path / "new.nii.gz", np.ones((3, 3, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]  # no temp files left
    assert final.read_bytes() == before  # the old file is untouched


# ----------------------------------------------------------------------------- fuzzing


def _read_or_readerror(path):
    try:
        img = io.read_image(path)
    except ReadError as exc:
        assert str(path) in str(exc)
        return None
    assert isinstance(img.data, np.ndarray) and img.data.ndim in (2, 3)
    assert all(s > 0 and np.isfinite(s) for s in img.spacing)
    json.dumps(img.layer_kwargs()["metadata"], default=str)
    return img


@FUZZ
@given(payload=st.binary(min_size=0, max_size=2048),
       ext=st.sampled_from([".png", ".jpg", ".tif", ".nii", ".nii.gz", ".dcm"]))
def test_fuzz_random_bytes(payload, ext):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"f{ext}"
        p.write_bytes(payload)
        _read_or_readerror(p)


_NIFTI_FIELDS = {
    "dim": st.lists(st.integers(-5, 40000), min_size=8, max_size=8),
    "datatype": st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 2304, 999]),
    "bitpix": st.integers(0, 128),
    "pixdim": st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=8, max_size=8),
    "vox_offset": st.floats(-10, 1e6, width=32),
    "scl_slope": st.floats(allow_nan=True, allow_infinity=True, width=32),
    "scl_inter": st.floats(allow_nan=True, allow_infinity=True, width=32),
    "qform_code": st.integers(-3, 10),
    "sform_code": st.integers(-3, 10),
    "quatern_b": st.floats(allow_nan=True, allow_infinity=True, width=32),
    "srow_x": st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=4, max_size=4),
}


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(sorted(_NIFTI_FIELDS)), st.none(), max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: _NIFTI_FIELDS[k] for k in keys})),
    flips=st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), max_size=4),
    gz=st.booleans(), cut=st.one_of(st.none(), st.integers(0, 800)))
def test_fuzz_nifti_headers(fields, flips, gz, cut):
    img = nib.Nifti1Image(np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3), oblique_affine())
    buf = bytearray(img.to_bytes())
    hdr = nib.Nifti1Header.from_fileobj(_bytesio.BytesIO(bytes(buf[:348])), check=False)
    for k, v in fields.items():
        try:
            hdr[k] = v
        except Exception:  # noqa: BLE001 - a value the field cannot hold: skip it
            pass
    buf[:348] = hdr.binaryblock
    for pos, val in flips:
        buf[pos] = val
    if cut is not None:
        buf = buf[:cut]
    payload = gzip.compress(bytes(buf)) if gz else bytes(buf)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("f.nii.gz" if gz else "f.nii")
        p.write_bytes(payload)
        _read_or_readerror(p)


_floats = st.floats(allow_nan=True, allow_infinity=True)


@FUZZ
@given(
    rows=st.integers(0, 40), cols=st.integers(0, 40), frames=st.integers(-1, 6),
    bits=st.sampled_from([1, 8, 12, 16, 32, 64]), samples=st.sampled_from([1, 2, 3, 4]),
    photometric=st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "XYZ"]),
    signed=st.integers(0, 1), n_bytes=st.integers(0, 20000),
    iop=st.lists(_floats, min_size=0, max_size=7), ipp=st.lists(_floats, min_size=0, max_size=4),
    spacing=st.lists(_floats, min_size=0, max_size=3), slope=_floats, intercept=_floats,
    planar=st.integers(0, 1), folder=st.booleans(),
    extra=st.lists(st.tuples(st.sampled_from([0x0018, 0x0020, 0x0028, 0x5200]),
                             st.integers(0, 0xFFFF), st.binary(max_size=16)), max_size=3),
)
def test_fuzz_dicom_tags(rows, cols, frames, bits, samples, photometric, signed, n_bytes,
                         iop, ipp, spacing, slope, intercept, planar, folder, extra):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values we set
        _fuzz_dicom(rows, cols, frames, bits, samples, photometric, signed, n_bytes,
                    iop, ipp, spacing, slope, intercept, planar, folder, extra)


def _fuzz_dicom(rows, cols, frames, bits, samples, photometric, signed, n_bytes,
                iop, ipp, spacing, slope, intercept, planar, folder, extra):
    ds = dicom_base(rows, cols, generate_uid())
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, max(bits - 1, 0)
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.PixelRepresentation = signed
    ds.PlanarConfiguration = planar
    if frames >= 0:
        ds.NumberOfFrames = frames
    if iop:
        ds.ImageOrientationPatient = [f"{v:.6g}"[:16] for v in iop]
    if ipp:
        ds.ImagePositionPatient = [f"{v:.6g}"[:16] for v in ipp]
    if spacing:
        ds.PixelSpacing = [f"{v:.6g}"[:16] for v in spacing]
    ds.RescaleSlope = f"{slope:.6g}"[:16]
    ds.RescaleIntercept = f"{intercept:.6g}"[:16]
    ds.PixelData = np.random.default_rng(n_bytes).integers(0, 256, n_bytes + n_bytes % 2, dtype=np.uint8).tobytes()
    for group, elem, value in extra:  # random tags, possibly clobbering real ones as raw bytes
        if (group, elem) != (0x7FE0, 0x0010):
            ds.add_new((group, elem), "OB", value + b"\x00" * (len(value) % 2))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.dcm"
        try:
            ds.save_as(p, enforce_file_format=True)
        except Exception:  # noqa: BLE001 - pydicom refused to write these tags
            return
        _read_or_readerror(Path(d) if folder else p)
