"""What a folder holds: the scans and 2D images a command can read, and which files are labels, not scans."""

from __future__ import annotations

import os
import re
from pathlib import Path

from transforms import is_dicom_series_folder, is_nifti

__all__ = ["LABEL_LIKE", "IMAGE_SUFFIXES_2D", "is_image_2d", "find_scans"]

#: File names that mark a label map (``segmentation-3.nii.gz``, ``ct_seg.nii.gz``, ``mask.png``), not a scan.
LABEL_LIKE = re.compile(r"(seg|label|mask)", re.IGNORECASE)
IMAGE_SUFFIXES_2D = (".png", ".jpg", ".jpeg")


def is_image_2d(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES_2D


def find_scans(path: str | os.PathLike) -> list[Path]:
    """The scans to segment at ``path``: itself when it is a file or a DICOM series folder, else the NIfTI files,
    DICOM series folders and 2D images directly in it, labels beside scans left out.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds nothing to segment.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--input {path}: no such file or folder.")
    if path.is_file() or is_dicom_series_folder(path):
        return [path]
    found = [p for p in sorted(path.iterdir()) if (p.is_file() and (is_nifti(p) or is_image_2d(p))
                                                   and not LABEL_LIKE.search(p.name) and not p.name.startswith("."))
             or (p.is_dir() and is_dicom_series_folder(p))]
    if not found:
        raise FileNotFoundError(f"--input {path}: no NIfTI file, DICOM series folder or 2D image in it.")
    return found
