"""What real liver lesions look like, measured: the ranges the lesion synthesis (:mod:`transforms.lesion_synthesis`)
draws from. One row per lesion (a 26-connected tumour component) of a canonical label map with its image:

- ``volume_ml``, ``longest_axial_mm``: size (the definitions the inference report's lesion table uses too);
- ``contrast``: mean of the lesion minus the mean of the liver in a shell 2-6 mm around it (HU for a CT in HU, grey
  levels for an 8-bit slice set);
- ``ellipsoid_fill``: the lesion's volume over that of the ellipsoid with its second moments (1 for an ellipsoid,
  lower for a lobulated or irregular lesion);
- ``edge_mm``: how wide its edge is: the distance over which the image goes from 10% to 90% of the way from the
  lesion's core to the liver around it (mean radial profile, mm);
- ``depth_mm``: the distance from the lesion's centre to the liver's surface, and ``touches_surface``.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from transforms import liver_mask, tumour_mask

__all__ = ["measure_lesions", "longest_axial_mm"]


def measure_lesions(image: np.ndarray, label: np.ndarray, spacing, min_voxels: int = 20) -> list[dict]:
    """The lesions of ``label`` (LiTS labels, ``(rows, cols, slices)``) on ``image`` (same grid; HU or grey
    levels), ``spacing`` in mm along those axes; components smaller than ``min_voxels`` are left out."""
    spacing = np.asarray(spacing, dtype=float)
    liver = liver_mask(label)
    parts, count = ndimage.label(tumour_mask(label), structure=np.ones((3, 3, 3)))
    outside = ndimage.distance_transform_edt(liver, sampling=spacing)  # depth inside the liver, mm
    rows = []
    for index in range(1, count + 1):
        lesion = parts == index
        voxels = int(lesion.sum())
        if voxels < min_voxels:
            continue
        distance = ndimage.distance_transform_edt(~lesion, sampling=spacing)
        inside = ndimage.distance_transform_edt(lesion, sampling=spacing)
        shell = (distance > 2) & (distance <= 6) & liver & ~tumour_mask(label)
        core = inside >= 0.5 * float(inside.max())
        lesion_mean, liver_mean = float(image[lesion].mean()), float(image[shell].mean()) if shell.any() else np.nan
        core_mean = float(image[core].mean())
        rows.append({
            "volume_ml": round(voxels * float(np.prod(spacing)) / 1000, 3),
            "longest_axial_mm": round(longest_axial_mm(lesion, spacing), 1),
            "contrast": round(lesion_mean - liver_mean, 1),
            "lesion_mean": round(lesion_mean, 1), "liver_mean": round(liver_mean, 1),
            "ellipsoid_fill": round(_ellipsoid_fill(lesion, spacing), 2),
            "edge_mm": _edge_width(image, lesion, distance, inside, core_mean, liver_mean),
            "depth_mm": round(float(outside[tuple(np.round(ndimage.center_of_mass(lesion)).astype(int))]), 1),
            "touches_surface": bool((lesion & ~ndimage.binary_erosion(liver)).any()),
        })
    rows.sort(key=lambda row: row["volume_ml"], reverse=True)
    return rows


def longest_axial_mm(lesion: np.ndarray, spacing) -> float:
    """The longest axial diameter of one lesion ``(rows, cols, slices)`` in mm, edge to edge: the longest chord between
    pixel centres of any axial slice of it, plus one pixel."""
    longest = 0.0
    for k in range(lesion.shape[2]):
        points = np.argwhere(lesion[..., k])
        if len(points) == 0:
            continue
        scaled = points * np.asarray(spacing[:2], dtype=float)
        hull = cv2.convexHull(scaled.astype(np.float32)).reshape(-1, 2) if len(scaled) > 2 else scaled
        gaps = np.linalg.norm(hull[:, None, :] - hull[None, :, :], axis=-1)
        longest = max(longest, float(gaps.max()) + float(np.mean(spacing[:2])))
    return longest


def _ellipsoid_fill(lesion: np.ndarray, spacing: np.ndarray) -> float:
    points = np.argwhere(lesion) * spacing
    if len(points) < 5:
        return float("nan")
    eigen = np.clip(np.linalg.eigvalsh(np.cov(points.T)), 1e-6, None)
    # a solid ellipsoid of semi-axes a, b, c has variances a²/5, b²/5, c²/5; thin slices add spacing²/12
    axes = np.sqrt(5 * (eigen + (spacing.min() ** 2) / 12))
    return float(len(points) * np.prod(spacing) / (4 / 3 * np.pi * np.prod(axes)))


def _edge_width(image, lesion, distance, inside, core_mean, liver_mean) -> float | None:
    """10-90% rise distance of the mean radial profile across the lesion's boundary (signed distance, mm)."""
    if not np.isfinite(liver_mean) or abs(liver_mean - core_mean) < 1e-6:
        return None
    signed = np.where(lesion, -inside, distance)
    near = (signed > -8) & (signed < 8)
    bins = np.arange(-8, 8.5, 1.0)
    which = np.digitize(signed[near], bins)
    values = image[near]
    profile = np.array([values[which == b].mean() if (which == b).any() else np.nan for b in range(1, len(bins))])
    centres = (bins[:-1] + bins[1:]) / 2
    fraction = (profile - core_mean) / (liver_mean - core_mean)
    ok = np.isfinite(fraction)
    if ok.sum() < 4:
        return None
    fraction, centres = np.maximum.accumulate(fraction[ok]), centres[ok]
    low, high = np.interp(0.1, fraction, centres), np.interp(0.9, fraction, centres)
    return round(float(high - low), 1)
