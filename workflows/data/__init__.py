"""Data in and out: what a folder holds (``discovery``), scans to slice sets (``conversion``), the slice set and its
manifest (``slice_set``), the patient-level split and chunks (``splitting``, ``reference_lists``), the data report
(``exploration``, ``grey_levels``), generated cases (``synthetic_cases``, ``synthetic_dicom``) and pictures."""
