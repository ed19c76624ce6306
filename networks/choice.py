"""The networks a model can be: the reference's 3-level UNet (the default) or one of MONAI's stock networks, by name.

The bundle's ``--architecture`` setting names one; the model file records it, so evaluation and inference rebuild the
same network with no flag. One width knob serves them all: ``channels`` are the ThreeLevelUNet's four widths, and the
stock networks start from its first one (``channels[0]``), as a user would give them one base width:

- ``three_level_unet``: :class:`networks.ThreeLevelUNet` (double Conv-BN-ReLU, MaxPool down, ConvTranspose up).
- ``dynunet``: MONAI's ``DynUNet`` configured as nnU-Net configures its 2D network: 3x3 kernels, stride-2
  convolutions down until the feature map is 4 pixels (at most 6 times), widths doubling from ``channels[0]`` and
  capped at 16x it (nnU-Net: 32 to 512), instance norm, leaky ReLU, no deep supervision.
- ``segresnet``: MONAI's ``SegResNet`` with its default blocks (1, 2, 2, 4 down; 1, 1, 1 up) and
  ``init_filters = channels[0]`` (group norm in its 8 groups, fewer where the base width does not divide by 8).

Example::

    net = build_network("dynunet", spatial_dims=2, in_channels=3, out_channels=2, channels=(16, 32, 64, 128),
                        spatial_size=256)  # (B, 3, 256, 256) -> (B, 2, 256, 256)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

from .three_level_unet import ThreeLevelUNet

__all__ = ["NETWORKS", "build_network", "dynunet_levels"]

#: the names ``--network`` takes; the first is the default (the reference's network)
NETWORKS = ("three_level_unet", "dynunet", "segresnet")


def dynunet_levels(spatial_size: int, most: int = 6) -> int:
    """How many stride-2 steps nnU-Net's rule takes for a ``spatial_size`` side: halve while the side stays even and
    the feature map at least 4 pixels (256: 6, 96: 4, 32: 3)."""
    levels, side = 0, int(spatial_size)
    while levels < most and side % 2 == 0 and side // 2 >= 4:
        side //= 2
        levels += 1
    return levels


def build_network(name: str = "three_level_unet", spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1,
                  channels: Sequence[int] = (64, 128, 256, 512), spatial_size: int = 256,
                  members: int = 1) -> torch.nn.Module:
    """The network ``name`` (:data:`NETWORKS`) for inputs ``(B, in_channels, spatial_size, spatial_size)`` returning
    logits ``(B, out_channels, spatial_size, spatial_size)``; with ``members`` > 1, that many of them whose logits are
    averaged (:class:`networks.ensemble.MeanOfNetworks`: a model file of several networks).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if int(members) > 1:
        from .ensemble import MeanOfNetworks

        return MeanOfNetworks([build_network(name, spatial_dims, in_channels, out_channels, channels, spatial_size)
                               for _ in range(int(members))])
    if isinstance(channels, str):  # "[64,128,256,512]" from a command line that left it as text
        channels = [int(width) for width in re.findall(r"\d+", channels)]
    channels = [int(width) for width in channels]
    if name == "three_level_unet":
        return ThreeLevelUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                              channels=channels)
    base = int(channels[0])
    if name == "dynunet":
        from monai.networks.nets import DynUNet

        levels = dynunet_levels(spatial_size)
        strides = [1] + [2] * levels
        return DynUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                       kernel_size=[3] * len(strides), strides=strides, upsample_kernel_size=strides[1:],
                       filters=[min(base * 2**k, base * 16) for k in range(len(strides))],
                       norm_name=("INSTANCE", {"affine": True}), act_name=("leakyrelu", {"negative_slope": 0.01}),
                       deep_supervision=False)
    if name == "segresnet":
        from monai.networks.nets import SegResNet

        return SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                         init_filters=base, norm=("GROUP", {"num_groups": math.gcd(8, base)}))
    raise ValueError(f"--architecture must be one of {', '.join(NETWORKS)}, got {name!r}.")
