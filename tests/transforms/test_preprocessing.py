import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Resize

from transforms import ResizeSlices, ResizeSlicesd, network_input


def _volume():
    grey = torch.as_tensor(np.random.default_rng(0).integers(0, 256, (1, 30, 26, 5)).astype(np.float32))
    return MetaTensor(grey, affine=torch.diag(torch.tensor([0.8, 0.7, 2.5, 1.0])))


def test_a_volume_is_resized_slice_by_slice_as_its_slices_are():
    volume = _volume()
    out = ResizeSlices(64)(volume)
    assert out.shape == (1, 64, 64, 5)
    for k in range(5):  # bit for bit what the 2D resize gives each slice alone
        assert torch.equal(out[..., k].as_tensor(), torch.as_tensor(Resize((64, 64), mode="bilinear")(volume[..., k])))


def test_the_resize_is_inverted_onto_the_original_grid():
    volume = _volume()
    transform = ResizeSlicesd(keys="image", spatial_size=16)
    resized = transform({"image": volume})
    assert resized["image"].affine[0, 0] == pytest.approx(0.8 * 30 / 16)  # the same field of view
    other = ResizeSlicesd(keys="image", spatial_size=16)  # both alive: MONAI checks the instance's id
    with pytest.raises(RuntimeError):
        other.inverse(resized)
    restored = transform.inverse(resized)["image"]
    assert restored.shape == volume.shape and torch.allclose(restored.affine, volume.affine)
    assert not restored.applied_operations


def test_network_input_scales_grey_levels_and_resizes_labels_with_nearest():
    label = MetaTensor(torch.zeros(1, 30, 26))
    label[0, 10:20, 5:15] = 1
    out = network_input("image", 32, "label")({"image": MetaTensor(torch.full((1, 30, 26), 255.0)), "label": label})
    assert out["image"].shape == out["label"].shape == (1, 32, 32)
    assert float(out["image"].max()) == 1.0 and set(torch.unique(out["label"]).tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="spatial_size"):
        ResizeSlices(4)
