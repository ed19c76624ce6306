"""A generated case written as a DICOM CT series, geometry consistent with its NIfTI.

One file per axial slice (CT Image Storage, explicit VR little endian), unsigned pixels with rescale slope 1 and
intercept -1024 (so stored value = HU + 1024, as many scanners write), image orientation and positions taken
from the case's affine: a voxel has the same patient coordinates in the series as in ``volume-<i>.nii.gz``.
UIDs come from the seed and the case index, so the same seed gives the same bytes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from pydicom.dataset import FileMetaDataset
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["write_ct_series"]

RESCALE_INTERCEPT = -1024


def _ds(value: float) -> str:
    return f"{value:.6g}"


def write_ct_series(case, series_dir: str | os.PathLike, modality: str = "CT") -> Path:
    """Write ``case`` (a :class:`workflows.data.synthetic_cases.SyntheticCase`) as one DICOM file per slice into
    ``series_dir`` (replaced atomically as a whole).

    ``modality`` other than ``"CT"`` exists to make invalid input for tests of the loader.
    """
    series_dir = Path(series_dir)
    tmp_dir = series_dir.with_name(f".{series_dir.name}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=["liver-ct-synthetic", str(case.seed), str(case.index), *map(str, parts)])

    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    rows, cols, slices = case.hu.shape
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    rotation = ras_to_lps @ case.affine[:3, :3]
    spacing = np.linalg.norm(rotation, axis=0)
    # DICOM's row direction is along a row (increasing column), its column direction is down a column
    row_cosine, column_cosine = rotation[:, 1] / spacing[1], rotation[:, 0] / spacing[0]
    stored = (case.hu.astype(np.int32) - RESCALE_INTERCEPT).astype(np.uint16)

    for k in range(slices):
        position = ras_to_lps @ (case.affine @ np.array([0.0, 0.0, k, 1.0]))[:3]
        instance = slices - k  # scanners number from the head down
        sop_uid = uid("instance", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = modality
        ds.Manufacturer = "liver-ct synthetic phantom"
        ds.PatientName = f"Synthetic^Case{case.index}"
        ds.PatientID = f"SYN-{case.seed}-{case.index}"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20200101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.SeriesNumber, ds.InstanceNumber = 1, instance
        ds.SeriesDescription = "synthetic abdomen CT"
        ds.BodyPartExamined, ds.PatientPosition, ds.KVP = "ABDOMEN", "HFS", "120"
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cosine, *column_cosine)]
        ds.PixelSpacing = [_ds(spacing[0]), _ds(spacing[1])]  # between rows, then between columns
        ds.SliceThickness = _ds(spacing[2])
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.SliceLocation = _ds(position[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(RESCALE_INTERCEPT), "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = np.ascontiguousarray(stored[..., k]).tobytes()
        ds.save_as(tmp_dir / f"IM{instance:04d}.dcm", enforce_file_format=True)

    shutil.rmtree(series_dir, ignore_errors=True)
    os.replace(tmp_dir, series_dir)
    return series_dir
