"""Pictures people look at: slices with liver (green) and tumour (red) drawn over them, written as PNG."""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from transforms import liver_mask, tumour_mask  # noqa: E402
from workflows.machine.atomic import write_bytes_atomic  # noqa: E402

__all__ = ["LIVER_RGB", "TUMOUR_RGB", "overlay", "save_figure", "montage"]

LIVER_RGB, TUMOUR_RGB = (0, 200, 0), (230, 30, 30)


def overlay(image: np.ndarray, mask: np.ndarray | None, alpha: float = 0.35) -> np.ndarray:
    """An RGB picture of an 8-bit slice with liver (green) and tumour (red) filled and outlined."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    if mask is not None:
        for region, colour in ((liver_mask(mask), LIVER_RGB), (tumour_mask(mask), TUMOUR_RGB)):
            if not region.any():
                continue
            rgb[region] = (1 - alpha) * rgb[region] + alpha * np.array(colour, np.float32)
            edge = region & ~ndimage.binary_erosion(region)
            rgb[edge] = colour
    return rgb.clip(0, 255).astype(np.uint8)


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Render a matplotlib figure to PNG, write it atomically, close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def montage(grey: np.ndarray, label: np.ndarray, path: str | os.PathLike, title: str, n: int = 6) -> Path:
    """The ``n`` axial slices of a canonical volume ``(rows, cols, slices)`` with the most liver and tumour, side
    by side with the label drawn over them (evenly spaced slices when the label is empty)."""
    area = liver_mask(label).sum(axis=(0, 1)) + 10 * tumour_mask(label).sum(axis=(0, 1))
    picks = sorted(np.argsort(area)[::-1][:n]) if area.any() else list(np.linspace(0, label.shape[2] - 1, n).astype(int))
    fig, axes = plt.subplots(1, len(picks), figsize=(2.6 * len(picks), 2.9), squeeze=False)
    for ax, k in zip(axes[0], picks):
        ax.imshow(overlay(grey[..., k], label[..., k]))
        ax.set_title(f"slice {k}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{title}: liver green, tumour red", fontsize=9)
    return save_figure(fig, path, dpi=90)


def coronal(grey: np.ndarray, label: np.ndarray, spacing, path: str | os.PathLike, title: str) -> Path:
    """One coronal view of a canonical volume ``(rows, cols, slices)``, through the row with the most liver (the
    middle row when the label is empty), superior at the top, drawn at the true aspect of ``spacing`` (mm)."""
    area = liver_mask(label).sum(axis=(1, 2))
    row = int(np.argmax(area)) if area.any() else label.shape[0] // 2
    picture = overlay(np.ascontiguousarray(grey[row].T[::-1]), np.ascontiguousarray(label[row].T[::-1]))
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.imshow(picture, aspect=float(spacing[2]) / float(spacing[1]))
    ax.set_title(f"{title}: coronal, row {row}", fontsize=8)
    ax.axis("off")
    return save_figure(fig, path, dpi=90)
