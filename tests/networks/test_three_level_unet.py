import pytest
import torch
import torch.nn as nn

from networks import ThreeLevelUNet, load_reference_state_dict

TINY = (8, 16, 32, 64)


class ReferenceUNet(nn.Module):
    """The reference project's model as it described it: sigmoid inside forward, same module names."""

    def __init__(self):
        super().__init__()

        def block(i, o):
            m = nn.Module()
            m.conv = nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                                   nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))
            m.forward = lambda x: m.conv(x)
            return m

        self.enc1, self.enc2, self.enc3 = block(1, 64), block(64, 128), block(128, 256)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = block(256, 512)
        self.up3, self.dec3 = nn.ConvTranspose2d(512, 256, 2, stride=2), block(512, 256)
        self.up2, self.dec2 = nn.ConvTranspose2d(256, 128, 2, stride=2), block(256, 128)
        self.up1, self.dec1 = nn.ConvTranspose2d(128, 64, 2, stride=2), block(128, 64)
        self.final = nn.Conv2d(64, 1, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        b = self.bottleneck(self.pool(e3))
        d3 = self.dec3(torch.cat([self.up3(b), e3], 1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return torch.sigmoid(self.final(d1))


def test_default_network_has_the_reference_parameter_count():
    net = ThreeLevelUNet()
    assert sum(p.numel() for p in net.parameters()) == 7_701_825


@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("out_channels", [1, 2])
def test_output_is_logits_of_the_input_size(size, out_channels):
    net = ThreeLevelUNet(out_channels=out_channels, channels=TINY).eval()
    with torch.no_grad():
        net.final.bias.fill_(5.0)  # a probability could never exceed 1
        out = net(torch.randn(2, 1, size, size))
    assert out.shape == (2, out_channels, size, size)
    assert out.min() > 1


def test_full_width_network_keeps_shape():
    with torch.no_grad():
        out = ThreeLevelUNet().eval()(torch.randn(1, 1, 64, 64))
    assert out.shape == (1, 1, 64, 64)


def test_3d_variant_keeps_shape():
    net = ThreeLevelUNet(spatial_dims=3, in_channels=2, out_channels=3, channels=(2, 4, 8, 16))
    assert net(torch.randn(1, 2, 16, 16, 8)).shape == (1, 3, 16, 16, 8)


@pytest.mark.parametrize("shape", [(1, 1, 60, 64), (1, 1, 64, 100)])
def test_sizes_not_divisible_by_8_are_refused_with_the_size(shape):
    net = ThreeLevelUNet(channels=TINY)
    with pytest.raises(ValueError, match=r"divisible by 8.*\[" + str(shape[2])):
        net(torch.zeros(shape))


def test_wrong_input_channels_are_refused():
    with pytest.raises(ValueError, match="expects input of shape"):
        ThreeLevelUNet(channels=TINY)(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("kwargs, match", [
    ({"channels": (8, 16, 32)}, "4 positive widths"),
    ({"spatial_dims": 1}, "spatial_dims"),
    ({"out_channels": 0}, "positive"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ThreeLevelUNet(**kwargs)


def _trained_looking_reference():
    torch.manual_seed(0)
    ref = ReferenceUNet()
    for module in ref.modules():  # non-trivial BatchNorm statistics, as a trained model has
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    with torch.no_grad():
        ref.final.bias.sub_(float(ref.eval()(torch.randn(1, 1, 64, 64)).logit().median()))
    return ref.eval()


def test_reference_state_dict_loads_strictly_and_gives_the_same_mask(tmp_path):
    ref = _trained_looking_reference()
    path = tmp_path / "unet_liver_final.pth"
    torch.save(ref.state_dict(), path)

    ours = ThreeLevelUNet()
    ours.load_state_dict(torch.load(path, weights_only=True), strict=True)  # the names are the reference's own
    ours = load_reference_state_dict(ThreeLevelUNet(), path).eval()

    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        ref_mask = ref(x) > 0.5
        our_mask = ours(x) > 0
        assert torch.allclose(torch.sigmoid(ours(x)), ref(x), atol=1e-5)
    assert 0.05 < ref_mask.float().mean() < 0.95  # a mask with both classes, so the comparison means something
    assert torch.equal(our_mask, ref_mask)


def test_wrapped_reference_checkpoints_are_unwrapped(tmp_path):
    ref = _trained_looking_reference()
    path = tmp_path / "checkpoint.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}, path)
    ours = load_reference_state_dict(ThreeLevelUNet(), path)
    assert torch.equal(ours.final.weight, ref.final.weight)


def test_weights_that_do_not_fit_name_the_difference():
    state = ThreeLevelUNet(out_channels=2).state_dict()
    with pytest.raises(ValueError, match=r"final.weight: file \(2, 64, 1, 1\) vs network \(1, 64, 1, 1\)"):
        load_reference_state_dict(ThreeLevelUNet(), state)


def test_network_compiles_to_torchscript_with_equal_output():
    net = ThreeLevelUNet(channels=TINY).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-6)
