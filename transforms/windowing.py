"""HU windowing: CT Hounsfield units to the 8-bit grey levels of the Kaggle LiTS JPG export."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, get_equivalent_dtype

__all__ = ["WINDOW_PRESETS", "window_range", "WindowHU", "WindowHUd"]

#: Named windows as (level, width) in HU. ``abdomen`` is the Kaggle LiTS export's: -160..240 HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "bone": (400.0, 1800.0),
    "lung": (-600.0, 1500.0),
}


def window_range(preset: str | None = "abdomen", window_hu: Sequence[float] | None = None) -> tuple[float, float]:
    """The (lowest, highest) HU of a window, from a preset name or an explicit ``window_hu=(lo, hi)``.

    >>> window_range("abdomen")
    (-160.0, 240.0)
    """
    if window_hu is not None:
        if len(window_hu) != 2 or not float(window_hu[0]) < float(window_hu[1]):
            raise ValueError(f"`window_hu` must be (lowest HU, highest HU) with lowest < highest, got {window_hu!r}.")
        return float(window_hu[0]), float(window_hu[1])
    if preset not in WINDOW_PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(WINDOW_PRESETS)} or use `window_hu`, got {preset!r}.")
    level, width = WINDOW_PRESETS[preset]
    return level - width / 2, level + width / 2


class WindowHU(Transform):
    """Map HU to grey levels 0..255 through a CT window, as the Kaggle LiTS JPGs were made.

    ``grey = round(clip((HU - lo) / (hi - lo), 0, 1) * 255)``, rounding halves up; the abdomen window
    (level 40, width 400) maps -1000 -> 0, -160 -> 0, 40 -> 128, 240 -> 255, 1000 -> 255. Values are always whole
    grey levels, so a volume windowed here equals its slices saved as 8-bit images and read back.

    Args:
        preset: a name from :data:`WINDOW_PRESETS`. Defaults to ``"abdomen"``.
        window_hu: explicit ``(lo, hi)`` in HU; overrides ``preset``.
        dtype: output dtype. Defaults to ``np.uint8``; use ``np.float32`` to keep working in floats.

    Example::

        WindowHU("abdomen")(torch.tensor([[-1000.0, 40.0, 240.0]]))  # -> tensor([[0, 128, 255]], dtype=uint8)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    #: voxels windowed per step: one float32 block of 16 MiB, never a float32 copy of the whole volume
    BLOCK = 1 << 22

    def __init__(
        self, preset: str | None = "abdomen", window_hu: Sequence[float] | None = None, dtype: DtypeLike = np.uint8
    ) -> None:
        self.lo, self.hi = window_range(preset, window_hu)
        self.dtype = dtype

    def _window_block(self, block: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """In place on a float32 block: ``floor(clip((x - lo) / (hi - lo) * 255, 0, 255) + 0.5)``."""
        block -= self.lo
        block /= self.hi - self.lo
        block *= 255.0
        if isinstance(block, torch.Tensor):
            return block.clamp_(0.0, 255.0).add_(0.5).floor_()
        np.clip(block, 0.0, 255.0, out=block)
        block += 0.5
        return np.floor(block, out=block)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        values = img.as_tensor() if isinstance(img, MetaTensor) else img
        on_cpu = not isinstance(values, torch.Tensor) or values.device.type == "cpu"
        if on_cpu:
            source = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
            flat = source.reshape(-1)  # a copy only when the volume is a non-contiguous view
            out = np.empty(flat.shape, dtype=get_equivalent_dtype(self.dtype, np.ndarray))
            for start in range(0, flat.size, self.BLOCK):
                out[start:start + self.BLOCK] = self._window_block(flat[start:start + self.BLOCK].astype(np.float32))
            out = out.reshape(source.shape)
        else:
            out = self._window_block(values.to(torch.float32, copy=True))
        return convert_to_dst_type(out, dst=img, dtype=self.dtype)[0]


class WindowHUd(MapTransform):
    """Dictionary-based wrapper of :class:`WindowHU`."""

    backend = WindowHU.backend

    def __init__(
        self,
        keys: KeysCollection,
        preset: str | None = "abdomen",
        window_hu: Sequence[float] | None = None,
        dtype: DtypeLike = np.uint8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.window = WindowHU(preset, window_hu, dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.window(d[key])
        return d
