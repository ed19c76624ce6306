"""Slice context (2.5D): the ``k`` neighbouring axial slices on each side of a slice as extra input channels.

One rule everywhere: channel ``j`` of slice ``z`` holds slice ``z - k + j`` (so the middle channel is the slice
itself), and a neighbour beyond the end of the volume repeats the end slice. Training reads neighbours from a slice
set by volume id and slice index (:class:`workflows.data.slice_set.LoadContextd`, the same rule on file names);
inference stacks them from the volume here. ``k = 0`` is the reference's single slice.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import MapTransform, Transform

__all__ = ["check_context", "context_indices", "StackContext", "StackContextd", "ContextSliceInferer"]


def check_context(context) -> int:
    """``context`` as a whole number 0..8 (neighbours on each side), else a ``ValueError`` naming it."""
    if isinstance(context, bool) or not isinstance(context, int) and not (isinstance(context, str) and context.isdigit()):
        raise ValueError(f"`context` must be a whole number of neighbouring slices on each side (0..8), got {context!r}.")
    value = int(context)
    if not 0 <= value <= 8:
        raise ValueError(f"`context` must be 0..8 neighbouring slices on each side, got {value}.")
    return value


def context_indices(index: int, depth: int, context: int) -> list[int]:
    """The slice indices stacked for slice ``index`` of a ``depth``-slice volume: ``index - k .. index + k``,
    clamped to ``0 .. depth - 1`` (an edge repeats the end slice). ``context_indices(0, 10, 1) == [0, 0, 1]``."""
    return [min(max(index + offset, 0), depth - 1) for offset in range(-context, context + 1)]


class StackContext(Transform):
    """A single-channel volume ``(1, X, Y, Z)`` (axial slices ``[..., z]``) to ``(2k + 1, X, Y, Z)``: channel ``j``
    of slice ``z`` is slice ``z - k + j``, edges repeating the end slice. A batch ``(B, 1, X, Y, Z)`` works too.

    Args:
        context: ``k``, the neighbours on each side (0 returns the input).
    """

    def __init__(self, context: int = 0) -> None:
        self.context = check_context(context)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.context == 0:
            return img
        if img.shape[-4 if img.ndim == 5 else 0] != 1:
            raise ValueError(f"StackContext expects one channel, got shape {tuple(img.shape)}.")
        depth = img.shape[-1]
        index = torch.tensor([context_indices(z, depth, self.context) for z in range(depth)], device=img.device)
        data = img.as_tensor() if isinstance(img, MetaTensor) else img
        # (..., 1, X, Y, Z) -> (..., 2k+1, X, Y, Z): one gather along z per channel
        out = torch.stack([data[..., 0, :, :, :].index_select(-1, index[:, j]) for j in range(index.shape[1])],
                          dim=-4)
        return MetaTensor(out, meta=img.meta, applied_operations=list(img.applied_operations)) \
            if isinstance(img, MetaTensor) else out


class StackContextd(MapTransform):
    """Dictionary wrapper of :class:`StackContext`."""

    def __init__(self, keys: KeysCollection, context: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.stack = StackContext(context)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.stack(d[key])
        return d


class ContextSliceInferer(SliceInferer):
    """MONAI's ``SliceInferer`` over axial slices (``spatial_dim=2``) whose network takes ``2k + 1`` channels: the
    volume ``(B, 1, X, Y, Z)`` is stacked with :class:`StackContext` first, so each slice is seen with its
    neighbours exactly as training saw it; the prediction is ``(B, C, X, Y, Z)`` as with one channel.

    Args:
        context: ``k``, neighbours on each side (0: MONAI's ``SliceInferer`` unchanged).
        roi_size, sw_batch_size, progress: as ``SliceInferer``.
    """

    def __init__(self, context: int = 0, roi_size=(256, 256), sw_batch_size: int = 8, progress: bool = False,
                 **kwargs) -> None:
        super().__init__(roi_size=roi_size, sw_batch_size=sw_batch_size, spatial_dim=2, progress=progress, **kwargs)
        self.stack = StackContext(context)

    def __call__(self, inputs: torch.Tensor, network: Callable, *args, **kwargs):
        return super().__call__(self.stack(inputs), network, *args, **kwargs)
