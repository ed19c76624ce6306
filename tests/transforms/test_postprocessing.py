import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import KeepLargestConnectedComponent

from transforms import TargetToLabel, TumourInLiver


def _map(affine_diag=(1.0, 1.0, 2.0)):
    label = np.zeros((20, 20, 10), np.uint8)
    label[2:12, 2:12, 2:8] = 1  # liver
    label[15:18, 15:18, 1:3] = 1  # a stray island
    label[5:8, 5:8, 4:6] = 2  # tumour inside
    label[16, 16, 2] = 2  # tumour on the island
    label[10, 10, 7] = 2  # a one-voxel speck inside the liver
    label[0, 19, 9] = 2  # a tumour voxel far from any liver
    return MetaTensor(torch.as_tensor(label)[None], affine=torch.diag(torch.tensor([*affine_diag, 1.0])))


def test_the_bundle_clean_up_keeps_the_largest_liver_and_tumour_inside_it():
    label = _map()
    largest = KeepLargestConnectedComponent(applied_labels=[1, 2], independent=False, connectivity=3)(label)
    out = TumourInLiver(min_tumour_mm3=5.0)(largest)[0].numpy()
    assert out[15:18, 15:18, 1:3].max() == 0  # island and its tumour gone
    assert (out[5:8, 5:8, 4:6] == 2).all()  # 18 voxels x 2 mm³ kept
    assert out[10, 10, 7] == 1  # a 2 mm³ speck becomes the liver around it
    assert out[0, 19, 9] == 0  # tumour touching no liver is dropped
    assert int((out == 1).sum()) == 10 * 10 * 6 - 18  # the liver itself untouched


def test_tumour_size_is_measured_in_mm3_from_the_affine():
    speck = _map(affine_diag=(3.0, 3.0, 3.0))  # the one-voxel speck is now 27 mm³
    assert TumourInLiver(min_tumour_mm3=20.0)(speck)[0].numpy()[10, 10, 7] == 2
    assert TumourInLiver(min_tumour_mm3=30.0)(speck)[0].numpy()[10, 10, 7] == 1


def test_on_one_image_a_tumour_is_kept_when_its_area_reaches_the_middle_section_of_the_sphere():
    """500 mm³ is a sphere of 9.85 mm: on one 2D image (0.8 mm pixels) a disc of that diameter stays, a smaller goes."""
    def one_image(radius_mm):
        label = np.zeros((64, 64, 1), np.uint8)
        label[4:60, 4:60] = 1
        rows, cols = np.mgrid[0:64, 0:64] * 0.8
        label[(rows - 25.6) ** 2 + (cols - 25.6) ** 2 <= radius_mm ** 2, 0] = 2
        return MetaTensor(torch.as_tensor(label)[None], affine=torch.diag(torch.tensor([0.8, 0.8, 1.0, 1.0])))

    assert (TumourInLiver(min_tumour_mm3=500)(one_image(5.4))[0].numpy() == 2).any()
    assert not (TumourInLiver(min_tumour_mm3=500)(one_image(4.4))[0].numpy() == 2).any()
    volume = one_image(5.4).repeat(1, 1, 1, 3)  # the same disc on 3 slices of 1 mm: 3 x 92 mm³, under 500
    assert not (TumourInLiver(min_tumour_mm3=500)(volume)[0].numpy() == 2).any()


def test_a_tumour_only_map_keeps_its_tumour_and_zero_keeps_every_speck():
    label = _map()
    tumour_only = MetaTensor(torch.where(label == 1, 0, label), affine=label.affine)
    assert np.array_equal(TumourInLiver(min_tumour_mm3=0)(tumour_only).numpy(), tumour_only.numpy())
    expected = label[0].numpy().copy()
    expected[0, 19, 9] = 0  # only the tumour touching no liver goes; the one-voxel speck stays
    assert np.array_equal(TumourInLiver(min_tumour_mm3=0)(label)[0].numpy(), expected)
    with pytest.raises(ValueError, match="min_tumour_mm3"):
        TumourInLiver(min_tumour_mm3=-1)


def test_target_channels_become_one_lits_map():
    channels = torch.zeros(2, 4, 4, 3)
    channels[0, :2] = 1  # liver
    channels[1, 0, 0] = 0.9  # tumour probability
    label = TargetToLabel("both")(channels)
    assert label.shape == (1, 4, 4, 3) and label.dtype == torch.uint8
    assert int(label[0, 0, 0, 0]) == 2 and int(label[0, 1, 0, 0]) == 1 and int(label[0, 3, 3, 2]) == 0
    with pytest.raises(ValueError, match="needs 1 channel"):
        TargetToLabel("liver")(channels)
