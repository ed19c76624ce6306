"""Workflows: the command lines and the Python the bundle names.

``synthetic`` (generated LiTS-like data), ``convert`` (scans to slice sets), ``explore`` (report), ``split``
(patient-level split and chunks), ``training`` (chunked, resumable training), ``slice_evaluation``,
``quickstart`` (all of it end to end).
"""
