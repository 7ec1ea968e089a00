"""GUI test of the widget's "export all objects" as a DICOM SEG (napari viewer under
Xvfb), issue 17: a small synthetic DICOM series (oblique, files in shuffled order) is
opened through the plugin's reader, segmented through the widget, three objects are
made by clicks (a lesion, the organ holding it, a separate structure), exported as one
SEG, and the file is read back by highdicom, by our reader, by dcmqi when installed,
and reopened in napari through the plugin's reader.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_helpers import oblique_iop, write_series
from test_widget import PLUGIN, WIDGET, fake_click

pytestmark = pytest.mark.gui
hd = pytest.importorskip("highdicom")

SHAPE = (8, 40, 40)
ORDER = [3, 7, 0, 5, 1, 6, 2, 4]       # file order != slice order
ORIGIN = [-60.0, 40.5, 12.0]
LESION_C = (4, 18, 16)


def phantom():
    """Stored uint16 values (Z, Y, X): dark air, a grey ellipsoidal organ, a bright
    ball (the lesion) inside it, and a dim bar apart from the organ.
    Returns (raw, organ, lesion, bar) masks in array order."""
    z, y, x = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]].astype(float)
    organ = ((z - 3.5) / 4.2) ** 2 + ((y - 20) / 15) ** 2 + ((x - 17) / 14) ** 2 < 1
    lz, ly, lx = LESION_C
    lesion = ((z - lz) / 2.2) ** 2 + ((y - ly) / 5) ** 2 + ((x - lx) / 5) ** 2 < 1
    bar = (y >= 6) & (y < 34) & (x >= 34) & (x < 38)
    rng = np.random.default_rng(3)
    raw = 200 + 1400 * organ + 500 * lesion + 700 * bar + rng.normal(0, 20, SHAPE)
    return raw.clip(0, 65535).astype(np.uint16), organ, lesion & organ, bar


@pytest.fixture
def dicom_series(tmp_path):
    raw, *masks = phantom()
    uid = write_series(tmp_path / "series", raw, iop=oblique_iop(), origin=ORIGIN,
                       ps=(0.8, 0.8), dz=2.0, order=ORDER, patient=True,
                       frame_of_reference="1.2.3.4.5.6.7")
    return tmp_path / "series", uid, masks


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def best_level(hier, point, target, lo=0, hi=None):
    """The level in [lo, hi) whose structure under ``point`` best matches ``target``."""
    hi = hier.n_levels if hi is None else hi
    return max(range(lo, hi), key=lambda lv: dice((lab := hier.labels(lv)) == lab[point],
                                                  target))


def ipp_by_uid(folder):
    out = {}
    for f in folder.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = np.asarray(ds.ImagePositionPatient, float)
    return out


def test_export_objects_as_dicom_seg(make_napari_viewer, dicom_series, tmp_path):
    from napari.layers import Labels

    from napari_cuts import io
    from napari_cuts.pipeline import train_volume_encoder

    folder, series_uid, (organ, lesion, bar) = dicom_series
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.run_sync = True
    (src_layer,) = viewer.open(str(folder), plugin=PLUGIN)
    img = io.read_image(folder)                      # the source as our reader sees it
    assert src_layer.data.shape == SHAPE == img.data.shape
    widget.set_encoder(train_volume_encoder(np.asarray(src_layer.data, np.float32),
                                            spacing=tuple(src_layer.scale), epochs=1, seed=0))
    assert widget.segment(), widget.last_message
    hier = widget.results[0].hierarchy
    assert hier.shape == SHAPE

    # object 1: the lesion (a fine level); object 2: the organ holding it (a coarser
    # level, clicked on the lesion too, so the lesion lies inside it); object 3: the bar
    lv_lesion = best_level(hier, LESION_C, lesion)
    lab = hier.labels(lv_lesion)
    lesion_struct = lab == lab[LESION_C]
    coarser = [lv for lv in range(lv_lesion + 1, hier.n_levels)
               if ((lb := hier.labels(lv)) == lb[LESION_C]).sum() > lesion_struct.sum()
               and (lb == lb[LESION_C]).sum() < 0.8 * np.prod(SHAPE)]
    assert coarser, "no coarser level holds the lesion in a larger structure"
    lv_organ = max(coarser, key=lambda lv: dice((lb := hier.labels(lv)) == lb[LESION_C],
                                                organ))
    bar_pt = (4, 20, 35)
    lv_bar = best_level(hier, bar_pt, bar)

    widget.set_level(lv_lesion)
    fake_click(widget, widget.levels_layer, LESION_C)
    widget.rename_object(1, "lesion")
    widget.set_level(lv_organ)
    assert widget.new_object() == 2
    fake_click(widget, widget.levels_layer, LESION_C)
    widget.rename_object(2, "liver (organ)")
    widget.set_level(lv_bar)
    assert widget.new_object() == 3
    fake_click(widget, widget.levels_layer, bar_pt)
    widget.rename_object(3, "bar")

    objs = widget.objects.model.objects
    masks = {o.name: np.asarray(o.mask, bool) for o in objs}
    names = [o.name for o in objs]
    assert names == ["lesion", "liver (organ)", "bar"]
    m_les, m_org, m_bar = (masks[n] for n in names)
    assert m_les.any() and m_bar.any()
    # the lesion lies inside the organ, which is strictly larger: they overlap
    assert np.all(m_org[m_les]) and m_org.sum() > m_les.sum()
    # the lesion is 500 above the organ (noise SD 20): at its best level one structure,
    # all of it but a few boundary voxels; the bar is a separate structure
    assert dice(m_les, lesion) >= 0.9 and not (m_bar & m_org).any()
    # the one label map shows the later object on top: the lesion is hidden there
    assert not np.any(widget.objects.model.labels() == 1)

    # ---- export every object as one DICOM SEG
    out = widget.export(tmp_path / "out" / "objects.dcm", what="objects")
    assert out == [str(tmp_path / "out" / "objects.dcm")], widget.last_message
    assert widget.last_message[0] == "info" and "3 object" in widget.last_message[1]
    sidecar = json.loads((tmp_path / "out" / "objects.json").read_text())
    assert sidecar["names"] == {"1": "lesion", "2": "liver (organ)", "3": "bar"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["objects.dcm",
                                                                    "objects.json"]

    # highdicom: one segment per object, named, each frame on its own source instance
    seg = hd.seg.segread(out[0])
    assert seg.number_of_segments == 3
    assert [seg.get_segment_description(i + 1).segment_label for i in range(3)] == names
    ref = seg.ReferencedSeriesSequence
    assert len(ref) == 1 and ref[0].SeriesInstanceUID == series_uid
    uids = img.metadata["sop_instance_uids"]
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids)
    assert got.shape == SHAPE + (3,)
    for i, n in enumerate(names):
        np.testing.assert_array_equal(got[..., i] > 0, masks[n])
    assert np.all(got[..., 1][m_les] > 0)            # the overlap is kept in both
    ipp = ipp_by_uid(folder)
    src0 = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    sh = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(sh.PlaneOrientationSequence[0].ImageOrientationPatient,
                               src0.ImageOrientationPatient, atol=1e-6)
    np.testing.assert_allclose(sh.PixelMeasuresSequence[0].PixelSpacing, src0.PixelSpacing)
    assert seg.Rows == src0.Rows and seg.Columns == src0.Columns
    assert len(seg.PerFrameFunctionalGroupsSequence) == 3 * SHAPE[0]  # no frame omitted
    for item in seg.PerFrameFunctionalGroupsSequence:
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0]
                  .ReferencedSOPInstanceUID)
        np.testing.assert_allclose(item.PlanePositionSequence[0].ImagePositionPatient,
                                   ipp[uid], atol=1e-4)
    assert seg.FrameOfReferenceUID == "1.2.3.4.5.6.7"

    # our reader: one labels image per segment on the source grid, the masks exact
    back = io.read_all(out[0])
    # larger segments first (napari draws them below): organ, bar, lesion
    by_size = sorted(names, key=lambda n: (-int(masks[n].sum()), names.index(n)))
    assert by_size[0] == "liver (organ)" and by_size[-1] == "lesion"
    assert [b.metadata["segment_label"] for b in back] == by_size
    by_name = {b.metadata["segment_label"]: b for b in back}
    for i, n in enumerate(names):
        b = by_name[n]
        assert b.kind == "labels" and b.metadata["segment_number"] == i + 1
        np.testing.assert_array_equal(b.data, masks[n] * (i + 1))
        np.testing.assert_allclose(b.affine, img.affine, atol=1e-5)
        np.testing.assert_allclose(b.spacing, img.spacing, rtol=1e-6)
    one = io.read_image(out[0])
    assert one.metadata["overlapping"]
    assert [s["label"] for s in one.metadata["segments"]] == names

    # reopened in napari through the plugin: one Labels layer per segment, every one
    # visible, in place on the source, larger ones below so none hides another
    n_before = len(viewer.layers)
    new = viewer.open(out[0], plugin=PLUGIN)
    assert len(viewer.layers) == n_before + 3
    assert [lay.name for lay in new] == [f"objects {n}" for n in by_size]
    colours = []
    for lay in new:
        assert isinstance(lay, Labels) and lay.visible and lay.opacity > 0
        n = lay.metadata["segment_label"]
        value = lay.metadata["segment_number"]
        np.testing.assert_array_equal(np.asarray(lay.data) > 0, masks[n])
        assert set(np.unique(lay.data)) == {0, value}
        np.testing.assert_allclose(lay.scale, src_layer.scale, rtol=1e-6)
        np.testing.assert_allclose(lay.translate, src_layer.translate, atol=1e-4)
        colours.append(tuple(np.round(lay.get_color(value), 3)))
    assert len(set(colours)) == 3                      # distinct colours
    order = [lay.name for lay in viewer.layers]
    assert order.index("objects lesion") > order.index("objects liver (organ)")
    # the lesion layer is drawn over the organ layer, so inside the organ the lesion
    # shows: the top-most layer holding each lesion voxel is the lesion's
    top = np.full(SHAPE, "", dtype=object)
    for lay in new:
        top[np.asarray(lay.data) > 0] = lay.metadata["segment_label"]
    assert np.all(top[m_les] == "lesion") and np.all(top[m_org & ~m_les] == "liver (organ)")

    # dcmqi, an independent reader (when installed)
    tool = shutil.which("segimage2itkimage") or shutil.which(
        "segimage2itkimage", path=str(Path(sys.executable).parent))
    if tool is None:
        pytest.skip("dcmqi's segimage2itkimage is not installed (`pip install dcmqi`); "
                    "the highdicom, reader and napari checks passed")
    dq = tmp_path / "dcmqi"
    dq.mkdir()
    res = subprocess.run([tool, "--inputDICOM", out[0], "--outputDirectory", str(dq),
                          "-t", "nifti"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    meta = json.loads((dq / "meta.json").read_text())
    labels_by_file = {}
    for group in meta["segmentAttributes"]:
        for a in group:
            labels_by_file[str(a["labelID"])] = a["SegmentLabel"]
    files = sorted(dq.glob("*.nii*"))
    assert len(files) == 3, [f.name for f in files]
    seen = set()
    for f in files:
        name = labels_by_file[f.name.split(".")[0]]
        nii = io.read_image(f)
        np.testing.assert_array_equal(nii.data > 0, masks[name])
        np.testing.assert_allclose(nii.affine, img.affine, atol=1e-3)
        seen.add(name)
    assert seen == set(names)
