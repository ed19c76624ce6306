"""The tumour stage's view of a scan: an axial crop around the liver, and the way back onto the scan's grid.

Every leading LiTS method segments tumours on a crop around the liver: the liver fills about a quarter of a slice,
so the crop gives lesions 2-4x the pixels at the same network cost. One box per volume: the liver's 3D bounding box
(from the label in training, from the liver stage's prediction at inference), made square in-plane (no stretching
when it is resized to the network's size) with a margin in mm, and ``z_margin`` slices above and below. The box may
reach past the image's edge; the crop is padded with ``fill`` there and the paste drops those pixels.

``Box = (x0, x1, y0, y1, z0, z1)``: array indices of the canonical ``(X, Y, Z)`` grid (a slice ``[..., z]`` is an
``(X, Y)`` image, as the slice files hold it), half-open, ``x1 - x0 == y1 - y0``; ``z0, z1`` inside the volume.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["Box", "liver_box", "square_box", "crop_box", "paste_box", "CropToBoxd", "DEFAULT_MARGIN_MM", "Z_MARGIN"]

Box = tuple[int, int, int, int, int, int]
#: In-plane margin around the liver (mm): room for the liver stage's errors and the lesion's rim.
DEFAULT_MARGIN_MM = 15.0
#: Slices kept above and below the liver's first and last slice.
Z_MARGIN = 2


def square_box(x_range: tuple[int, int], y_range: tuple[int, int], margin_px: float) -> tuple[int, int, int, int]:
    """The square ``(x0, x1, y0, y1)`` centred on the half-open ranges, its side the longer extent plus
    ``2 * margin_px`` (rounded up to an even number of pixels)."""
    side = max(x_range[1] - x_range[0], y_range[1] - y_range[0]) + 2 * math.ceil(margin_px)
    side += side % 2
    centre_x, centre_y = (x_range[0] + x_range[1]) // 2, (y_range[0] + y_range[1]) // 2
    return centre_x - side // 2, centre_x + side // 2, centre_y - side // 2, centre_y + side // 2


def liver_box(liver: np.ndarray | torch.Tensor, spacing_mm: Sequence[float], margin_mm: float = DEFAULT_MARGIN_MM,
              z_margin: int = Z_MARGIN) -> Box | None:
    """The box around the liver voxels of ``liver`` ``(X, Y, Z)`` (bool), ``None`` when there are none.

    Args:
        spacing_mm: the in-plane pixel spacing ``(x, y)`` in mm (their mean converts ``margin_mm`` to pixels).
        margin_mm: in-plane margin; ``z_margin``: slices added above and below (clamped to the volume).
    """
    liver = np.asarray(liver.cpu() if isinstance(liver, torch.Tensor) else liver).astype(bool)
    if liver.ndim != 3:
        raise ValueError(f"liver_box expects an (X, Y, Z) mask, got shape {liver.shape}.")
    if not liver.any():
        return None
    xs, ys, zs = (np.flatnonzero(liver.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1)))
    pixel = float(np.mean([float(s) for s in spacing_mm[:2]]))
    if not math.isfinite(pixel) or pixel <= 0:
        raise ValueError(f"liver_box needs the in-plane spacing in mm, got {tuple(spacing_mm)}.")
    x0, x1, y0, y1 = square_box((int(xs[0]), int(xs[-1]) + 1), (int(ys[0]), int(ys[-1]) + 1), margin_mm / pixel)
    depth = liver.shape[2]
    return x0, x1, y0, y1, max(0, int(zs[0]) - z_margin), min(depth, int(zs[-1]) + 1 + z_margin)


def _overlap(start: int, stop: int, size: int) -> tuple[slice, slice]:
    """(the slice of the image, the slice of the crop) that a box side ``start..stop`` shares with ``0..size``."""
    lo, hi = max(start, 0), min(stop, size)
    return slice(lo, hi), slice(lo - start, hi - start)


def crop_box(img: torch.Tensor, box: Sequence[int], fill: float = 0.0) -> torch.Tensor:
    """``img[:, x0:x1, y0:y1(, z0:z1)]`` of a channel-first slice ``(C, X, Y)`` or volume ``(C, X, Y, Z)``,
    padded with ``fill`` where the box reaches past the image."""
    x0, x1, y0, y1 = (int(v) for v in box[:4])
    data = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
    if data.ndim == 4:
        data = data[..., int(box[4]):int(box[5])]
    out = torch.full((data.shape[0], x1 - x0, y1 - y0, *data.shape[3:]), fill, dtype=data.dtype, device=data.device)
    (ix, cx), (iy, cy) = _overlap(x0, x1, data.shape[1]), _overlap(y0, y1, data.shape[2])
    out[:, cx, cy] = data[:, ix, iy]
    return out


def paste_box(crop: torch.Tensor, box: Sequence[int], shape: Sequence[int], fill: float = 0.0) -> torch.Tensor:
    """The inverse of :func:`crop_box` for a volume: ``crop`` ``(C, x1 - x0, y1 - y0, z1 - z0)`` placed into a
    ``(C, *shape)`` volume filled with ``fill``; the parts of the box outside the image are dropped."""
    x0, x1, y0, y1, z0, z1 = (int(v) for v in box)
    out = torch.full((crop.shape[0], *shape), fill, dtype=crop.dtype, device=crop.device)
    (ix, cx), (iy, cy) = _overlap(x0, x1, shape[0]), _overlap(y0, y1, shape[1])
    out[:, ix, iy, z0:z1] = crop[:, cx, cy]
    return out


class CropToBoxd(MapTransform):
    """Crop the slices ``(C, X, Y)`` of ``keys`` to the in-plane box the item carries under ``box_key``
    (``[x0, x1, y0, y1, ...]``, from :class:`workflows.data.liver_boxes.LiverBoxes`); items without a box pass
    unchanged (the whole-slice stage)."""

    def __init__(self, keys: KeysCollection, box_key: str = "box", fill: float = 0.0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_key, self.fill = box_key, fill

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        box = d.pop(self.box_key, None)  # not collated into the batch
        if box is None:
            return d
        for key in self.key_iterator(d):
            d[key] = crop_box(d[key], box[:4], self.fill)
        return d
