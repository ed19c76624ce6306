"""Training and evaluation: chunked, resumable training on MONAI's engines (``training``), several processes
(``distributed``), model files that describe themselves (``model_file``), slice-level and volume-level evaluation
(``slice_evaluation``, ``volume_evaluation``, ``volume_metrics``)."""
