"""DICOM Segmentation objects for a CT series, written and read with highdicom.

A label map on a series' grid (as ``transforms.LoadScan`` loads it: ``(columns, rows, slices)`` with slices
ordered by position) becomes a binary DICOM SEG with one segment per structure (liver, tumour) referencing every
source image. Reading a SEG (``read_dicom_seg``, from :mod:`transforms.dicom_seg`) places each frame by its plane
position, so a SEG made by another tool (dcmqi, 3D Slicer) lands where that tool put it.
"""

from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import torch
from pydicom.sr.codedict import codes

from transforms import dicom_series_files, liver_mask, tumour_mask
from transforms.dicom_seg import read_dicom_seg, slice_index_of

__all__ = ["series_slice_order", "write_dicom_seg", "read_dicom_seg"]

_SEGMENTS = {
    1: ("Liver", codes.SCT.Organ, codes.SCT.Liver, liver_mask),
    2: ("Liver tumour", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Tumor, tumour_mask),
}


def series_slice_order(datasets: list[pydicom.Dataset], affine: np.ndarray | torch.Tensor) -> list[int]:
    """For each dataset, the slice index ``k`` it has in a volume loaded with ``affine`` (RAS, as MONAI gives).

    Raises ``ValueError`` when an image does not sit on the volume's grid (another series, a tilted frame)."""
    inverse = np.linalg.inv(np.asarray(affine, dtype=float))
    return [slice_index_of(ds.ImagePositionPatient, inverse, str(ds.filename)) for ds in datasets]


def _load_series(series_dir: str | os.PathLike) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in dicom_series_files(series_dir)]
    for ds in datasets:  # an empty (0008,0005) is valid DICOM but highdicom refuses it: it means the default
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
        # anonymisers sometimes blank the SOP UIDs in the data set and leave them in the file meta
        for name, meta_name in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not ds.get(name) and ds.file_meta.get(meta_name):
                setattr(ds, name, ds.file_meta[meta_name].value)
    return datasets


def write_dicom_seg(label: np.ndarray, affine: np.ndarray | torch.Tensor, series_dir: str | os.PathLike,
                    output: str | os.PathLike, target: str = "both") -> Path:
    """Write ``label`` (LiTS labels on the series' loaded grid ``(columns, rows, slices)``) as a binary DICOM SEG
    referencing the series in ``series_dir``; ``target`` says which segments to write."""
    datasets = _load_series(series_dir)
    missing = sorted({name for ds in datasets for name in ("StudyInstanceUID", "SeriesInstanceUID",
                                                          "FrameOfReferenceUID", "SOPInstanceUID") if not ds.get(name)})
    if missing:
        raise ValueError(f"{series_dir}: the series has no {', '.join(missing)} (anonymised?), so a DICOM SEG could "
                         "not reference it.")
    order = series_slice_order(datasets, affine)
    numbers = [n for n in _SEGMENTS if (n == 1 and target in ("liver", "both")) or (n == 2 and target in ("tumor", "both"))]
    frames = np.stack([np.stack([_SEGMENTS[n][3](label[:, :, k]).T for n in numbers], axis=-1) for k in order])
    algorithm = hd.AlgorithmIdentificationSequence(name="liver-ct ThreeLevelUNet", version="0.1.0",
                                                   family=codes.DCM.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=_SEGMENTS[n][0], segmented_property_category=_SEGMENTS[n][1],
            segmented_property_type=_SEGMENTS[n][2], algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i, n in enumerate(numbers)
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames.astype(bool), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="liver-ct", manufacturer_model_name="ThreeLevelUNet",
        software_versions="0.1.0", device_serial_number="0", series_description="liver-ct segmentation",
    )
    output = Path(output)
    tmp = output.with_name(f".tmp-{output.name}")
    seg.save_as(tmp)
    os.replace(tmp, output)
    return output
