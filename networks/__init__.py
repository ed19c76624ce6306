"""Networks: the reference 3-level UNet (``networks.ThreeLevelUNet`` in bundle configs) and its loss."""

from .losses import BCEDiceLoss
from .three_level_unet import ThreeLevelUNet, load_reference_state_dict

__all__ = ["ThreeLevelUNet", "load_reference_state_dict", "BCEDiceLoss"]
