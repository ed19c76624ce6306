"""Per-scan quality control: the flags a reader should see before trusting a mask, and the lesion table.

Inference records, per scan, what tells a reader which of fifty scans to look at first: no liver found; a liver
volume outside the adult range; the liver touching the first or last slice (cut off by the field of view); slices
thicker than the model was trained on; several disconnected liver parts or tumour outside the liver before the
clean-up; low confidence (the mean probability inside the predicted liver); and per lesion its volume and its
longest axial diameter in mm (the measurement RECIST 1.1 readers take on axial slices).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage

from transforms import TARGET_CHANNELS, liver_mask, tumour_mask
from workflows.data.lesion_measures import longest_axial_mm

__all__ = ["ADULT_LIVER_ML", "LIVER_RANGE_SOURCE", "LOW_CONFIDENCE", "MIN_PART_ML", "BeforeCleanUpd", "lesion_table",
           "quality_flags"]

#: Liver volumes (mL) a whole adult liver falls in. Standard liver volume in adults averages about 1,500 mL
#: (Heinemann et al., Liver Transpl Surg 1999;5:366-368; Urata et al., Hepatology 1995;21:1317-1321); cirrhotic,
#: tumorous or congested livers reach 3,000 mL. Below 800 mL a mask has most likely missed part of the liver.
ADULT_LIVER_ML = (800.0, 3000.0)
LIVER_RANGE_SOURCE = ("adult range 800-3,000 mL (standard liver volume ~1,500 mL: Heinemann 1999, Urata 1995; "
                      "diseased livers up to ~3,000 mL)")
#: Mean probability inside the predicted liver below which the mask is flagged as uncertain. Set on the real
#: samples: the real-data recipe's model (13 epochs, 20 minutes) segments all five labelled real volumes well (liver
#: Dice 0.907-0.964) at 0.970-0.985 (``python -m tests.benchmarks.bench_quality``); 0.95 sits under the lowest.
#: An untrained network gives about 0.6.
LOW_CONFIDENCE = 0.95
#: A disconnected liver part smaller than this (mL) is a speck, not a part worth a flag.
MIN_PART_ML = 10.0


def _voxel_ml(spacing) -> float:
    return float(np.prod(np.asarray(spacing, dtype=float))) / 1000.0


class BeforeCleanUpd(MapTransform):
    """After the sigmoid, before thresholds and clean-up: record in ``d["qc"]`` the liver's mean probability, its
    disconnected parts of at least :data:`MIN_PART_ML`, and the tumour predicted outside the liver (mL); the
    clean-up (largest liver, tumour inside the liver) removes both, so they are seen only here.

    Args:
        target: what the model segments (``liver``, ``tumor``, ``both``): which channel is the liver.
    """

    def __init__(self, keys, target: str = "liver", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = TARGET_CHANNELS[target]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            probs = d[key]
            spacing = torch.linalg.norm(probs.affine[:3, :3].float(), dim=0).tolist() if hasattr(probs, "affine") \
                else [1.0, 1.0, 1.0]
            voxel_ml = _voxel_ml(spacing)
            array = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
            qc = {}
            if "liver" in self.channels:
                liver = array[self.channels.index("liver")]
                inside = liver > 0.5
                qc["liver_confidence"] = round(float(liver[inside].mean()), 3) if inside.any() else None
                parts, count = ndimage.label(inside, structure=np.ones((3, 3, 3)))
                sizes = np.bincount(parts.ravel())[1:] * voxel_ml if count else np.zeros(0)
                kept = sorted((float(v) for v in sizes if v >= MIN_PART_ML), reverse=True)
                qc["liver_parts"] = len(kept)
                qc["liver_parts_ml"] = "/".join(f"{v:.0f}" for v in kept[:4])
                if "tumor" in self.channels:
                    outside = (array[self.channels.index("tumor")] > 0.5) & ~inside
                    qc["tumour_outside_liver_ml"] = round(float(np.count_nonzero(outside)) * voxel_ml, 2)
            d["qc"] = qc
        return d


def lesion_table(label: np.ndarray, spacing) -> list[dict]:
    """The tumours of a canonical label map ``(rows, cols, slices)`` (``spacing`` in mm along those axes) as one
    row per connected lesion (26-connectivity), largest first: volume in mL and the longest axial diameter in mm
    (edge to edge: the longest chord between pixel centres of any axial slice of the lesion, plus one pixel)."""
    tumour = tumour_mask(label)
    parts, count = ndimage.label(tumour, structure=np.ones((3, 3, 3)))
    voxel_ml = _voxel_ml(spacing)
    rows = []
    for index, where in enumerate(ndimage.find_objects(parts), start=1):
        lesion = parts[where] == index
        rows.append({"volume_ml": round(float(lesion.sum()) * voxel_ml, 3),
                     "longest_axial_mm": round(longest_axial_mm(lesion, spacing), 1),
                     "slices": f"{where[2].start}-{where[2].stop - 1}"})
    rows.sort(key=lambda row: row["volume_ml"], reverse=True)
    for number, row in enumerate(rows, start=1):
        row["lesion"] = number
    return rows


def quality_flags(label: np.ndarray, spacing, before: Mapping, trained_slice_mm: float | None,
                  target: str = "liver") -> list[str]:
    """The flags of one scan: its final canonical label map ``(rows, cols, slices)`` with ``spacing`` (mm), what
    :class:`BeforeCleanUpd` recorded, and the thickest slices the model was trained on (``None``: unknown)."""
    flags = []
    liver = liver_mask(label)
    if "liver" in TARGET_CHANNELS[target]:
        liver_ml = float(np.count_nonzero(liver)) * _voxel_ml(spacing)
        if not liver.any():
            flags.append("no liver found")
        elif not ADULT_LIVER_ML[0] <= liver_ml <= ADULT_LIVER_ML[1]:
            flags.append(f"liver volume {liver_ml:.0f} mL outside the adult range {ADULT_LIVER_ML[0]:,.0f}-"
                         f"{ADULT_LIVER_ML[1]:,.0f} mL")
        if liver.any() and (liver[..., 0].any() or liver[..., -1].any()):
            ends = [name for name, k in (("first", 0), ("last", -1)) if liver[..., k].any()]
            flags.append(f"liver touches the {' and '.join(ends)} slice (cut off by the field of view?)")
        if (before.get("liver_parts") or 0) > 1:
            flags.append(f"{before['liver_parts']} disconnected liver parts before clean-up ({before.get('liver_parts_ml')} "
                         "mL; kept: the largest)")
        confidence = before.get("liver_confidence")
        if confidence is not None and confidence < LOW_CONFIDENCE:
            flags.append(f"low confidence: mean liver probability {confidence:.2f} < {LOW_CONFIDENCE}")
    if (before.get("tumour_outside_liver_ml") or 0) > 0:
        flags.append(f"{before['tumour_outside_liver_ml']} mL of tumour outside the liver before clean-up (removed)")
    if trained_slice_mm and float(spacing[2]) > float(trained_slice_mm) + 0.01:
        flags.append(f"slices {float(spacing[2]):.1f} mm thick, the model was trained on <= {float(trained_slice_mm):.1f} mm")
    return flags
