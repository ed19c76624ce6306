"""CT transforms MONAI lacks: loading with checks, HU windowing, LiTS labels, axial slicing, the network's input
(one definition for training and inference), lesions synthesised in real livers for training, and prediction
clean-up."""

from .labels import (
    LITS_LABELS, TARGET_CHANNELS, TUMOUR_UNKNOWN, LabelToTarget, LabelToTargetd, RemapLabels, RemapLabelsd, check_lits_labels,
    liver_mask, parse_label_map, target_to_lits, tumour_mask,
)
from .lesion_synthesis import LESION_TYPES, SynthesizeLesions, SynthesizeLesionsd, parse_lesion_types
from .loading import LoadScan, LoadScand, dicom_series_files, is_dicom_series_folder, is_nifti, nifti_stem
from .postprocessing import MIN_TUMOUR_MM3, TargetToLabel, TargetToLabeld, TumourInLiver, TumourInLiverd
from .preprocessing import GREY_LEVELS, ResizeSlices, ResizeSlicesd, canonical_grey, network_input
from .slicing import CANONICAL_AXCODES, AxialSlices, AxialSlicesd, axial_axis, to_canonical
from .validation import (
    InvalidScanError, ValidateScan, ValidateScand, check_label_grid, check_volume, unwrap_transform_error,
)
from .windowing import WINDOW_PRESETS, WindowHU, WindowHUd, window_range

__all__ = [
    "LITS_LABELS", "TARGET_CHANNELS", "TUMOUR_UNKNOWN", "LabelToTarget", "LabelToTargetd", "RemapLabels", "RemapLabelsd",
    "check_lits_labels", "liver_mask", "parse_label_map", "target_to_lits", "tumour_mask",
    "LESION_TYPES", "SynthesizeLesions", "SynthesizeLesionsd", "parse_lesion_types",
    "LoadScan", "LoadScand", "dicom_series_files", "is_dicom_series_folder", "is_nifti", "nifti_stem",
    "MIN_TUMOUR_MM3", "TargetToLabel", "TargetToLabeld", "TumourInLiver", "TumourInLiverd",
    "GREY_LEVELS", "ResizeSlices", "ResizeSlicesd", "canonical_grey", "network_input",
    "CANONICAL_AXCODES", "AxialSlices", "AxialSlicesd", "axial_axis", "to_canonical",
    "InvalidScanError", "ValidateScan", "ValidateScand", "check_label_grid", "check_volume", "unwrap_transform_error",
    "WINDOW_PRESETS", "WindowHU", "WindowHUd", "window_range",
]
