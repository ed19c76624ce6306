"""Networks: the reference 3-level UNet (``networks.ThreeLevelUNet``), MONAI's stock networks by name
(``networks.build_network``, what the bundle configs build) and the loss."""

from .choice import NETWORKS, build_network
from .ensemble import MeanOfNetworks
from .losses import BCEDiceLoss
from .three_level_unet import ThreeLevelUNet, load_reference_state_dict

__all__ = ["ThreeLevelUNet", "load_reference_state_dict", "NETWORKS", "build_network", "MeanOfNetworks", "BCEDiceLoss"]
