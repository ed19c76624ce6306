"""Workflows: the command lines and whole jobs at the top, the library behind them in subpackages named for their
jobs. Imports go only downward, each layer using those below it (``tests/test_layout.py`` holds them to it):

- the command lines (verbs: ``convert``, ``explore``, ``split``, ``evaluate``, ``infer``, ``synthetic``), the whole
  jobs (``quickstart``, ``realdata``), what they share (``command_line``) and how Python runs the bundle
  (``bundle``);
- ``inference``: segmenting new scans (the bundle's ``inference`` workflow) and their DICOM SEG;
- ``engine``: chunked training, slice and volume evaluation, metrics, model files, several processes;
- ``data``: data in and out: discovery of scans, conversion to slice sets, the slice set, the patient-level split,
  exploration, generated cases, pictures;
- ``machine``: file safety (atomic writes, folder locks) and machine settings (threads, precision, memory, shards,
  every setting's parser).
"""
