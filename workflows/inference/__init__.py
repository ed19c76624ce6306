"""Segmenting new scans: the Python the bundle's ``inference`` workflow names (:mod:`.scans`) and the DICOM SEG it
writes for a DICOM series (:mod:`.dicom_seg`)."""

from .scans import NOT_SEGMENTED, CurrentScan, SaveScanMaskd, ScanDataset, ScanInference, SomeScansFailed, load_weights

__all__ = ["NOT_SEGMENTED", "load_weights", "ScanDataset", "SomeScansFailed", "CurrentScan", "SaveScanMaskd", "ScanInference"]
