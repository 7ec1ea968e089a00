"""Synthetic DICOM series for the io tests (pydicom only): CT-like slices with
known values and geometry, in shuffled file order, oblique or with missing slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


def rotation(ax, ay, az) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_iop():
    r = rotation(0.3, 0.2, -0.4)
    return list(r[:, 0]) + list(r[:, 1])


def dicom_file_meta(sop_class=CT_STORAGE) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def dicom_base(rows, cols, series_uid, sop_class=CT_STORAGE, *, patient: bool = False,
               frame_of_reference: str | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = dicom_file_meta(sop_class)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    if patient:  # what a scanner writes (type 1/2 attributes of the patient and study)
        ds.PatientName, ds.PatientID = "Test^Cuts", "CUTS-0001"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "A1"
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber = 3
    if frame_of_reference:
        ds.FrameOfReferenceUID = frame_of_reference
    return ds


def write_series(folder: Path, raw: np.ndarray, *, iop, origin, ps=(0.7, 0.7), dz=2.5,
                 slope=0.5, intercept=-100.0, order=None, series_uid=None, desc="series",
                 prefix="img", slice_index=None, patient: bool = False,
                 frame_of_reference: str | None = None):
    """raw: (Z, R, C) uint16 stored values; slice k at origin + slice_index[k] * dz *
    normal (slice_index defaults to k; skip values in it for missing slices). Files
    are written in ``order`` (a permutation of the slices), so that sorting by file
    name would be wrong. Returns the series UID."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    row_dir, col_dir = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(row_dir, col_dir)
    order = list(range(raw.shape[0])) if order is None else order
    slice_index = list(range(raw.shape[0])) if slice_index is None else list(slice_index)
    for n, k in enumerate(order):
        ds = dicom_base(raw.shape[1], raw.shape[2], series_uid, patient=patient,
                        frame_of_reference=frame_of_reference)
        ds.SeriesDescription = desc
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in
                                   np.asarray(origin) + slice_index[k] * dz * normal]
        ds.PixelSpacing = [float(ps[0]), float(ps[1])]
        ds.SliceThickness = float(dz)
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.InstanceNumber = int(slice_index[k]) + 1
        ds.PixelData = raw[k].astype("<u2").tobytes()
        ds.save_as(folder / f"{prefix}{n:03d}.dcm", enforce_file_format=True)
    return series_uid


def enhanced_multiframe(path: Path, raw: np.ndarray, *, iop, origin, ps, dz, order, slopes,
                        patient: bool = False, frame_of_reference: str | None = None):
    """An Enhanced-CT-like multi-frame file with per-frame positions and rescale;
    frame f of the file is slice ``order[f]``."""
    ds = dicom_base(raw.shape[1], raw.shape[2], generate_uid(), ENHANCED_CT_STORAGE,
                    patient=patient, frame_of_reference=frame_of_reference)
    ds.NumberOfFrames = raw.shape[0]
    normal = np.cross(iop[:3], iop[3:])
    shared = Dataset()
    po = Dataset()
    po.ImageOrientationPatient = [float(v) for v in iop]
    pm = Dataset()
    pm.PixelSpacing = [float(ps[0]), float(ps[1])]
    pm.SliceThickness = float(dz)
    shared.PlaneOrientationSequence = Sequence([po])
    shared.PixelMeasuresSequence = Sequence([pm])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for k in order:
        fg = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * dz * normal]
        fg.PlanePositionSequence = Sequence([pp])
        pv = Dataset()
        pv.RescaleSlope = slopes[k]
        pv.RescaleIntercept = -1024
        fg.PixelValueTransformationSequence = Sequence([pv])
        per.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = raw[order].astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
