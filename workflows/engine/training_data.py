"""What a chunked training reads: a sampler whose order a resume can repeat, a cache that holds 8-bit data as
uint8, and augmentation seeded per sample so a resumed run draws what the uninterrupted one drew."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import numpy as np
import torch
from monai.data import CacheDataset
from torch.utils.data import Sampler

from workflows.engine import distributed
from workflows.machine.settings import flag

__all__ = ["ResumableSampler", "CompactCacheDataset", "AugmentedDataset"]


class ResumableSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on ``(seed, chunk, epoch)``, and that can start part-way
    through an epoch, so a run resumed from iteration i sees exactly the batches an uninterrupted run saw.

    The length follows the dataset's current length (datasets are refilled chunk by chunk). Trained by several
    processes (:mod:`workflows.engine.distributed`), each rank takes every world-size-th index of the epoch's order from its
    rank on (the order padded from its start to a multiple of the ranks, as PyTorch's ``DistributedSampler``
    does), so the ranks share each epoch without overlap and a resume skips within each rank's share.
    """

    def __init__(self, data_source: Sized, seed: int = 0, shuffle: bool = True) -> None:
        self.data_source = data_source
        self.seed = int(seed)
        self.shuffle = shuffle
        self.chunk = 0
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, chunk: int, epoch: int) -> None:
        self.chunk, self.epoch = int(chunk), int(epoch)

    def skip_next(self, samples: int) -> None:
        """Leave out the first ``samples`` indices of the next iteration only (resuming mid-epoch)."""
        self._skip = int(samples)

    def __len__(self) -> int:
        return math.ceil(len(self.data_source) / distributed.world_size())

    def __iter__(self) -> Iterator[int]:
        n = len(self.data_source)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.chunk * 1_009 + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        ranks = distributed.world_size()
        if ranks > 1 and n:
            padded = (order * math.ceil(len(self) * ranks / n))[: len(self) * ranks]
            order = padded[distributed.rank()::ranks]
        skip, self._skip = self._skip, 0
        return iter(order[skip:])

class _Compact:
    """A float tensor of whole multiples of ``1 / scale`` in 0..255 / scale, held as uint8."""

    __slots__ = ("data", "scale")

    def __init__(self, data: torch.Tensor, scale: float) -> None:
        self.data, self.scale = data, scale

    def expand(self) -> torch.Tensor:
        out = self.data.to(torch.float32)
        return out / self.scale if self.scale != 1.0 else out

def _compact(value):
    """``value`` as a :class:`_Compact` when that gives back exactly the same float32 tensor, else ``value``."""
    if not isinstance(value, torch.Tensor) or value.dtype != torch.float32 or value.numel() == 0:
        return value
    plain = value.as_tensor() if hasattr(value, "as_tensor") else value
    for scale in (1.0, 255.0):  # labels 0/1/2; grey levels k / 255 (network_input without a resize)
        levels = torch.round(plain * scale)
        if float(levels.min()) < 0 or float(levels.max()) > 255:
            continue
        packed = _Compact(levels.to(torch.uint8), scale)
        if torch.equal(packed.expand(), plain):
            return packed
    return value

class CompactCacheDataset(CacheDataset):
    """MONAI's ``CacheDataset`` holding 8-bit data as uint8: a label (0/1 per channel) and an image whose grey
    levels were not resized (slices converted at the training size) take a quarter of their float32 memory in the
    cache, and come back as the very same float32 tensors. Anything else is cached as it is."""

    def _load_cache_item(self, idx: int):
        item = super()._load_cache_item(idx)
        return {key: _compact(value) for key, value in item.items()} if isinstance(item, dict) else item

    def _transform(self, index: int):
        item = super()._transform(index)
        if isinstance(item, dict):
            return {key: value.expand() if isinstance(value, _Compact) else value for key, value in item.items()}
        return item

class AugmentedDataset(torch.utils.data.Dataset):
    """Random augmentation on top of a (cached) dataset, reproducible under resume: each sample's random state is
    seeded from (seed, chunk, epoch, index), so a run resumed mid-epoch draws what the uninterrupted run drew,
    whatever order or worker serves it. ``enabled=False`` passes samples through unchanged."""

    def __init__(self, dataset, transform, seed: int = 0, enabled: bool | str = True) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, int(seed)
        self.enabled = flag(enabled, "augment")
        self.chunk, self.epoch = 0, 0

    def set_epoch(self, chunk: int, epoch: int) -> None:
        self.chunk, self.epoch = int(chunk), int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if not self.enabled:
            return item
        mixed = np.random.SeedSequence([self.seed, self.chunk, self.epoch, int(index)]).generate_state(1)[0]
        self.transform.set_random_state(seed=int(mixed))
        return self.transform(dict(item))
