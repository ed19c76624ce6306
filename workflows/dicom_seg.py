"""DICOM Segmentation objects for a CT series, written and read with highdicom.

A label map on a series' grid (as ``transforms.LoadScan`` loads it: ``(columns, rows, slices)`` with slices
ordered by position) becomes a binary DICOM SEG with one segment per structure (liver, tumour) referencing every
source image; reading maps each SEG frame back onto the series' slice it references, so a SEG made by another
tool (dcmqi, 3D Slicer) lands where that tool put it.
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

__all__ = ["series_slice_order", "write_dicom_seg", "read_dicom_seg"]

_SEGMENTS = {
    1: ("Liver", codes.SCT.Organ, codes.SCT.Liver, liver_mask),
    2: ("Liver tumour", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Tumor, tumour_mask),
}


def _slice_index(position_lps, inverse: np.ndarray, what: str) -> int:
    lps = np.array([float(v) for v in position_lps])
    voxel = inverse @ np.array([-lps[0], -lps[1], lps[2], 1.0])
    if not np.allclose(voxel[:2], 0, atol=1e-2) or abs(voxel[2] - round(voxel[2])) > 1e-2:
        raise ValueError(f"{what}: image position {list(lps)} is not on the series' grid (voxel {voxel[:3]}).")
    return int(round(voxel[2]))


def series_slice_order(datasets: list[pydicom.Dataset], affine: np.ndarray | torch.Tensor) -> list[int]:
    """For each dataset, the slice index ``k`` it has in a volume loaded with ``affine`` (RAS, as MONAI gives).

    Raises ``ValueError`` when an image does not sit on the volume's grid (another series, a tilted frame)."""
    inverse = np.linalg.inv(np.asarray(affine, dtype=float))
    return [_slice_index(ds.ImagePositionPatient, inverse, str(ds.filename)) for ds in datasets]


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


def read_dicom_seg(seg_path: str | os.PathLike, affine: np.ndarray | torch.Tensor, shape: tuple[int, int, int]) -> np.ndarray:
    """A binary DICOM SEG as a LiTS label map on a series' loaded grid (``affine``, ``shape``, as ``LoadScan``
    gives them). Each frame is placed by its own plane position, as a viewer does, so it does not matter which
    tool wrote it or in what order; a segment labelled or coded as tumour becomes 2, any other segment 1."""
    ds = pydicom.dcmread(seg_path)
    if ds.get("Modality") != "SEG":
        raise ValueError(f"{seg_path}: not a DICOM Segmentation (modality {ds.get('Modality')!r}).")
    tumour_segments = set()
    for segment in ds.SegmentSequence:
        coded = segment.get("SegmentedPropertyTypeCodeSequence")
        code = str(coded[0].CodeValue) if coded else ""
        if "tumo" in str(segment.get("SegmentLabel", "")).lower() or code == codes.SCT.Tumor.value:
            tumour_segments.add(int(segment.SegmentNumber))
    frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
    inverse = np.linalg.inv(np.asarray(affine, dtype=float))
    label = np.zeros(shape, np.uint8)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else pydicom.Dataset()

    def item(group: pydicom.Dataset, name: str) -> pydicom.Dataset:  # per-frame, else shared by all frames
        return (group if name in group else shared)[name][0]

    for i, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = item(group, "PlanePositionSequence").ImagePositionPatient
        k = _slice_index(position, inverse, f"{seg_path} frame {i + 1}")
        number = int(item(group, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        value = 2 if number in tumour_segments else 1
        mask = frames[i].T > 0
        label[:, :, k][mask] = np.maximum(label[:, :, k][mask], value)
    return label
