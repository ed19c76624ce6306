"""Segmenting new scans: the Python the bundle's ``inference`` workflow names (:mod:`.scans`) and the DICOM SEG it
writes for a DICOM series (:mod:`.dicom_seg`)."""

from .scans import CurrentScan, SaveScanMaskd, ScanDataset, ScanInference, SomeScansFailed, load_weights

__all__ = ["load_weights", "ScanDataset", "SomeScansFailed", "CurrentScan", "SaveScanMaskd", "ScanInference"]
