"""DICOM Segmentation objects made by other tools (dcmqi, 3D Slicer, hospital viewers) as LiTS label maps.

A SEG's frames are placed by their own plane position on the grid of the series it labels, as a viewer does,
whatever frame order or referenced instance the writing tool chose. Its segments are mapped by their label or
SNOMED CT code: liver to 1; tumour, lesion, neoplasm, mass, carcinoma or metastasis to 2 (a tumour is inside the
liver, as in LiTS labels); any other segment is left out with a note.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pydicom

__all__ = ["SEG_SOP_CLASS", "is_dicom_seg", "segment_lits_label", "read_dicom_seg", "referenced_series_uid",
           "slice_index_of"]

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: SNOMED CT codes of the segmented property types mapped to LiTS labels
_LIVER_CODES = {"10200004", "39607008"}  # liver, liver structure
_TUMOUR_CODES = {"108369006", "4147007", "52988006", "86049000", "25370001", "14799000"}
_TUMOUR_WORDS = re.compile(r"tumou?r|lesion|neoplas|mass|carcinoma|hcc|metasta|cancer", re.IGNORECASE)


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM Segmentation object (its header only is read)."""
    path = Path(path)
    if not path.is_file() or not pydicom.misc.is_dicom(str(path)):
        return False
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # a damaged file is not a SEG; the series reader names it if it matters
        return False
    return str(header.get("SOPClassUID", "")) == SEG_SOP_CLASS or header.get("Modality") == "SEG"


def referenced_series_uid(seg: pydicom.Dataset) -> str | None:
    """The SeriesInstanceUID a SEG says it labels (ReferencedSeriesSequence), if it says."""
    for item in seg.get("ReferencedSeriesSequence", []):
        if item.get("SeriesInstanceUID"):
            return str(item.SeriesInstanceUID)
    return None


def segment_lits_label(segment: pydicom.Dataset) -> int | None:
    """1 (liver), 2 (tumour) or None (another structure) for one item of a SEG's SegmentSequence."""
    coded = segment.get("SegmentedPropertyTypeCodeSequence")
    code = str(coded[0].get("CodeValue", "")) if coded else ""
    meaning = str(coded[0].get("CodeMeaning", "")) if coded else ""
    words = f"{segment.get('SegmentLabel', '')} {segment.get('SegmentDescription', '')} {meaning}"
    if code in _TUMOUR_CODES or _TUMOUR_WORDS.search(words):
        return 2
    if code in _LIVER_CODES or re.search(r"liver|hepat", words, re.IGNORECASE):
        return 1
    return None


def slice_index_of(position_lps, inverse: np.ndarray, what: str) -> int:
    """The slice ``k`` an image position (LPS, mm) has on a volume whose RAS affine's inverse is ``inverse``."""
    lps = np.array([float(v) for v in position_lps])
    voxel = inverse @ np.array([-lps[0], -lps[1], lps[2], 1.0])
    if not np.allclose(voxel[:2], 0, atol=1e-2) or abs(voxel[2] - round(voxel[2])) > 1e-2:
        raise ValueError(f"{what}: image position {list(lps)} is not on the series' grid (voxel {voxel[:3]}).")
    return int(round(voxel[2]))


def read_dicom_seg(seg_path: str | os.PathLike, affine, shape: tuple[int, int, int],
                   notes: list[str] | None = None) -> np.ndarray:
    """A binary DICOM SEG as a LiTS label map on a series' loaded grid (``affine``, ``shape``, as ``LoadScan``
    gives them: ``(columns, rows, slices)``). What each segment became is appended to ``notes``.

    Raises:
        ValueError: not a SEG, no segment that maps to liver or tumour, or a frame off the series' grid.
    """
    ds = pydicom.dcmread(seg_path)
    if ds.get("Modality") != "SEG":
        raise ValueError(f"{seg_path}: not a DICOM Segmentation (modality {ds.get('Modality')!r}).")
    mapped = {int(s.SegmentNumber): (segment_lits_label(s), str(s.get("SegmentLabel", f"segment {s.SegmentNumber}")))
              for s in ds.SegmentSequence}
    if not any(value for value, _ in mapped.values()):
        shown = ", ".join(repr(name) for _, name in mapped.values())
        raise ValueError(f"{seg_path}: no segment is liver or tumour (segments {shown}); label them so (or with "
                         "their SNOMED CT code) in the tool that made the SEG.")
    if notes is not None:
        names = {1: "liver (1)", 2: "tumour (2)", None: "left out"}
        notes.append(f"{Path(seg_path).name}: " + ", ".join(f"segment {n} {name!r} -> {names[value]}"
                                                             for n, (value, name) in sorted(mapped.items())))
    frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
    inverse = np.linalg.inv(np.asarray(affine, dtype=float))
    label = np.zeros(shape, np.uint8)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else pydicom.Dataset()

    def item(group: pydicom.Dataset, name: str) -> pydicom.Dataset:  # per-frame, else shared by all frames
        return (group if name in group else shared)[name][0]

    for i, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        number = int(item(group, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        value = mapped.get(number, (None, ""))[0]
        if not value:
            continue
        position = item(group, "PlanePositionSequence").ImagePositionPatient
        k = slice_index_of(position, inverse, f"{seg_path} frame {i + 1}")
        mask = frames[i].T > 0
        label[:, :, k][mask] = np.maximum(label[:, :, k][mask], value)
    return label
