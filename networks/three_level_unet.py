"""The reference project's 3-level UNet, with a MONAI-style signature.

Module names (``enc1`` ... ``final``, each block's layers under ``.conv``) are the reference's own, so a
state_dict saved by the reference project loads with ``strict=True`` (see :func:`load_reference_state_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv, Norm, Pool

__all__ = ["ThreeLevelUNet", "load_reference_state_dict"]


class DoubleConv(nn.Module):
    """Two (Conv 3x3 - BatchNorm - ReLU) layers, held in ``self.conv`` as the reference named them."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        norm_type = Norm[Norm.BATCH, spatial_dims]
        self.conv = nn.Sequential(
            conv_type(in_channels, out_channels, kernel_size=3, padding=1),
            norm_type(out_channels),
            nn.ReLU(inplace=True),
            conv_type(out_channels, out_channels, kernel_size=3, padding=1),
            norm_type(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ThreeLevelUNet(nn.Module):
    """A UNet with three encoder levels and a bottleneck, as in the reference liver project.

    Encoder blocks are two Conv3x3-BatchNorm-ReLU layers, with MaxPool 2 between levels; the decoder upsamples
    with ConvTranspose 2x2 stride 2, concatenates the skip connection and applies two Conv-BN-ReLU layers; a 1x1
    convolution gives the output. With the defaults it has 7,701,825 parameters, the reference's count.

    Args:
        spatial_dims: number of spatial dimensions, 2 (slices) or 3. Defaults to 2.
        in_channels: number of input channels. Defaults to 1 (one windowed CT slice).
        out_channels: number of output channels. Defaults to 1 (one target, e.g. liver).
        channels: widths of the three encoder levels and the bottleneck. Defaults to ``(64, 128, 256, 512)``.

    Forward:
        ``x`` of shape ``(B, in_channels, H, W[, D])`` with every spatial size divisible by 8 (three poolings);
        returns logits of shape ``(B, out_channels, H, W[, D])``. Apply a sigmoid (per channel) for
        probabilities; the reference applied it inside ``forward`` and thresholded at 0.5, which equals
        ``logits > 0`` here.

    Example::

        net = ThreeLevelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16, 32, 64))
        logits = net(torch.zeros(2, 1, 64, 64))  # -> (2, 1, 64, 64)
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (64, 128, 256, 512),
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"`spatial_dims` must be 2 or 3, got {spatial_dims!r}.")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"`in_channels` and `out_channels` must be positive, got {in_channels!r} and {out_channels!r}."
            )
        channels = tuple(int(c) for c in channels)
        if len(channels) != 4 or min(channels) < 1:
            raise ValueError(
                "`channels` must hold 4 positive widths (three encoder levels and the bottleneck), "
                f"got {channels!r}."
            )
        c1, c2, c3, cb = channels
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels

        up_type = Conv[Conv.CONVTRANS, spatial_dims]
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)
        self.enc1 = DoubleConv(spatial_dims, in_channels, c1)
        self.enc2 = DoubleConv(spatial_dims, c1, c2)
        self.enc3 = DoubleConv(spatial_dims, c2, c3)
        self.bottleneck = DoubleConv(spatial_dims, c3, cb)
        self.up3 = up_type(cb, c3, kernel_size=2, stride=2)
        self.dec3 = DoubleConv(spatial_dims, c3 * 2, c3)
        self.up2 = up_type(c3, c2, kernel_size=2, stride=2)
        self.dec2 = DoubleConv(spatial_dims, c2 * 2, c2)
        self.up1 = up_type(c2, c1, kernel_size=2, stride=2)
        self.dec1 = DoubleConv(spatial_dims, c1 * 2, c1)
        self.final = Conv[Conv.CONV, spatial_dims](c1, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ThreeLevelUNet expects input of shape (B, {self.in_channels}, spatial x {self.spatial_dims}), "
                f"got {list(x.shape)}."
            )
        for size in spatial:
            if size % 8 != 0:
                raise ValueError(
                    f"ThreeLevelUNet needs every spatial size divisible by 8 (three 2x poolings), got {list(spatial)}; "
                    "resize or pad the input, e.g. to 256x256."
                )
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        b = self.bottleneck(self.pool(e3))
        d3 = self.dec3(torch.cat([self.up3(b), e3], dim=1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.final(d1)


def load_reference_state_dict(
    net: torch.nn.Module, source: str | PathLike | Mapping[str, torch.Tensor]
) -> torch.nn.Module:
    """Load the reference project's weights (e.g. ``unet_liver_final.pth``) into ``net``, strictly (any network of
    :func:`networks.build_network` loads its own weights the same way).

    The reference's module names are ours, so no key is renamed; a ``{"model_state_dict": ...}`` or
    ``{"state_dict": ...}`` wrapper and a ``module.`` prefix (``DataParallel``) are unwrapped. Files are read with
    ``weights_only=True``: loading weights never runs code. The reference applied a sigmoid inside ``forward``;
    this network returns logits, so the reference's mask ``sigmoid(out) > 0.5`` is ``logits > 0`` here.

    Raises:
        ValueError: when the weights do not fit ``net``; the message names the differing keys or shapes.
    """
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        state = torch.load(source, map_location="cpu", weights_only=True)
    for wrapper in ("model_state_dict", "state_dict", "model"):
        if isinstance(state.get(wrapper), Mapping):
            state = dict(state[wrapper])
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
                   for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        described = (f"ThreeLevelUNet(in_channels={net.in_channels}, out_channels={net.out_channels}, "
                     f"channels={net.channels})" if isinstance(net, ThreeLevelUNet) else type(net).__name__)
        raise ValueError(
            f"weights from {source if not isinstance(source, Mapping) else 'the given state_dict'} do not fit "
            f"{described}: missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {wrong_shape[:5]}."
        )
    net.load_state_dict(state, strict=True)
    return net
