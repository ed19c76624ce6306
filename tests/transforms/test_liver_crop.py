"""The liver box, the crop and its inverse."""

import numpy as np
import pytest
import torch

from transforms.liver_crop import CropToBoxd, crop_box, liver_box, paste_box, square_box


def test_the_box_is_square_around_the_liver_with_the_margin_in_mm():
    liver = np.zeros((100, 120, 10), bool)
    liver[20:40, 30:80, 3:6] = True  # 20 x 50 pixels, slices 3..5
    box = liver_box(liver, spacing_mm=(0.5, 0.5), margin_mm=5.0, z_margin=2)  # 5 mm = 10 pixels
    x0, x1, y0, y1, z0, z1 = box
    assert x1 - x0 == y1 - y0 == 50 + 2 * 10
    assert (x0 + x1) // 2 == 30 and (y0 + y1) // 2 == 55  # centred on the liver
    assert (z0, z1) == (1, 8)
    assert liver_box(liver, (2.0, 2.0), 5.0)[1] - liver_box(liver, (2.0, 2.0), 5.0)[0] == 50 + 2 * 3  # ceil(2.5)
    assert liver_box(np.zeros((4, 4, 4), bool), (1, 1)) is None
    assert liver_box(liver, (1, 1), z_margin=5)[4:] == (0, 10)  # clamped to the volume
    with pytest.raises(ValueError, match="spacing"):
        liver_box(liver, (float("nan"), 1.0))


def test_square_box_rounds_the_side_to_even():
    assert square_box((0, 5), (0, 3), 0) == (-1, 5, -2, 4)


@pytest.mark.parametrize("box", [(10, 30, 5, 25, 2, 6), (-8, 22, 20, 50, 0, 8), (25, 45, -5, 15, 3, 4)])
def test_crop_then_paste_gives_back_every_voxel_inside_the_box_and_the_fill_outside(box):
    torch.manual_seed(0)
    volume = torch.rand(2, 40, 36, 8)
    crop = crop_box(volume, box, fill=-1.0)
    x0, x1, y0, y1, z0, z1 = box
    assert crop.shape == (2, x1 - x0, y1 - y0, z1 - z0)
    back = paste_box(crop, box, volume.shape[1:], fill=-7.0)
    inside = torch.zeros(volume.shape[1:], dtype=torch.bool)
    inside[max(x0, 0):x1, max(y0, 0):y1, z0:z1] = True
    assert torch.equal(back[:, inside], volume[:, inside])
    assert bool((back[:, ~inside] == -7.0).all())
    assert int((crop == -1.0).sum()) == 2 * (crop.shape[1] * crop.shape[2] - inside[..., z0].sum()) * (z1 - z0)


def test_crop_to_box_crops_image_and_label_alike_and_drops_the_box():
    image, label = torch.rand(3, 20, 20), (torch.rand(1, 20, 20) > 0.5).float()
    out = CropToBoxd(keys=["image", "label"])({"image": image, "label": label, "box": [4, 14, -2, 8, 0, 1]})
    assert out["image"].shape == (3, 10, 10) and out["label"].shape == (1, 10, 10) and "box" not in out
    assert torch.equal(out["image"][:, :, 2:], image[:, 4:14, 0:8]) and bool((out["image"][:, :, :2] == 0).all())
    same = CropToBoxd(keys=["image"])({"image": image})
    assert same["image"] is image  # the whole-slice stage: no box, no crop
