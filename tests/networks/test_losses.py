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
