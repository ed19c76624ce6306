"""The one path from whole grey levels to the network's input, shared by training, evaluation and inference.

Training reads 8-bit slices (``workflows.convert`` wrote them with :class:`~transforms.WindowHU`); inference
windows a whole volume with the same :class:`~transforms.WindowHU`. Both then go through :func:`network_input`:
grey levels 0..255 to 0..1 (MONAI's ``ScaleIntensityRange``), then each axial slice resized to
``spatial_size x spatial_size`` with :class:`ResizeSlices`, which resizes a volume one slice at a time so every
slice of a volume reaches the network bit for bit as the same slice read from its PNG does (a batched or
trilinear resize differs in the last bit).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import (
    Compose, InvertibleTransform, MapTransform, Orientationd, Resize, ScaleIntensityRanged, Transform,
)
from monai.utils import TraceKeys, convert_to_tensor, ensure_tuple_rep

from transforms.labels import RemapLabelsd
from transforms.loading import LoadLabeld, LoadScand
from transforms.slicing import CANONICAL_AXCODES, RAS_LABELS
from transforms.validation import ValidateScand
from transforms.windowing import WindowHUd

__all__ = ["GREY_LEVELS", "ResizeSlices", "ResizeSlicesd", "canonical_grey", "network_input"]

#: The grey levels of a windowed slice on disk (8-bit), mapped to 0..1 for the network.
GREY_LEVELS = (0.0, 255.0)


def _resized_affine(affine: torch.Tensor, old: Sequence[int], new: Sequence[int]) -> torch.Tensor:
    """The affine of the same field of view on a grid resized in-plane from ``old`` to ``new`` pixels
    (``align_corners=False``: pixel centres move by half the change of pixel size)."""
    scale = torch.eye(affine.shape[0], dtype=affine.dtype)
    for axis in range(2):
        factor = old[axis] / new[axis]
        scale[axis, axis] = factor
        scale[axis, -1] = (factor - 1) / 2
    return affine @ scale


class ResizeSlices(InvertibleTransform, Transform):
    """Resize the in-plane axes of a channel-first image to ``(size, size)``: a slice ``(C, H, W)`` directly, a
    volume ``(C, X, Y, Z)`` one axial slice ``[..., k]`` at a time, with the same 2D ``Resize``.

    Args:
        spatial_size: the network's input size (pixels per side).
        mode: ``"bilinear"`` for images and logits, ``"nearest"`` for labels.

    ``inverse`` resizes back to the size recorded on the MetaTensor (``Invertd`` uses it on predictions).
    """

    backend = Resize.backend

    def __init__(self, spatial_size: int, mode: str = "bilinear") -> None:
        if int(spatial_size) < 8:
            raise ValueError(f"`spatial_size` must be at least 8, got {spatial_size!r}.")
        self.spatial_size, self.mode = int(spatial_size), mode

    def _resize(self, img: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
        resize = Resize(tuple(size), mode=mode)
        if img.ndim == 3:
            return convert_to_tensor(resize(img), track_meta=False)
        return torch.stack([convert_to_tensor(resize(img[..., k]), track_meta=False) for k in range(img.shape[-1])], -1)

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        img = convert_to_tensor(img, track_meta=True)
        if img.ndim not in (3, 4):
            raise ValueError(f"ResizeSlices expects (C, H, W) or (C, X, Y, Z), got shape {tuple(img.shape)}.")
        original = tuple(int(s) for s in img.shape[1:3])
        size = (self.spatial_size, self.spatial_size)
        data = img.as_tensor() if isinstance(img, MetaTensor) else img
        out = data if original == size else self._resize(data, size, self.mode)
        if isinstance(img, MetaTensor):
            out = MetaTensor(out, meta=img.meta, applied_operations=list(img.applied_operations))
            out.affine = _resized_affine(img.affine, original, size)
            self.push_transform(out, orig_size=original, extra_info={"mode": self.mode})
        return out

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        transform = self.pop_transform(data)
        original = tuple(transform[TraceKeys.ORIG_SIZE])
        out = MetaTensor(self._resize(data.as_tensor(), original, transform[TraceKeys.EXTRA_INFO]["mode"]),
                         meta=data.meta, applied_operations=list(data.applied_operations))
        out.affine = _resized_affine(data.affine, tuple(data.shape[1:3]), original)
        return out


class ResizeSlicesd(InvertibleTransform, MapTransform):
    """Dictionary-based wrapper of :class:`ResizeSlices`; ``mode`` per key (``["bilinear", "nearest"]``)."""

    backend = ResizeSlices.backend

    def __init__(self, keys: KeysCollection, spatial_size: int, mode: str | Sequence[str] = "bilinear",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        modes = ensure_tuple_rep(mode, len(self.keys))
        self.resizers = {key: ResizeSlices(spatial_size, m) for key, m in zip(self.keys, modes)}

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizers[key](d[key])
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizers[key].inverse(d[key])
        return d


def network_input(keys: KeysCollection = "image", spatial_size: int = 256, label_keys: KeysCollection = (),
                  allow_missing_keys: bool = False) -> Compose:
    """Grey levels 0..255 of ``keys`` to 0..1, then ``keys`` (bilinear) and ``label_keys`` (nearest) resized to
    ``spatial_size`` (``allow_missing_keys``: a label key a sample lacks, such as the liver mask the lesion synthesis
    reads, is passed over). The single definition every bundle config names (``transforms.network_input``)."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
    lo, hi = GREY_LEVELS
    return Compose(log_stats=False, transforms=[
        ScaleIntensityRanged(keys=keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        ResizeSlicesd(keys=keys + label_keys, spatial_size=spatial_size,
                      mode=["bilinear"] * len(keys) + ["nearest"] * len(label_keys),
                      allow_missing_keys=allow_missing_keys),
    ])


def canonical_grey(keys: KeysCollection = "image", label_keys: KeysCollection = (), window: str | None = "abdomen",
                   window_hu: Sequence[float] | None = None, dtype: DtypeLike = np.float32,
                   label_map: Mapping[int, int] | None = None) -> Compose:
    """Scan paths to windowed grey-level volumes in the canonical orientation: ``LoadScand`` (HU, checked),
    ``Orientationd`` to :data:`~transforms.CANONICAL_AXCODES`, ``WindowHUd`` (whole grey levels 0..255).

    ``label_keys`` load as label maps (any modality), optionally remapped to LiTS labels (``label_map``), are
    reoriented with the scan and checked against its grid. Conversion (``dtype=np.uint8``, then
    ``AxialSlicesd``) and inference (float32, then :func:`network_input`) both start here."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
    # voxels as stored (int16 HU in most files): the window below computes in float32 once, no extra copy
    steps: list = [LoadScand(keys=keys, dtype=None)]
    if label_keys:
        steps.append(LoadLabeld(keys=label_keys, image_key=keys[0]))
        if label_map:
            steps.append(RemapLabelsd(keys=label_keys, mapping=label_map))
    steps.append(Orientationd(keys=keys + label_keys, axcodes=CANONICAL_AXCODES, labels=RAS_LABELS))
    if label_keys:
        # LoadScand checked each volume; what is left is the label's grid and values
        steps += [ValidateScand(keys=keys[0], label_key=k, check_volumes=False) for k in label_keys]
    steps.append(WindowHUd(keys=keys, preset=window, window_hu=window_hu, dtype=dtype))
    return Compose(steps, log_stats=False)  # a bad scan is a one-line error, not a dump of its voxel statistics
