"""The tumour stage's training rows: each slice of a datalist inside its volume's liver box, carrying the box.

The box is the one inference cuts from the liver stage's prediction (:func:`transforms.liver_crop.liver_box`), here
from the label: the union of the liver pixels over every slice of the volume in its slice set (not only the slices a
list samples), square, with the margin in mm converted with the manifest's pixel spacing.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path


from transforms import liver_mask
from transforms.liver_crop import DEFAULT_MARGIN_MM, Z_MARGIN, liver_box
from workflows.data.slice_set import MANIFEST_NAME, read_manifest, read_mask
from workflows.data.splitting import slices_dirs_of

__all__ = ["UNKNOWN_SPACING_MM", "STAGES", "LiverBoxes"]

logger = logging.getLogger("liver_ct.training")

#: In-plane spacing assumed for a 2D slice set that records none (the Kaggle export, PNG sets): LiTS's median.
UNKNOWN_SPACING_MM = 0.8
#: The training stages: ``whole`` slices (the liver, or liver and tumour) and the tumour on the ``liver_crop``.
STAGES = ("whole", "liver_crop")


class LiverBoxes:
    """Rows of a datalist for the stage being trained: unchanged for ``whole``; for ``liver_crop`` only the slices
    inside their volume's liver box, each with ``"box": [x0, x1, y0, y1, z0, z1]`` (slice indices for z) for
    :class:`transforms.liver_crop.CropToBoxd`.

    Args:
        dataset_dir: the lists folder (its ``split.json`` names the slice sets whose manifests and masks are read).
        stage: ``"whole"`` or ``"liver_crop"``.
        margin_mm: the in-plane margin around the liver.
    """

    def __init__(self, dataset_dir: str | os.PathLike, stage: str = "whole", margin_mm: float = DEFAULT_MARGIN_MM) -> None:
        if stage not in STAGES:
            raise ValueError(f"`stage` must be one of {list(STAGES)}, got {stage!r}.")
        self.dataset_dir, self.stage, self.margin_mm = Path(dataset_dir), stage, float(margin_mm)
        self._boxes: dict[str, list[int] | None] = {}
        self._manifest: dict[str, list[dict]] | None = None

    def _volumes(self) -> dict[str, list[dict]]:
        if self._manifest is None:
            self._manifest = {}
            for slices_dir in slices_dirs_of(self.dataset_dir):
                if (slices_dir / MANIFEST_NAME).is_file():
                    for row in read_manifest(slices_dir):
                        self._manifest.setdefault(str(row["volume_id"]), []).append(row)
        return self._manifest

    def box(self, volume_id: str) -> list[int] | None:
        """The volume's box (z as slice indices), ``None`` when its label has no liver."""
        volume_id = str(volume_id)
        if volume_id not in self._boxes:
            rows = self._volumes().get(volume_id, [])
            liver_rows = [r for r in rows if r["mask"] and r["liver_pixels"]]
            union = None
            for row in liver_rows:
                liver = liver_mask(read_mask(row["mask"]))
                union = liver if union is None else union | liver
            if union is None:
                self._boxes[volume_id] = None
                return None
            spacing = [rows[0]["spacing_row_mm"], rows[0]["spacing_col_mm"]]
            if not all(math.isfinite(s) and s > 0 for s in spacing):
                logger.info(f"volume {volume_id}: no pixel spacing recorded; the {self.margin_mm:g} mm margin assumes "
                            f"{UNKNOWN_SPACING_MM} mm pixels")
                spacing = [UNKNOWN_SPACING_MM] * 2
            x0, x1, y0, y1, _, _ = liver_box(union[..., None], spacing, self.margin_mm, z_margin=0)
            indices = sorted(r["slice_index"] for r in rows)
            liver_indices = sorted(r["slice_index"] for r in liver_rows)
            z0, z1 = max(indices[0], liver_indices[0] - Z_MARGIN), min(indices[-1] + 1, liver_indices[-1] + 1 + Z_MARGIN)
            self._boxes[volume_id] = [x0, x1, y0, y1, z0, z1]
        return self._boxes[volume_id]

    def rows(self, datalist: list[dict]) -> list[dict]:
        """``datalist`` for this stage (see the class)."""
        if self.stage == "whole":
            return datalist
        kept = []
        for row in datalist:
            box = self.box(row["volume_id"])
            if box is not None and box[4] <= int(row["slice_index"]) < box[5]:
                kept.append({**row, "box": box})
        return kept


