"""Networks: the reference 3-level UNet, usable as ``networks.ThreeLevelUNet`` in bundle configs."""

from .three_level_unet import ThreeLevelUNet, load_reference_state_dict

__all__ = ["ThreeLevelUNet", "load_reference_state_dict"]
