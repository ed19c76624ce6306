"""Prediction clean-up in LiTS labels: target channels to one label map, tumour kept inside the liver.

The bundle's inference ``postprocessing`` runs, after ``Invertd`` / sigmoid / threshold:
:class:`TargetToLabeld` (channels to 0/1/2), MONAI's ``KeepLargestConnectedComponentd`` (the largest liver with
its tumours) and :class:`TumourInLiverd` (tumour that touches no liver dropped; specks smaller than a volume in
mm³, measured with MONAI's ``remove_small_objects(by_measure=True)``, become the tissue around them).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.transforms.utils import remove_small_objects
from monai.utils import convert_to_dst_type
from scipy import ndimage

from transforms.labels import LITS_LABELS, target_to_lits, tumour_mask

__all__ = ["MIN_TUMOUR_MM3", "TargetToLabel", "TargetToLabeld", "TumourInLiver", "TumourInLiverd"]


class TargetToLabel(Transform):
    """Target channels ``(C, *spatial)`` (0/1 or probabilities, cut at 0.5) to one LiTS map ``(1, *spatial)``
    of uint8, tumour drawn over liver: the inverse of :class:`~transforms.LabelToTarget`."""

    def __init__(self, target: str = "liver") -> None:
        self.target = target

    def __call__(self, pred: NdarrayOrTensor) -> NdarrayOrTensor:
        channels = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        label = target_to_lits(channels, self.target)[None]
        return convert_to_dst_type(label, pred, dtype=torch.uint8 if isinstance(pred, torch.Tensor) else np.uint8)[0]


class TargetToLabeld(MapTransform):
    """Dictionary-based wrapper of :class:`TargetToLabel`."""

    def __init__(self, keys: KeysCollection, target: str = "liver", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.to_label = TargetToLabel(target)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.to_label(d[key])
        return d


#: the smallest tumour inference keeps (mm³): about a 10 mm sphere, RECIST's smallest measurable lesion on CT. On the
#: recipe's held-out and unseen scans it removed 37-100% of the false lesions per scan and no lesion found
#: (benchmarks page)
MIN_TUMOUR_MM3 = 500.0


class TumourInLiver(Transform):
    """Keep tumour where it can be: on a LiTS map ``(1, X, Y, Z)``, drop tumour components (26-connected) that
    touch no liver voxel, and give components smaller than ``min_tumour_mm3`` the tissue around them (liver when the
    map has liver). A map without liver (a tumour-only model) keeps its tumour: the liver is unknown, not absent.
    On one 2D image (``Z == 1``) a lesion's volume is unknown: it is kept when its area reaches the middle section of a
    sphere of ``min_tumour_mm3`` (a disc of the sphere's diameter).

    Args:
        min_tumour_mm3: smallest tumour kept, in mm³ (voxel size from the MetaTensor's affine); 0 keeps all. The
            bundle's default, 500 mm³, is about a sphere of 10 mm, RECIST's smallest measurable lesion on CT.
    """

    def __init__(self, min_tumour_mm3: float = MIN_TUMOUR_MM3) -> None:
        if min_tumour_mm3 < 0:
            raise ValueError(f"`min_tumour_mm3` must be >= 0, got {min_tumour_mm3!r}.")
        self.min_tumour_mm3 = float(min_tumour_mm3)

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        array = (label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)).astype(np.uint8)
        tumour = tumour_mask(array[0])
        if not tumour.any():
            return label
        has_liver = bool((array[0] == LITS_LABELS["liver"]).any())
        out = array.copy()
        if has_liver:
            components, n = ndimage.label(tumour, np.ones((3, 3, 3), bool))
            grown = ndimage.binary_dilation(array[0] == LITS_LABELS["liver"], np.ones((3, 3, 3), bool))
            touching = np.unique(components[grown & tumour])
            out[0][tumour & ~np.isin(components, touching)] = 0
        if self.min_tumour_mm3 > 0:
            pixdim = [float(s) for s in label.pixdim] if isinstance(label, MetaTensor) else [1.0, 1.0, 1.0]
            min_size = self.min_tumour_mm3
            if out.shape[-1] == 1:  # one image: the area of the sphere's middle section, times the nominal thickness
                radius = (3 * self.min_tumour_mm3 / (4 * np.pi)) ** (1 / 3)
                min_size = np.pi * radius ** 2 * pixdim[-1]
            kept = remove_small_objects(tumour_mask(out[0])[None], min_size=min_size, connectivity=3,
                                        by_measure=True, pixdim=pixdim)
            specks = tumour_mask(out[0]) & ~np.asarray(kept[0], bool)
            out[0][specks] = LITS_LABELS["liver"] if has_liver else 0
        return convert_to_dst_type(out, label)[0]


class TumourInLiverd(MapTransform):
    """Dictionary-based wrapper of :class:`TumourInLiver`."""

    def __init__(self, keys: KeysCollection, min_tumour_mm3: float = MIN_TUMOUR_MM3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.clean = TumourInLiver(min_tumour_mm3)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clean(d[key])
        return d

