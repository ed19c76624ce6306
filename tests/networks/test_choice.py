"""The networks a model can be, by name: each maps (B, C, H, W) slices to logits of the same size and trains."""

import pytest
import torch

from networks import NETWORKS, ThreeLevelUNet, build_network
from networks.choice import dynunet_levels


@pytest.mark.parametrize("name", NETWORKS)
def test_each_network_gives_one_logit_per_target_and_pixel_and_learns(name):
    torch.manual_seed(0)
    net = build_network(name, spatial_dims=2, in_channels=3, out_channels=2, channels=(4, 8, 16, 32), spatial_size=32)
    x = torch.rand(2, 3, 32, 32)
    y = (x[:, :2] > 0.5).float()  # a pixelwise target any of them can fit
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        out = net(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert out.shape == (2, 2, 32, 32)
    assert losses[-1] < 0.8 * losses[0], losses


def test_the_default_is_the_reference_network_and_its_widths():
    net = build_network()
    assert isinstance(net, ThreeLevelUNet) and tuple(net.channels) == (64, 128, 256, 512)
    assert sum(p.numel() for p in net.parameters()) == 7_701_825


def test_dynunet_follows_nnunets_depth_and_width_rule():
    assert [dynunet_levels(s) for s in (256, 512, 96, 32, 8)] == [6, 6, 4, 3, 1]
    net = build_network("dynunet", channels=(16, 32, 64, 128), spatial_size=256)
    assert list(net.filters) == [16, 32, 64, 128, 256, 256, 256]  # doubling from channels[0], capped at 16x
    assert list(net.strides) == [1, 2, 2, 2, 2, 2, 2]


def test_an_unknown_network_is_refused_by_name():
    with pytest.raises(ValueError, match=r"--architecture must be one of three_level_unet, dynunet, segresnet, got 'vnet'"):
        build_network("vnet")


@pytest.mark.parametrize("name", NETWORKS)
def test_members_are_networks_of_their_own_whose_logits_are_averaged(name):
    torch.manual_seed(0)
    pair = build_network(name, 2, 3, 2, (4, 8, 16, 32), 32, members=2).eval()
    assert len(pair.members) == 2 and all(k.startswith("members.") for k in pair.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        first, second = pair.members[0](x), pair.members[1](x)
        assert pair(x).shape == (1, 2, 32, 32) and torch.allclose(pair(x), (first + second) / 2, atol=1e-6)
        assert not torch.allclose(first, second)  # initialised apart, as two trainings would be
    assert build_network(name, 2, 3, 2, (4, 8, 16, 32), 32, members=1).__class__ is not pair.__class__
