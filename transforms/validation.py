"""Input checks with one clear error each: what file, what is wrong, what was expected."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from transforms.labels import check_lits_labels

__all__ = ["InvalidScanError", "unwrap_transform_error", "source_of", "check_volume", "check_label_grid", "ValidateScan", "ValidateScand"]

#: Largest difference (mm) between a label's and its scan's affine entries still taken as the same grid.
GRID_TOLERANCE_MM = 0.01


class InvalidScanError(ValueError):
    """A scan or label that cannot be used; the message starts with the file it came from."""


def unwrap_transform_error(err: BaseException) -> BaseException:
    """The exception a transform raised, out of the ``RuntimeError("applying transform ...")`` layers MONAI's
    ``Compose`` wraps it in, so a bad scan reads as its own one-line reason."""
    while isinstance(err, RuntimeError) and str(err).startswith("applying transform") and err.__cause__ is not None:
        err = err.__cause__
    return err


def source_of(img: object, default: str = "image") -> str:
    """The file an image was read from, for messages."""
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj") or default)


def check_volume(img: torch.Tensor, source: str | None = None) -> None:
    """A channel-first single-channel 3D volume ``(1, X, Y, Z)`` with finite voxels, else ``InvalidScanError``."""
    source = source or source_of(img)
    meta = getattr(img, "meta", None) or {}
    channel_dim = meta.get("original_channel_dim", float("nan"))
    stored_dims = len(meta.get("spatial_shape", img.shape[1:])) + (0 if _is_nan(channel_dim) else 1)
    if stored_dims != 3 or img.ndim != 4 or img.shape[0] != 1:
        shape = tuple(int(s) for s in meta.get("spatial_shape", img.shape[1:]))
        extra = "" if _is_nan(channel_dim) else f" plus {img.shape[0]} along a 4th axis"
        raise InvalidScanError(
            f"{source}: expected a 3D volume (one scan, x, y, slices), got a {stored_dims}D image of shape "
            f"{shape}{extra}."
        )
    if not torch.as_tensor(img).is_floating_point():
        return  # whole numbers are finite: no pass over the volume
    finite = torch.isfinite(torch.as_tensor(img))
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise InvalidScanError(f"{source}: {bad} voxel(s) are NaN or infinite; a CT volume must be finite everywhere.")


def check_label_grid(label: MetaTensor, image: MetaTensor, source: str | None = None,
                     names: tuple[str, str] = ("label", "its scan"), image_source: str | None = None) -> None:
    """The label must lie on its scan's grid: same shape and the same affine within ``GRID_TOLERANCE_MM``.
    ``names`` say what the two are in the one-line error (``("prediction", "its truth")`` for an evaluation)."""
    source = source or source_of(label, "label")
    other = image_source or source_of(image)
    if tuple(label.shape[1:]) != tuple(image.shape[1:]):
        raise InvalidScanError(
            f"{source}: {names[0]} grid {tuple(label.shape[1:])} does not match {names[1]} {other} "
            f"{tuple(image.shape[1:])}."
        )
    if isinstance(label, MetaTensor) and isinstance(image, MetaTensor):
        diff = float(torch.max(torch.abs(label.affine.double() - image.affine.double())))
        if diff > GRID_TOLERANCE_MM:
            origin = [round(float(v), 2) for v in label.affine[:3, 3]]
            other_origin = [round(float(v), 2) for v in image.affine[:3, 3]]
            raise InvalidScanError(
                f"{source}: {names[0]} affine differs from {names[1]} {other} by up to {diff:.3g} mm (origin "
                f"{origin} against {other_origin} mm)."
            )


def _is_nan(value: object) -> bool:
    try:
        return bool(np.isnan(value))
    except TypeError:
        return False


class ValidateScan(Transform):
    """Pass a volume through unchanged after :func:`check_volume`."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        check_volume(img)
        return img


class ValidateScand(MapTransform):
    """Check the volumes under ``keys`` and, when present, the LiTS label under ``label_key``: a 3D finite
    volume, on the grid of ``keys[0]``, with values in {0, 1, 2}. Raises :class:`InvalidScanError`."""

    def __init__(self, keys: KeysCollection, label_key: str | None = "label", check_volumes: bool = True,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.check_volumes = check_volumes  # False where LoadScan has just checked them (a full pass each)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        images = [d[key] for key in self.key_iterator(d)]
        for img in images if self.check_volumes else ():
            check_volume(img)
        if self.label_key is not None and self.label_key in d:
            label = d[self.label_key]
            if self.check_volumes:
                check_volume(label)
            if images:
                check_label_grid(label, images[0])
            try:
                check_lits_labels(label, source_of(label, "label"))
            except ValueError as err:
                raise InvalidScanError(str(err)) from None
        return d
