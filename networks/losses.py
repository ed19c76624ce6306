"""The reference project's loss: 0.5 binary cross-entropy + 0.5 Dice, on logits, one sigmoid per channel."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.losses import DiceLoss

__all__ = ["BCEDiceLoss"]


class BCEDiceLoss(nn.Module):
    """``lambda_bce * BCEWithLogits + lambda_dice * soft Dice`` for multi-label sigmoid outputs.

    MONAI's ``DiceCELoss`` switches to softmax cross-entropy when there are two or more channels, which is wrong for
    overlapping labels (liver contains tumour); here every channel is its own binary problem.

    Args:
        lambda_bce: weight of the cross-entropy term. Defaults to 0.5.
        lambda_dice: weight of the Dice term. Defaults to 0.5.
        smooth: added to numerator and denominator of the Dice (computed over the whole batch, per channel).

    Forward:
        ``logits`` and ``target`` of shape ``(B, C, H, W)``, target 0/1; returns a scalar. Target pixels below 0
        (:data:`transforms.TUMOUR_UNKNOWN`: a source that does not label tumours) are left out of both terms, channel by
        channel; a target without them gives exactly the loss it always gave.
    """

    def __init__(self, lambda_bce: float = 0.5, lambda_dice: float = 0.5, smooth: float = 1.0) -> None:
        super().__init__()
        if lambda_bce < 0 or lambda_dice < 0 or lambda_bce + lambda_dice == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got {lambda_bce!r} and {lambda_dice!r}.")
        self.lambda_bce, self.lambda_dice, self.smooth = lambda_bce, lambda_dice, smooth
        self.bce = nn.BCEWithLogitsLoss()
        self.dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=smooth, smooth_dr=smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape.")
        # in fp32 whatever the network ran in: bf16 logits (autocast) keep 8 bits of mantissa, and the sigmoid, the
        # BCE and the Dice sums over a whole batch lose small structures (a tumour of a few hundred pixels) in them
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits, target = logits.float(), target.float()
            if bool((target < 0).any()):
                return self._masked(logits, target)
            return self.lambda_bce * self.bce(logits, target) + self.lambda_dice * self.dice(logits, target)

    def _masked(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The same two terms over the known pixels only (``target >= 0``): the BCE's mean over them, and the
        batch Dice per channel over them (MONAI's ``DiceLoss(batch=True)`` where every pixel is known)."""
        known = (target >= 0).float()
        target = target.clamp(min=0)
        bce = nn.functional.binary_cross_entropy_with_logits(logits, target, weight=known, reduction="sum")
        bce = bce / known.sum().clamp(min=1)
        p = torch.sigmoid(logits) * known
        dims = [0, *range(2, logits.ndim)]
        intersection, total = (p * target).sum(dims), p.sum(dims) + (target * known).sum(dims)
        dice = 1 - (2 * intersection + self.smooth) / (total + self.smooth)
        return self.lambda_bce * bce + self.lambda_dice * dice.mean()
