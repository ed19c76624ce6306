import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from transforms import WINDOW_PRESETS, WindowHU, WindowHUd, window_range


def test_abdomen_window_matches_the_kaggle_jpg_levels():
    hu = torch.tensor([[-1000.0, -160.0, 40.0, 240.0, 1000.0]])
    grey = WindowHU("abdomen")(hu)
    assert grey.dtype == torch.uint8
    assert grey.tolist() == [[0, 0, 128, 255, 255]]


def test_window_is_the_chaos_png_formula_rounded():
    hu = np.arange(-300, 400, 7, dtype=np.float32)[None]
    expected = np.floor(np.clip((hu + 160) / 400 * 255, 0, 255) + 0.5)
    assert np.array_equal(np.asarray(WindowHU()(hu)), expected.astype(np.uint8))


def test_explicit_window_overrides_the_preset():
    grey = WindowHU(window_hu=(-100, 100))(torch.tensor([[-100.0, 0.0, 100.0]]))
    assert grey.tolist() == [[0, 128, 255]]
    assert window_range("liver") == (WINDOW_PRESETS["liver"][0] - 80, WINDOW_PRESETS["liver"][0] + 80)


def test_float_output_keeps_whole_grey_levels_and_the_affine():
    img = MetaTensor(torch.tensor([[[[-37.3, 12.9]]]]), affine=torch.diag(torch.tensor([0.7, 0.7, 2.5, 1.0])))
    out = WindowHU(dtype=np.float32)(img)
    assert out.dtype == torch.float32 and torch.equal(out, torch.round(out))
    assert torch.equal(out.affine, img.affine)


@pytest.mark.parametrize("kwargs, match", [
    ({"preset": "brain"}, "`preset` must be one of"),
    ({"window_hu": (240, -160)}, "lowest < highest"),
])
def test_bad_windows_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WindowHU(**kwargs)


def test_dictionary_version_windows_only_its_keys():
    data = {"image": torch.tensor([[40.0]]), "label": torch.tensor([[2.0]])}
    out = WindowHUd(keys="image")(data)
    assert out["image"].tolist() == [[128]] and out["label"].tolist() == [[2.0]]


@pytest.mark.parametrize("stored", [np.int16, np.uint8, np.float32, np.float64])
def test_block_by_block_window_equals_monai_scale_intensity_range_rounded(monkeypatch, stored):
    """The window runs on blocks of voxels (no float32 copy of a whole scan): whatever the stored type, the block
    size and the layout, each voxel gets what MONAI's ScaleIntensityRange + rounding gives the whole volume."""
    from monai.transforms import ScaleIntensityRange

    monkeypatch.setattr(WindowHU, "BLOCK", 1000)  # many blocks, the last one partial
    rng = np.random.default_rng(0)
    low, high = (0, 255) if stored == np.uint8 else (-3000, 3000)
    hu = rng.uniform(low, high, (1, 23, 19, 11))
    hu = (np.round(hu) if np.issubdtype(stored, np.integer) else hu + 0.5).astype(stored)
    view = MetaTensor(torch.from_numpy(hu).permute(0, 3, 2, 1), affine=torch.diag(torch.tensor([0.7, 0.8, 2.5, 1.0])))
    reference = ScaleIntensityRange(a_min=-160, a_max=240, b_min=0.0, b_max=255.0, clip=True, dtype=np.float32)
    expected = torch.floor(torch.as_tensor(reference(view.as_tensor().float())) + 0.5)
    for dtype in (np.uint8, np.float32):
        out = WindowHU(dtype=dtype)(view)
        assert isinstance(out, MetaTensor) and out.shape == view.shape and torch.equal(out.affine, view.affine)
        assert torch.equal(out.as_tensor().to(torch.float32), expected)
