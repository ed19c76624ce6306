"""Volume-level segmentation metrics the way the LiTS benchmark reports them (Bilic et al., MedIA 2023).

Per case and structure (liver = label >= 1, tumour = label 2): Dice, VOE (1 - IoU), RVD ((|P| - |G|) / |G|),
ASSD and HD95 in mm (MONAI's surface distances with the voxel spacing). Lesions: 3D connected components of the
tumour (26-connectivity); a true lesion is found when a predicted component overlaps it with IoU > 0.5.
Tumour burden: tumour volume / liver volume.

Conventions for empty masks: both empty -> Dice 1, VOE 0, RVD 0, no distances (NaN); one empty -> Dice 0, VOE 1,
distances NaN (undefined), RVD -1 when only the prediction is empty and NaN when only the truth is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from scipy import ndimage

from transforms import liver_mask, tumour_mask

__all__ = ["dice_score", "iou_score", "overlap_metrics", "surface_metrics", "lesion_detection", "structure_metrics", "case_metrics", "flatten_case",
           "summarise_cases"]

STRUCTURES = {"liver": liver_mask, "tumour": tumour_mask}


def dice_score(tp: int, pred: int, true: int) -> float:
    """Dice from pixel or voxel counts: ``2 tp / (pred + true)``; 1 when both are empty (nothing to find, nothing
    found). The one Dice of the evaluation code, per slice, per case and pooled."""
    return 1.0 if pred + true == 0 else 2 * tp / (pred + true)


def iou_score(tp: int, pred: int, true: int) -> float:
    """IoU (Jaccard) from counts: ``tp / (pred + true - tp)``; 1 when both are empty."""
    union = pred + true - tp
    return 1.0 if union == 0 else tp / union


def overlap_metrics(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Dice, VOE and RVD of two binary masks, plus their voxel counts."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    tp = int(np.count_nonzero(pred & truth))
    n_pred, n_true = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    if n_pred + n_true == 0:
        return {"dice": 1.0, "voe": 0.0, "rvd": 0.0, "tp": 0, "pred_voxels": 0, "true_voxels": 0}
    return {
        "dice": dice_score(tp, n_pred, n_true),
        "voe": 1 - iou_score(tp, n_pred, n_true),
        "rvd": (n_pred - n_true) / n_true if n_true else math.nan,
        "tp": tp, "pred_voxels": n_pred, "true_voxels": n_true,
    }


def surface_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict:
    """ASSD and HD95 in mm (symmetric); NaN when either mask is empty."""
    if not pred.any() or not truth.any():
        return {"assd_mm": math.nan, "hd95_mm": math.nan}
    y_pred = torch.as_tensor(pred[None, None].astype(np.float32))
    y = torch.as_tensor(truth[None, None].astype(np.float32))
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True, spacing=spacing)
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
    return {"assd_mm": float(assd[0, 0]), "hd95_mm": float(hd95[0, 0])}


def lesion_detection(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Count true lesions found (IoU > 0.5 with a predicted component) and predicted components that match."""
    structure = np.ones((3,) * truth.ndim, bool)
    true_labels, n_true = ndimage.label(truth.astype(bool), structure)
    pred_labels, n_pred = ndimage.label(pred.astype(bool), structure)
    true_sizes = np.bincount(true_labels.ravel(), minlength=n_true + 1)
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    both = (true_labels > 0) & (pred_labels > 0)
    pairs, overlaps = np.unique(np.stack([true_labels[both], pred_labels[both]]), axis=1, return_counts=True)
    found, matched = set(), set()
    for (t, p), inter in zip(pairs.T, overlaps):
        if inter / (true_sizes[t] + pred_sizes[p] - inter) > 0.5:
            found.add(int(t))
            matched.add(int(p))
    return {"true_lesions": int(n_true), "pred_lesions": int(n_pred), "found": len(found), "matched_pred": len(matched)}


def structure_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict:
    """Overlap and surface metrics of one structure."""
    return {**overlap_metrics(pred, truth), **surface_metrics(pred, truth, spacing)}


def case_metrics(pred_label: np.ndarray, true_label: np.ndarray, spacing: Sequence[float]) -> dict:
    """Everything for one case from two LiTS label maps (0/1/2) on the same grid; ``spacing`` in mm per axis."""
    if pred_label.shape != true_label.shape:
        raise ValueError(f"prediction {pred_label.shape} and truth {true_label.shape} are not on the same grid.")
    out = {name: structure_metrics(select(pred_label), select(true_label), spacing)
           for name, select in STRUCTURES.items()}
    out["lesions"] = lesion_detection(tumour_mask(pred_label), tumour_mask(true_label))
    burden = {}
    for who, label in (("pred", pred_label), ("true", true_label)):
        liver = np.count_nonzero(liver_mask(label))
        burden[who] = np.count_nonzero(tumour_mask(label)) / liver if liver else math.nan
    out["tumour_burden"] = {**burden, "error": burden["pred"] - burden["true"]}
    return out


def flatten_case(volume_id: str, metrics: dict) -> dict:
    """One CSV row from :func:`workflows.engine.volume_metrics.case_metrics`."""
    row = {"volume_id": volume_id}
    for structure in ("liver", "tumour"):
        for key in ("dice", "voe", "rvd", "assd_mm", "hd95_mm", "pred_voxels", "true_voxels", "tp"):
            row[f"{structure}_{key}"] = metrics[structure][key]
    row.update({f"lesions_{k}": v for k, v in metrics["lesions"].items()})
    row.update({f"tumour_burden_{k}": v for k, v in metrics["tumour_burden"].items()})
    return row


def _mean(values: list[float]) -> dict:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return {"mean": float(np.mean(finite)) if finite else None, "cases": len(finite)}


def summarise_cases(rows: list[dict]) -> dict:
    """Summary over cases: mean per case, pooled (global) Dice, lesion precision/recall, burden error."""
    summary = {"cases": len(rows)}
    for s in ("liver", "tumour"):
        tp = sum(r[f"{s}_tp"] for r in rows)
        volume = sum(r[f"{s}_pred_voxels"] + r[f"{s}_true_voxels"] for r in rows)
        summary[s] = {
            "dice_per_case": _mean([r[f"{s}_dice"] for r in rows]),
            "global_dice": 2 * tp / volume if volume else None,
            **{key: _mean([r[f"{s}_{key}"] for r in rows]) for key in ("voe", "rvd", "assd_mm", "hd95_mm")},
        }
    true_lesions = sum(r["lesions_true_lesions"] for r in rows)
    pred_lesions = sum(r["lesions_pred_lesions"] for r in rows)
    summary["lesions"] = {
        "true": true_lesions, "predicted": pred_lesions,
        "recall": sum(r["lesions_found"] for r in rows) / true_lesions if true_lesions else None,
        "precision": sum(r["lesions_matched_pred"] for r in rows) / pred_lesions if pred_lesions else None,
        "rule": "a true lesion is found when a predicted 3D component overlaps it with IoU > 0.5",
    }
    errors = [r["tumour_burden_error"] for r in rows if not math.isnan(r["tumour_burden_error"])]
    summary["tumour_burden"] = {"rmse": float(np.sqrt(np.mean(np.square(errors)))) if errors else None,
                                "max_abs_error": float(np.max(np.abs(errors))) if errors else None}
    return summary
