"""BCE + Dice on logits: computed in fp32 even when the network runs under bf16 autocast."""

import torch

from networks import BCEDiceLoss, ThreeLevelUNet


def test_the_loss_is_fp32_under_bf16_autocast_and_equals_the_fp32_loss_of_the_same_logits():
    torch.manual_seed(0)
    network = ThreeLevelUNet(channels=(4, 8, 16, 32), out_channels=2)
    image = torch.rand(2, 1, 32, 32)
    target = torch.zeros(2, 2, 32, 32)
    target[:, 0, 8:24, 8:24] = 1
    target[:, 1, 14:17, 14:17] = 1  # a 9-pixel "tumour": what bf16 sums lose
    loss = BCEDiceLoss()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = network(image)
        under_autocast = loss(logits, target)
    assert logits.dtype == torch.bfloat16 and under_autocast.dtype == torch.float32
    reference = loss(logits.detach().float(), target)  # the same logits, no autocast
    assert torch.equal(under_autocast.detach(), reference)
    under_autocast.backward()  # gradients flow back through the cast
    assert network.enc1.conv[0].weight.grad is not None


def test_pixels_whose_tumour_is_unknown_are_left_out_and_a_fully_known_target_gives_the_loss_it_always_gave():
    from monai.losses import DiceLoss

    torch.manual_seed(0)
    loss = BCEDiceLoss()
    logits, target = torch.randn(3, 2, 16, 16), (torch.rand(3, 2, 16, 16) > 0.6).float()
    reference = 0.5 * torch.nn.functional.binary_cross_entropy_with_logits(logits, target) \
        + 0.5 * DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)(logits, target)
    assert torch.allclose(loss(logits, target), reference)
    assert torch.allclose(loss._masked(logits, target), reference, atol=1e-6)  # the masked form, nothing masked
    unknown = target.clone()
    unknown[0, 1, :8] = -1  # half a slice's tumour channel not labelled
    masked = loss(logits, unknown)
    changed = logits.clone()
    changed[0, 1, :8] += 50  # whatever the network says there
    assert torch.equal(loss(changed, unknown), masked)
    changed[0, 1, 8:] += 50  # but where the tumour is known it counts
    assert not torch.allclose(loss(changed, unknown), masked)
    logits.requires_grad_(True)
    loss(logits, unknown).backward()
    assert float(logits.grad[0, 1, :8].abs().max()) == 0 and float(logits.grad[0, 1, 8:].abs().max()) > 0
