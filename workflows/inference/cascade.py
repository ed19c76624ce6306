"""The tumour stage of a two-stage model file at inference: the tumour segmented on a crop around the liver that the
whole-slice stage found, and pasted back onto the scan's grid.

The crop is cut at the scan's own resolution (the canonical grey volume kept before the whole-slice stage's resize),
so a lesion gets the pixels the crop's zoom gives it; the box, the context and the resize are the ones training used
(:mod:`transforms.liver_crop`, :mod:`transforms.context`, :func:`transforms.network_input`'s order: crop, scale to
0..1, resize). Outside the box the tumour logit is :data:`OUTSIDE_LOGIT` (no tumour where there is no liver).
With ``flip_check``, the crop is also read mirrored front to back, and a lesion of the plain reading that the mirrored
reading marks nowhere is dropped (a test-time flip that only removes: a lesion is a lesion upside down too, while many
of the network's false lesions are not; the kept lesions keep their plain outline, so no found lesion loses overlap).
Measured, averaging the two readings lost more of ``crlm_1100``'s metastasis, and the left-right mirror lost all of it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import MapTransform, Orientation
from monai.transforms.utils import get_largest_connected_component_mask
from scipy import ndimage

from networks import build_network, load_reference_state_dict
from transforms import CANONICAL_AXCODES, ResizeSlices, network_input
from transforms.context import StackContext
from transforms.liver_crop import DEFAULT_MARGIN_MM, crop_box, liver_box, paste_box
from transforms.slicing import RAS_LABELS
from workflows.engine.model_file import read_torch_file
from workflows.machine.precision import InferenceNetwork

__all__ = ["OUTSIDE_LOGIT", "TumourStage", "TumourStaged"]

logger = logging.getLogger("liver_ct.inference")

#: The tumour logit written outside the liver's box (sigmoid ~ 2e-9).
OUTSIDE_LOGIT = -20.0


class TumourStage:
    """The tumour stage of ``ckpt_file`` (a two-stage model file, :mod:`workflows.engine.model_file`), or of the
    ``settings`` and ``network`` given directly.

    Args:
        ckpt_file: the model file; ``None`` with ``network`` and ``settings`` (tests, benchmarks).
        device, precision: as the bundle's ``inference_network`` (``auto``: bf16 where native).
        sw_batch_size: slices per forward pass.
        flip_check: keep only the lesions the crop read mirrored front to back (anterior-posterior) marks too.
    """

    def __init__(self, ckpt_file: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                 precision: str = "fp32", sw_batch_size: int = 8, network: torch.nn.Module | None = None,
                 settings: dict | None = None, flip_check: bool = False) -> None:
        if ckpt_file is not None:
            state = read_torch_file(ckpt_file)
            settings = (state.get("settings") or {}).get("tumour_stage")
            if not settings or not isinstance(state.get("tumour_model"), dict):
                raise ValueError(f"{ckpt_file}: holds no tumour stage (a model file of one stage); train one with "
                                 "--stage liver_crop --liver_model this file.")
            network = build_network(settings.get("architecture") or "three_level_unet", spatial_dims=2,
                                    in_channels=2 * int(settings.get("context") or 0) + 1, out_channels=1,
                                    channels=settings["channels"], spatial_size=int(settings["spatial_size"]),
                                    members=int(settings.get("members") or 1))
            load_reference_state_dict(network, state["tumour_model"])
        if network is None or settings is None:
            raise ValueError("TumourStage needs a model file, or a network and its settings.")
        self.settings = dict(settings)
        self.size = int(settings["spatial_size"])
        self.margin_mm = float(settings.get("crop_margin_mm") or DEFAULT_MARGIN_MM)
        self.stack = StackContext(int(settings.get("context") or 0))
        self.network_input = network_input("image", self.size)
        self.network = InferenceNetwork(network.to(device).eval(), precision, False, device)
        self.device = torch.device(device)
        self.flip_check = bool(flip_check)
        self.inferer = SliceInferer(roi_size=(self.size, self.size), sw_batch_size=int(sw_batch_size), spatial_dim=2,
                                    progress=False)

    def logits(self, grey: torch.Tensor, liver: torch.Tensor | np.ndarray, spacing_mm: Sequence[float]) -> torch.Tensor:
        """Tumour logits ``(1, X, Y, Z)`` for the canonical grey volume ``grey`` ``(1, X, Y, Z)`` (grey levels
        0..255) whose liver is ``liver`` ``(X, Y, Z)``; :data:`OUTSIDE_LOGIT` outside the liver's box, everywhere
        when there is no liver."""
        shape = tuple(grey.shape[1:])
        box = liver_box(liver, spacing_mm, self.margin_mm)
        if box is None:
            return torch.full((1, *shape), OUTSIDE_LOGIT)
        data = grey.as_tensor() if isinstance(grey, MetaTensor) else torch.as_tensor(grey)
        crop = crop_box(self.stack(data.float()), box)  # neighbours from the whole volume, then the crop
        network_in = torch.as_tensor(self.network_input({"image": crop})["image"])  # training's scale and resize
        side = box[1] - box[0]
        with torch.no_grad():
            out = self._logits(network_in[None].to(self.device))[0].float().cpu()
        back = out if side == self.size else ResizeSlices(side)(out)
        return paste_box(back, box, shape, OUTSIDE_LOGIT)

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The network's logits for ``batch`` ``(1, C, X, Y, Z)`` slice by slice. With ``flip_check``, each lesion
        (26-connected across slices) that the front-to-back mirror's reading (X: P in the canonical ``PLS``)
        marks at none of its voxels takes that reading's logits there, none of which marks tumour. Only the slices
        with a lesion are read mirrored (each slice carries its neighbours in its channels)."""
        out = self.inferer(batch, self.network)
        if not self.flip_check:
            return out
        marked = (out[0, 0] > 0).cpu().numpy()
        slices = np.flatnonzero(marked.any(axis=(0, 1)))
        if slices.size == 0:
            return out
        index = torch.as_tensor(slices, device=batch.device)
        mirror = torch.flip(self.inferer(torch.flip(batch[..., index], (2,)), self.network), (2,))[0, 0].cpu()
        lesions, _ = ndimage.label(marked, np.ones((3, 3, 3), bool))
        seen = np.zeros_like(marked)
        seen[..., slices] = mirror.numpy() > 0
        confirmed = np.unique(lesions[marked & seen])
        unconfirmed = marked & ~np.isin(lesions, confirmed)
        part = torch.as_tensor(unconfirmed[..., slices])
        out[0, 0, ..., index] = torch.where(part.to(out.device), mirror.to(out), out[0, 0, ..., index])
        return out


class TumourStaged(MapTransform):
    """Replace the tumour channel of the whole-slice stage's logits ``pred`` (``(2, ...)``: liver, tumour; on the
    scan's grid, after ``Invertd``) by the tumour stage's, run on a crop of the full-resolution canonical grey volume
    under ``image_key`` (kept by ``CopyItemsd`` before the resize; removed here). The liver the box is cut around is
    the largest connected part of the whole-slice stage's liver (logit > 0).

    Args:
        keys: the logits.
        ckpt_file: the two-stage model file; ``device``, ``precision``, ``sw_batch_size``: as :class:`TumourStage`.
        image_key: the canonical full-resolution grey volume.
        enabled: ``False`` (a one-stage model file): ``pred`` passes unchanged.
        flip_check: as :class:`TumourStage` (the bundle's ``flip_check``).
    """

    def __init__(self, keys: KeysCollection, ckpt_file: str, image_key: str = "image_full",
                 enabled: bool = True, device: torch.device | str = "cpu", precision: str = "fp32",
                 sw_batch_size: int = 8, flip_check: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ckpt_file, self.image_key, self.enabled = ckpt_file, image_key, bool(enabled)
        self.options = {"device": device, "precision": precision, "sw_batch_size": sw_batch_size,
                        "flip_check": flip_check}
        self._stage: TumourStage | None = None

    @property
    def stage(self) -> TumourStage:
        if self._stage is None:  # read when first used: building the bundle's objects reads no weights
            self._stage = TumourStage(self.ckpt_file, **self.options)
        return self._stage

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        grey = d.pop(self.image_key, None)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            d[key] = self.replace_tumour(d[key], grey)
        return d

    def replace_tumour_2d(self, logits: torch.Tensor, grey: np.ndarray, spacing_mm: Sequence[float]) -> torch.Tensor:
        """The same for one 2D image: ``logits`` ``(2, rows, columns)`` at the image's size, ``grey`` its grey
        levels; a 2D image records no spacing, so ``spacing_mm`` is assumed by the caller."""
        liver = get_largest_connected_component_mask(logits[0] > 0, connectivity=2)
        tumour = self.stage.logits(torch.as_tensor(grey, dtype=torch.float32)[None, ..., None],
                                   torch.as_tensor(liver).bool()[..., None], spacing_mm)
        out = torch.as_tensor(logits).clone()
        out[1] = tumour[0, ..., 0]
        return out

    def replace_tumour(self, pred: MetaTensor, grey: MetaTensor) -> MetaTensor:
        orient = Orientation(axcodes=CANONICAL_AXCODES, labels=RAS_LABELS)
        canonical = orient(pred)
        if tuple(canonical.shape[1:]) != tuple(grey.shape[1:]) or canonical.shape[0] != 2:
            raise ValueError(f"the tumour stage needs liver and tumour logits on the scan's grid {tuple(grey.shape[1:])}"
                             f", got {tuple(canonical.shape)}.")
        liver = get_largest_connected_component_mask(canonical[0] > 0, connectivity=3)
        spacing = torch.linalg.norm(torch.as_tensor(grey.affine, dtype=torch.float64)[:3, :3], dim=0).tolist()
        tumour = self.stage.logits(grey, torch.as_tensor(liver).bool(), spacing[:2])
        canonical[1] = tumour[0].to(canonical.dtype)
        return orient.inverse(canonical)
