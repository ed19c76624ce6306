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
