"""CT transforms MONAI lacks: loading with checks, HU windowing, LiTS label targets, axial slicing."""

from .labels import (
    LITS_LABELS, TARGET_CHANNELS, LabelToTarget, LabelToTargetd, RemapLabels, RemapLabelsd, check_lits_labels,
    parse_label_map, target_to_lits,
)
from .loading import LoadScan, LoadScand, dicom_series_files, is_dicom_series_folder, is_nifti, nifti_stem
from .slicing import CANONICAL_AXCODES, AxialSlices, AxialSlicesd, axial_axis, to_canonical
from .validation import InvalidScanError, ValidateScan, ValidateScand, check_label_grid, check_volume
from .windowing import WINDOW_PRESETS, WindowHU, WindowHUd, window_range

__all__ = [
    "LITS_LABELS", "TARGET_CHANNELS", "LabelToTarget", "LabelToTargetd", "RemapLabels", "RemapLabelsd",
    "check_lits_labels", "parse_label_map", "target_to_lits",
    "LoadScan", "LoadScand", "dicom_series_files", "is_dicom_series_folder", "is_nifti", "nifti_stem",
    "CANONICAL_AXCODES", "AxialSlices", "AxialSlicesd", "axial_axis", "to_canonical",
    "InvalidScanError", "ValidateScan", "ValidateScand", "check_label_grid", "check_volume",
    "WINDOW_PRESETS", "WindowHU", "WindowHUd", "window_range",
]
