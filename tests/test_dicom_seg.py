"""DICOM SEG: masks and label maps drawn on a DICOM series written with highdicom,
read back by highdicom and by our reader (as labels on the source grid); SEGs of
other tools; overlapping segments; errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from napari_cuts import __version__, io
from napari_cuts._reader import napari_get_reader
from napari_cuts._writer import write_labels as napari_write_labels
from napari_cuts.errors import ReadError, WriteError

from dicom_helpers import enhanced_multiframe, oblique_iop, write_series

hd = pytest.importorskip("highdicom")

LIVER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom_seg_liver"


def series(tmp_path, name, *, iop, slice_index=None, n=6, order=None, patient=True,
           frame_of_reference="1.2.3.4.5.6"):
    rng = np.random.default_rng(len(name))
    raw = rng.integers(0, 4000, (n, 10, 12)).astype(np.uint16)
    uid = write_series(tmp_path / name, raw, iop=iop, origin=[-120.0, 80.5, 33.0],
                       order=order, slice_index=slice_index, patient=patient,
                       frame_of_reference=frame_of_reference)
    return tmp_path / name, uid


def blob_mask(shape, seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, bool)
    m[1:-1, 2:7, 3:10] = True
    m &= rng.random(shape) > 0.2  # irregular, so an axis flip or a slice shift shows
    return m


def source_ipp_by_uid(folder):
    out = {}
    for f in folder.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = np.asarray(ds.ImagePositionPatient, float)
    return out


def check_seg_against_source(path, img, mask, series_uid, folder, *, label="CUTS mask",
                             algorithm="SEMIAUTOMATIC"):
    """highdicom's reading of the file: references, segment, frames, pixels."""
    seg = hd.seg.segread(path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY"
    ref = seg.ReferencedSeriesSequence
    assert len(ref) == 1 and ref[0].SeriesInstanceUID == series_uid
    uids = img.metadata["sop_instance_uids"]  # array slice order
    assert {str(i.ReferencedSOPInstanceUID) for i in ref[0].ReferencedInstanceSequence} == set(uids)
    desc = seg.get_segment_description(1)
    assert desc.segment_label == label
    assert desc.algorithm_type.value == algorithm
    algo = desc.algorithm_identification[0]
    assert algo.AlgorithmName == "napari-cuts" and algo.AlgorithmVersion == __version__
    # the mask voxel for voxel, in the source's slice order, each frame on its own instance
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    np.testing.assert_array_equal(got[..., 0] > 0, mask)
    ipp = source_ipp_by_uid(folder)
    for item in seg.PerFrameFunctionalGroupsSequence:
        src = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        np.testing.assert_allclose(
            np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float), ipp[src],
            atol=1e-4)
    return seg


def check_reopens_on_grid(path, img, expected_labels):
    back = io.read_image(path)
    assert back.kind == "labels" and back.is_labels and back.format == "dicom_seg"
    assert back.data.shape == img.data.shape
    np.testing.assert_array_equal(back.data, expected_labels)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-5)
    np.testing.assert_allclose(back.spacing, img.spacing, rtol=1e-6)
    (data, kw, kind), = napari_get_reader(str(path))(str(path))
    assert kind == "labels" and "rgb" not in kw
    np.testing.assert_array_equal(data, expected_labels)
    src_kw = img.layer_kwargs()
    np.testing.assert_allclose(kw["scale"], src_kw["scale"], rtol=1e-6)
    np.testing.assert_allclose(kw["translate"], src_kw["translate"], atol=1e-4)
    np.testing.assert_allclose(kw["metadata"]["affine"], src_kw["metadata"]["affine"], atol=1e-5)
    return back


@pytest.mark.parametrize("case", ["oblique_shuffled", "missing_slice", "axial_no_patient"])
def test_mask_to_seg_round_trip(tmp_path, case):
    if case == "oblique_shuffled":
        folder, uid = series(tmp_path, case, iop=oblique_iop(), order=[3, 0, 5, 1, 4, 2])
    elif case == "missing_slice":  # slices 0 1 2 _ 4 5 6: a non-uniform gap, oblique too
        folder, uid = series(tmp_path, case, iop=oblique_iop(), slice_index=[0, 1, 2, 4, 5, 6],
                             order=[5, 2, 0, 4, 1, 3])
    else:  # a minimal header without patient module or frame of reference
        folder, uid = series(tmp_path, case, iop=[1, 0, 0, 0, 1, 0], patient=False,
                             frame_of_reference=None, order=[1, 0, 2, 3, 5, 4])
    img = io.read_image(folder)
    assert img.data.shape == (6, 10, 12)
    if case == "missing_slice":
        assert any("uneven slice spacing" in n for n in img.notes)
    mask = blob_mask(img.data.shape)
    out = io.write_mask(tmp_path / "seg" / "mask.dcm", mask, like=img)
    assert out == tmp_path / "seg" / "mask.dcm"
    check_seg_against_source(out, img, mask, uid, folder)
    check_reopens_on_grid(out, img, mask.astype(np.uint8))


def test_labels_to_seg_one_segment_per_id(tmp_path):
    folder, uid = series(tmp_path, "s", iop=oblique_iop(), order=[2, 4, 0, 1, 3, 5])
    img = io.read_image(folder)
    labels = np.zeros(img.data.shape, np.uint16)
    labels[:3, :5] = 7
    labels[2:, 6:] = 300  # sparse ids: segments 1 and 2
    out = io.write_labels(tmp_path / "labels.dcm", labels, like=img, names={300: "vessel"})
    seg = hd.seg.segread(out)
    assert seg.number_of_segments == 2
    d1, d2 = seg.get_segment_description(1), seg.get_segment_description(2)
    assert d1.segment_label == "CUTS label 7" and d2.segment_label == "vessel"
    assert d1.algorithm_type.value == d2.algorithm_type.value == "AUTOMATIC"
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=img.metadata["sop_instance_uids"], combine_segments=True)
    expected = np.where(labels == 7, 1, np.where(labels == 300, 2, 0))
    np.testing.assert_array_equal(got, expected)
    back = check_reopens_on_grid(out, img, expected.astype(np.uint8))
    assert [s["label"] for s in back.metadata["segments"]] == ["CUTS label 7", "vessel"]
    assert not back.metadata["overlapping"]


def test_overlapping_segments_stay_distinct(tmp_path):
    folder, uid = series(tmp_path, "s", iop=oblique_iop(), order=[5, 4, 3, 2, 1, 0])
    img = io.read_image(folder)
    organ = np.zeros(img.data.shape, bool)
    organ[1:5, 1:9, 1:11] = True
    lesion = np.zeros_like(organ)
    lesion[2:4, 3:6, 4:7] = True  # inside the organ
    out = io.write_segments(tmp_path / "two.dcm", [organ, lesion], ["organ", "lesion"], like=img)
    seg = hd.seg.segread(out)
    assert seg.number_of_segments == 2
    uids = img.metadata["sop_instance_uids"]
    both = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids)
    np.testing.assert_array_equal(both[..., 0] > 0, organ)
    np.testing.assert_array_equal(both[..., 1] > 0, lesion)

    layers = io.read_all(out)  # one labels image per segment
    assert [layer.metadata["segment_label"] for layer in layers] == ["organ", "lesion"]
    np.testing.assert_array_equal(layers[0].data, organ * 1)
    np.testing.assert_array_equal(layers[1].data, lesion * 2)
    assert all(layer.kind == "labels" and layer.data.shape == img.data.shape for layer in layers)
    one = io.read_image(out)  # a composite: the smaller lesion on top of the organ
    np.testing.assert_array_equal(one.data, np.where(lesion, 2, np.where(organ, 1, 0)))
    assert one.metadata["overlapping"] and any("overlap" in n for n in one.notes)
    napari_layers = napari_get_reader(str(out))(str(out))
    assert [k for _, _, k in napari_layers] == ["labels", "labels"]
    assert [kw["name"] for _, kw, _ in napari_layers] == ["two organ", "two lesion"]
    # NIfTI holds one value per voxel: the same call paints them into one label map
    nii = io.write_segments(tmp_path / "two.nii.gz", [organ, lesion], ["organ", "lesion"], like=img)
    np.testing.assert_array_equal(io.read_image(nii).data, one.data)


def test_multiframe_source(tmp_path):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 3000, (5, 7, 9)).astype(np.uint16)
    enhanced_multiframe(tmp_path / "mf.dcm", raw, iop=oblique_iop(), origin=[1.0, 2.0, 3.0],
                        ps=(0.6, 0.8), dz=1.5, order=[4, 2, 0, 3, 1], slopes=[1] * 5,
                        patient=True, frame_of_reference="1.2.3.4.9")
    img = io.read_image(tmp_path / "mf.dcm")
    mask = blob_mask(img.data.shape, seed=4)[:, :7, :9]
    out = io.write_mask(tmp_path / "mf_seg.dcm", mask, like=img, name="kidney")
    seg = hd.seg.segread(out)
    assert seg.get_segment_description(1).segment_label == "kidney"
    # source frame f of the file is array slice order.index(f)
    order = img.metadata["dicom_frame_order"]
    got = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=img.metadata["sop_instance_uids"][0],
        source_frame_numbers=[f + 1 for f in order])
    np.testing.assert_array_equal(got[..., 0] > 0, mask)
    check_reopens_on_grid(out, img, mask.astype(np.uint8))


def test_napari_writer_saves_dcm_from_layer_metadata(tmp_path):
    folder, uid = series(tmp_path, "s", iop=oblique_iop(), order=[1, 3, 5, 0, 2, 4])
    (data, kw, kind), = napari_get_reader(str(folder))(str(folder))
    img = io.read_image(folder)
    mask = blob_mask(data.shape, seed=2)
    # the widget copies the image layer's metadata onto the labels layer it makes
    meta = {"name": "mask", "scale": kw["scale"], "translate": kw["translate"],
            "metadata": dict(kw["metadata"], napari_cuts={"object": "tumour", "seed": 0})}
    written = napari_write_labels(str(tmp_path / "m.dcm"), mask.astype(np.uint8), meta)
    seg = check_seg_against_source(written[0], img, mask, uid, folder, label="tumour")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    check_reopens_on_grid(written[0], img, mask.astype(np.uint8))
    # a labels layer without a DICOM source: a clear error, pointing at NIfTI
    with pytest.raises(WriteError, match=r"\.nii\.gz"):
        napari_write_labels(str(tmp_path / "x.dcm"), mask.astype(np.uint8),
                            {"scale": kw["scale"], "metadata": {}})


def test_dcm_export_without_dicom_source(tmp_path):
    import nibabel as nib

    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 1:3, 1:3] = True
    with pytest.raises(WriteError, match=r"DICOM SEG.*\.nii\.gz"):
        io.write_mask(tmp_path / "m.dcm", mask)
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), np.eye(4)), str(tmp_path / "s.nii"))
    with pytest.raises(WriteError, match=r"nifti.*m\.nii\.gz"):
        io.write_mask(tmp_path / "m.dcm", mask, like=io.read_image(tmp_path / "s.nii"))
    assert not (tmp_path / "m.dcm").exists()


def test_corrupt_seg_is_a_one_line_read_error(tmp_path):
    folder, _ = series(tmp_path, "s", iop=[1, 0, 0, 0, 1, 0])
    img = io.read_image(folder)
    good = io.write_mask(tmp_path / "good.dcm", blob_mask(img.data.shape), like=img)
    raw = good.read_bytes()
    cases = {"trunc.dcm": raw[: len(raw) - 100], "half.dcm": raw[: len(raw) // 2],
             "head.dcm": raw[:400]}
    ds = pydicom.dcmread(good)
    del ds.SegmentSequence  # frames that point at segments nobody describes
    ds.save_as(tmp_path / "noseg.dcm")
    ds = pydicom.dcmread(good)
    ds.PerFrameFunctionalGroupsSequence = ds.PerFrameFunctionalGroupsSequence[:2]
    ds.save_as(tmp_path / "frames.dcm")
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
    for name in [*cases, "noseg.dcm", "frames.dcm"]:
        p = tmp_path / name
        with pytest.raises(ReadError) as info:
            io.read_image(p)
        msg = str(info.value)
        assert str(p) in msg and "\n" not in msg, msg
        assert "Traceback" not in msg


def _nrrd_mask(path: Path) -> np.ndarray:
    nrrd = pytest.importorskip("nrrd", reason="pynrrd reads the reference label map")
    data, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(np.diag(header["space directions"]), [0.810547, 0.810547, 1.0])
    return data.transpose(2, 1, 0) > 0  # (x, y, z) -> (slice, row, column), z ascending


def test_real_seg_from_dcmqi_matches_its_source_label_map():
    if not LIVER.is_dir():
        pytest.skip(f"{LIVER} not found (the shared data sits beside the repository)")
    ct = io.read_image(LIVER / "CT")
    seg = io.read_image(LIVER / "SEG" / "liver.dcm")
    assert seg.kind == "labels" and seg.data.shape == ct.data.shape == (3, 512, 512)
    assert [s["label"] for s in seg.metadata["segments"]] == ["Liver"]
    expected = _nrrd_mask(LIVER / "liver_seg_source.nrrd")
    assert int(expected.sum()) == 107_098
    np.testing.assert_array_equal(seg.data > 0, expected)
    np.testing.assert_array_equal(np.unique(seg.data), [0, 1])
    # on the CT's grid: the layers overlay in napari
    np.testing.assert_allclose(seg.affine, ct.affine, atol=1e-4)
    s_kw, c_kw = seg.layer_kwargs(), ct.layer_kwargs()
    np.testing.assert_allclose(s_kw["scale"], c_kw["scale"], rtol=1e-6)
    np.testing.assert_allclose(s_kw["translate"], c_kw["translate"], atol=1e-4)
    assert ct.metadata["series_uid"] in seg.metadata["referenced_series_uids"]


def test_seg_beside_its_series_opens_as_labels_layer(tmp_path):
    folder, _ = series(tmp_path, "s", iop=oblique_iop(), order=[0, 2, 4, 1, 3, 5])
    img = io.read_image(folder)
    mask = blob_mask(img.data.shape)
    io.write_mask(folder / "zz_seg.dcm", mask, like=img)
    assert io.read_image(folder).kind == "image"  # the series, not the SEG
    layers = napari_get_reader(str(folder))(str(folder))
    assert [k for _, _, k in layers] == ["image", "labels"]
    np.testing.assert_array_equal(layers[1][0], mask)


def test_overlapping_layers_larger_below(tmp_path):
    """The lesion as segment 1, the organ holding it as segment 2: the napari reader
    still gives the organ first (drawn below) and the lesion last (on top), each layer
    with its own segment number, so the lesion is not hidden under the organ."""
    folder, _ = series(tmp_path, "s", iop=[1, 0, 0, 0, 1, 0], n=4)
    img = io.read_image(folder)
    organ = np.zeros(img.data.shape, bool)
    organ[:, 1:9, 1:11] = True
    lesion = np.zeros_like(organ)
    lesion[1:3, 3:5, 4:6] = True
    small = np.zeros_like(organ)
    small[0, 0, 0] = True     # apart, smallest: last
    out = io.write_segments(tmp_path / "o.dcm", [lesion, organ, small],
                            ["lesion", "organ", "dot"], like=img)
    layers = napari_get_reader(str(out))(str(out))
    assert [kw["metadata"]["segment_label"] for _, kw, _ in layers] == ["organ", "lesion", "dot"]
    for (data, kw, kind), mask in zip(layers, [organ, lesion, small]):
        num = kw["metadata"]["segment_number"]
        assert kind == "labels"
        np.testing.assert_array_equal(data, mask * num)
    assert [kw["metadata"]["segment_number"] for _, kw, _ in layers] == [2, 1, 3]


def test_dcmqi_reads_our_seg(tmp_path):
    """An independent reader (dcmqi's segimage2itkimage), when installed."""
    tool = shutil.which("segimage2itkimage") or shutil.which(
        "segimage2itkimage", path=str(Path(sys.executable).parent))
    if tool is None:
        pytest.skip("dcmqi's segimage2itkimage is not installed (`pip install dcmqi`)")
    folder, _ = series(tmp_path, "s", iop=[1, 0, 0, 0, 1, 0], order=[3, 1, 5, 0, 2, 4])
    img = io.read_image(folder)
    mask = blob_mask(img.data.shape, seed=5)
    out = io.write_mask(tmp_path / "m.dcm", mask, like=img)
    (tmp_path / "o").mkdir()
    res = subprocess.run([tool, "--inputDICOM", str(out), "--outputDirectory", str(tmp_path / "o"),
                          "-t", "nifti"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    nii = sorted((tmp_path / "o").glob("*.nii*"))
    assert nii, res.stdout
    back = io.read_image(nii[0])
    # dcmqi writes the segment on the SEG's own grid (LPS->RAS like ours)
    np.testing.assert_array_equal(back.data > 0, mask)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-3)


def test_single_file_2d_source_and_file_moved(tmp_path):
    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm", download=False)
    if src is None:
        pytest.skip("pydicom does not bundle CT_small.dcm in this version")
    shutil.copy(src, tmp_path / "ct.dcm")
    img = io.read_image(tmp_path / "ct.dcm")
    assert img.ndim_spatial == 2
    mask = np.zeros(img.data.shape, bool)
    mask[20:40, 10:50] = True
    (data, kw, _), = napari_get_reader(str(tmp_path / "ct.dcm"))(str(tmp_path / "ct.dcm"))
    meta = {"scale": kw["scale"], "translate": kw["translate"], "metadata": kw["metadata"]}
    out = napari_write_labels(str(tmp_path / "m.dcm"), mask, meta)[0]
    seg = hd.seg.segread(out)
    uid = img.metadata["sop_instance_uids"][0]
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid])
    np.testing.assert_array_equal(got[0, ..., 0] > 0, mask)
    back = io.read_image(out)
    assert back.kind == "labels" and back.data.shape == mask.shape
    np.testing.assert_array_equal(back.data > 0, mask)
    np.testing.assert_allclose(back.layer_kwargs()["scale"], kw["scale"])
    np.testing.assert_allclose(back.layer_kwargs()["translate"], kw["translate"], atol=1e-4)
    # the source moved away since it was opened: a clear error, not a traceback
    (tmp_path / "ct.dcm").rename(tmp_path / "elsewhere.dcm")
    with pytest.raises(WriteError, match="ct.dcm"):
        napari_write_labels(str(tmp_path / "m2.dcm"), mask, meta)


_SEG_BYTES: dict = {}


def _small_seg_bytes(tmp_path_factory) -> bytes:
    if "raw" not in _SEG_BYTES:
        d = tmp_path_factory.mktemp("segfuzz")
        folder, _ = series(d, "s", iop=oblique_iop(), n=3)
        img = io.read_image(folder)
        _SEG_BYTES["raw"] = io.write_mask(d / "m.dcm", blob_mask(img.data.shape), like=img).read_bytes()
    return _SEG_BYTES["raw"]


def test_fuzz_seg_bytes(tmp_path_factory):
    """Flipped bytes and cuts anywhere in a SEG: labels or a ReadError, nothing else."""
    import tempfile
    import warnings

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    raw = _small_seg_bytes(tmp_path_factory)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(flips=st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), max_size=6),
           cut=st.one_of(st.none(), st.integers(132, len(raw))))
    def run(flips, cut):
        buf = bytearray(raw)
        for pos, val in flips:
            buf[pos] = val
        if cut is not None:
            buf = buf[:cut]
        with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = Path(d) / "f.dcm"
            p.write_bytes(bytes(buf))
            try:
                img = io.read_image(p)
            except ReadError as exc:
                assert str(p) in str(exc) and "\n" not in str(exc)
                return
            assert img.data.ndim in (2, 3)

    run()


def test_seg_of_another_tool_that_omits_empty_frames(tmp_path):
    """highdicom's default (and dcmqi's) drops empty frames: the missing slices in
    the middle are put back; missing end slices leave a shorter grid, still in place."""
    from pydicom.sr.codedict import codes

    folder, _ = series(tmp_path, "s", iop=oblique_iop(), n=7, order=[6, 0, 5, 1, 4, 2, 3])
    img = io.read_image(folder)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in img.metadata["dicom_files"]]
    mask = np.zeros(img.data.shape, bool)
    mask[[1, 2, 5], 2:6, 3:8] = True  # slices 0, 3, 4 and 6 empty
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="other", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type="MANUAL")
    seg = hd.seg.Segmentation(
        source_images=headers, pixel_array=mask, segmentation_type="BINARY",
        segment_descriptions=[desc], series_instance_uid=hd.UID(), series_number=5,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="other",
        manufacturer_model_name="other", software_versions="1", device_serial_number="1",
        omit_empty_frames=True)
    assert seg.NumberOfFrames == 3
    seg.save_as(tmp_path / "other.dcm")
    back = io.read_image(tmp_path / "other.dcm")
    assert back.data.shape == (5, 10, 12)  # slices 1..5: the gap refilled, the ends unknown
    np.testing.assert_array_equal(back.data > 0, mask[1:6])
    assert any("omits" in n for n in back.notes) and any("covers 5" in n for n in back.notes)
    # still in place: slice 0 of the SEG is the source's slice 1
    np.testing.assert_allclose(back.affine[:, :3], img.affine[:, :3], atol=1e-5)
    np.testing.assert_allclose(back.affine[:, 3], img.affine @ [1, 0, 0, 1], atol=1e-4)
