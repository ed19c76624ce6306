"""Volumes to axial slices, in one canonical orientation whatever the stored one.

The canonical orientation is ``CANONICAL_AXCODES = "PLS"`` (nibabel axis codes: the direction each array axis
points to): array axis 0 runs toward the patient's posterior, axis 1 toward the patient's left, axis 2 toward
superior. A slice ``volume[..., k]`` is then an ``(rows, cols)`` image in the radiological convention every CT
viewer shows: anterior at the top, the patient's right on the image's left, slice 0 the most inferior. Which
stored axis is axial is read from the affine (:func:`axial_axis`), so a volume stored LPS, RAS, flipped or
axial-first gives the same slices.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Orientation, Transform

__all__ = ["CANONICAL_AXCODES", "axial_axis", "to_canonical", "AxialSlices", "AxialSlicesd"]

CANONICAL_AXCODES = "PLS"
#: Our affines are RAS (MONAI's readers convert DICOM's LPS), so axis codes use nibabel's RAS labels.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def axial_axis(affine: np.ndarray | torch.Tensor) -> int:
    """The array axis (0, 1 or 2) that runs inferior-superior, i.e. the one axial slices are taken along."""
    affine = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=float)
    codes = nib.aff2axcodes(affine)
    for axis, code in enumerate(codes):
        if code in ("S", "I"):
            return axis
    raise ValueError(f"affine has no inferior-superior axis (axis codes {codes}):\n{affine}")


def to_canonical(img: MetaTensor) -> MetaTensor:
    """Reorient a channel-first 3D image ``(C, X, Y, Z)`` with an affine to :data:`CANONICAL_AXCODES`."""
    if not isinstance(img, MetaTensor) or img.ndim != 4:
        raise ValueError(
            "to_canonical expects a channel-first 3D MetaTensor (C, X, Y, Z) carrying its affine, "
            f"got {type(img).__name__} of shape {tuple(img.shape)}."
        )
    return Orientation(axcodes=CANONICAL_AXCODES, labels=RAS_LABELS)(img)


class AxialSlices(Transform):
    """Split a channel-first volume ``(C, X, Y, Z)`` into its axial slices in the canonical orientation.

    Returns a list of ``(C, rows, cols)`` MetaTensors, inferior to superior. Each slice's meta holds
    ``slice_index`` (k in the canonical volume), ``spacing`` (row, column) in mm, and its ``affine`` is that of
    the one-slice volume ``[..., k:k+1]``, so it keeps its place in patient space.
    """

    def __call__(self, img: MetaTensor) -> list[MetaTensor]:
        canonical = to_canonical(img)
        affine = canonical.affine.clone()
        spacing = tuple(float(s) for s in torch.linalg.norm(affine[:3, :2], dim=0))
        meta = {k: v for k, v in canonical.meta.items() if k not in ("affine", "original_affine")}
        slices = []
        for k in range(canonical.shape[-1]):
            slice_affine = affine.clone()
            slice_affine[:3, 3] = (affine @ torch.tensor([0.0, 0.0, float(k), 1.0], dtype=affine.dtype))[:3]
            data = canonical.as_tensor()[..., k].clone()
            slice_meta = dict(meta, slice_index=k, spacing=spacing)
            slices.append(MetaTensor(data, affine=slice_affine, meta=slice_meta))
        return slices


class AxialSlicesd(MapTransform):
    """Dictionary-based :class:`AxialSlices`: one dict per slice, the ``keys`` sliced together, plus
    ``slice_index``. All keys must share the volume's grid (validate with ``ValidateScand`` first)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slicer = AxialSlices()

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict[Hashable, object]]:
        d = dict(data)
        per_key: dict[Hashable, Sequence[MetaTensor]] = {key: self.slicer(d[key]) for key in self.key_iterator(d)}
        counts = {str(key): len(s) for key, s in per_key.items()}
        if len(set(counts.values())) > 1:
            raise ValueError(f"AxialSlicesd: keys give different slice counts {counts}; their grids differ.")
        n = next(iter(counts.values()), 0)
        out = []
        for k in range(n):
            item = dict(d)
            item.update({key: s[k] for key, s in per_key.items()})
            item["slice_index"] = k
            out.append(item)
        return out
