"""What a held-out patient is scored against, made into volumes: a 2D patient's slices stacked into a scan and its
label map, and another collection's label map in LiTS labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["stack_2d_patient", "truth_as_lits"]


def stack_2d_patient(rows: list[dict], folder: Path, window_hu: list[float]) -> tuple[Path, Path]:
    """A 2D patient's slices (manifest rows of one volume, in slice order) stacked into ``<id>.nii.gz`` and its label
    map ``<id>_label.nii.gz`` in ``folder``, for inference and scoring as a volume. The grey levels become the HU that
    the model's window (``window_hu``) turns back into the very same grey levels; the grid is the canonical
    orientation at the spacing the set records, or :data:`~workflows.data.liver_boxes.UNKNOWN_SPACING_MM` in-plane
    and 1 mm between slices (the metrics in mm are then nominal)."""
    import gzip

    import nibabel as nib

    from workflows.data.liver_boxes import UNKNOWN_SPACING_MM
    from workflows.data.slice_set import read_grey_slice, read_mask
    from workflows.machine.atomic import write_bytes_atomic

    grey = np.stack([read_grey_slice(r["image"])[0] for r in rows], axis=-1).astype(np.float32)
    label = np.stack([read_mask(r["mask"]) for r in rows], axis=-1).astype(np.uint8)
    lo, hi = window_hu
    row_mm = rows[0]["spacing_row_mm"] if np.isfinite(rows[0]["spacing_row_mm"]) else UNKNOWN_SPACING_MM
    col_mm = rows[0]["spacing_col_mm"] if np.isfinite(rows[0]["spacing_col_mm"]) else UNKNOWN_SPACING_MM
    step = rows[0]["slice_thickness_mm"] if np.isfinite(rows[0]["slice_thickness_mm"]) else 1.0
    # the canonical orientation ("PLS"): axis 0 toward posterior, axis 1 toward the patient's left, axis 2 superior
    affine = np.array([[0, -col_mm, 0, 0], [-row_mm, 0, 0, 0], [0, 0, step, 0], [0, 0, 0, 1]], dtype=float)
    folder.mkdir(parents=True, exist_ok=True)
    volume_id = rows[0]["volume_id"]
    paths = folder / f"{volume_id}.nii.gz", folder / f"{volume_id}_label.nii.gz"
    for path, data in zip(paths, ((lo + grey * (hi - lo) / 255.0).astype(np.float32), label)):
        write_bytes_atomic(path, gzip.compress(nib.Nifti1Image(data, affine).to_bytes(), mtime=0))
    return paths

def truth_as_lits(path: Path, label_map: dict | None, folder: Path) -> Path:
    """``path`` as a LiTS label map: itself, or remapped by ``label_map`` into ``folder``."""
    if label_map is None:
        return path
    import gzip

    import nibabel as nib

    from workflows.machine.atomic import write_bytes_atomic

    source = nib.load(path)
    labels = np.asarray(source.dataobj)
    lits = np.zeros(labels.shape, np.uint8)
    for value, lits_value in label_map.items():
        lits[labels == value] = lits_value
    target = folder / path.name
    write_bytes_atomic(target, gzip.compress(nib.Nifti1Image(lits, source.affine).to_bytes(), mtime=0))
    return target
