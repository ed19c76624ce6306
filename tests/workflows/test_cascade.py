"""The tumour stage on the crop around the liver lands its tumour on the voxels a whole-slice prediction would."""

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from transforms import LoadScan, WindowHU, canonical_grey, to_canonical
from transforms.context import StackContext
from transforms.liver_crop import liver_box
from workflows.data.synthetic_cases import generate_case
from workflows.inference.cascade import OUTSIDE_LOGIT, TumourStage, TumourStaged


class Pixelwise(torch.nn.Module):
    """A tumour 'network' that looks at each pixel alone (a 1x1 convolution): its prediction of a pixel does not
    depend on where the crop put it, so crop + paste must give the whole-slice prediction exactly."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(1.0, 3.0, channels).view(1, channels, 1, 1))
            self.conv.bias.fill_(-2.5)

    def forward(self, x):
        return self.conv(x)


def _stage(size: int, context: int = 1, margin_mm: float = 4.0) -> TumourStage:
    settings = {"spatial_size": size, "context": context, "crop_margin_mm": margin_mm, "channels": [4, 8, 16, 32]}
    return TumourStage(network=Pixelwise(2 * context + 1), settings=settings)


def _whole_slice(stage: TumourStage, grey: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        stacked = StackContext(stage.stack.context)(grey / 255.0)  # (C, X, Y, Z)
        return stage.network.network(stacked.permute(3, 0, 1, 2)).permute(1, 2, 3, 0)  # (1, X, Y, Z)


def test_crop_and_paste_back_equal_the_whole_slice_prediction_inside_the_box():
    case = generate_case(0, seed=4, size=48, slices=12)
    grey = WindowHU("abdomen")(torch.as_tensor(case.hu, dtype=torch.float32)[None]).float()
    liver = torch.as_tensor(case.label >= 1)
    box = liver_box(liver, case.spacing[:2], 4.0)
    side = box[1] - box[0]
    stage = _stage(size=side)  # the network's size is the box's: no resize, so the identity is exact
    tumour = stage.logits(grey, liver, case.spacing[:2])
    whole = _whole_slice(stage, grey)
    inside = torch.zeros(grey.shape[1:], dtype=torch.bool)
    inside[max(box[0], 0):box[1], max(box[2], 0):box[3], box[4]:box[5]] = True
    assert torch.allclose(tumour[0][inside], whole[0][inside], atol=1e-5)
    assert bool((tumour[0][~inside] == OUTSIDE_LOGIT).all())
    assert 0 < int((tumour[0][inside] > 0).sum()) < int(inside.sum())  # a real comparison: some tumour, not all
    resized = _stage(size=side * 2).logits(grey, liver, case.spacing[:2])  # zoomed 2x and back: the same voxels
    assert float(((resized[0][inside] > 0) == (whole[0][inside] > 0)).float().mean()) > 0.97
    assert bool((stage.logits(grey, torch.zeros_like(liver), case.spacing[:2]) == OUTSIDE_LOGIT).all())


def _nifti(case, codes: str | None = None):
    case = dataclasses.replace(case, stored_axcodes=codes) if codes else case
    return case.stored_image(case.hu)


@pytest.mark.parametrize("codes", ["LPS", "ILP"])
def test_the_staged_tumour_lands_on_the_scan_grid_whatever_its_orientation(tmp_path, codes):
    """Through the bundle's order (canonical grey kept, logits inverted to the stored grid, then the stage), the
    tumour channel is the crop's prediction at the canonical voxels, written back in the stored orientation."""
    case = generate_case(0, seed=4, size=48, slices=12)
    path = tmp_path / "scan.nii.gz"
    nib.save(_nifti(case, codes), path)
    grey = canonical_grey()({"image": str(path)})["image"]
    stored = LoadScan()(str(path))
    liver_logit = torch.where(torch.as_tensor(case.label >= 1), 5.0, -5.0)[None]
    canonical_pred = MetaTensor(torch.cat([liver_logit, torch.zeros_like(liver_logit)]), affine=grey.affine)
    # the same logits on the stored grid, as Invertd hands them over
    pred = MetaTensor(torch.as_tensor(np.stack([_stored(case, liver_logit[0].numpy(), codes)] * 2), dtype=torch.float32),
                      affine=stored.affine)
    staged = TumourStaged(keys="pred", ckpt_file="unused", image_key="image_full")
    stage = _stage(size=32)
    staged._stage = stage
    out = staged({"pred": pred, "image_full": grey})
    assert "image_full" not in out and out["pred"].shape == pred.shape
    back = to_canonical(MetaTensor(out["pred"], affine=stored.affine))
    expected = stage.logits(grey, torch.as_tensor(case.label >= 1), case.spacing[:2])
    assert torch.allclose(torch.as_tensor(back[1]), expected[0], atol=1e-5)
    assert torch.equal(torch.as_tensor(back[0]), torch.as_tensor(canonical_pred[0]))  # the liver is untouched
    assert TumourStaged(keys="pred", ckpt_file="unused", enabled=False)({"pred": pred, "image_full": grey})["pred"] is pred


def _stored(case, canonical: np.ndarray, codes: str):
    """A canonical array as the case stores it in ``codes``."""
    return dataclasses.replace(case, stored_axcodes=codes).stored_image(canonical).get_fdata()


def test_a_one_stage_model_file_has_no_tumour_stage(tmp_path):
    from networks import ThreeLevelUNet
    from workflows.engine.model_file import save_model_file

    path = save_model_file(tmp_path / "model.pt", ThreeLevelUNet(channels=(4, 8, 16, 32)).state_dict(), {"target": "both"})
    with pytest.raises(ValueError, match="holds no tumour stage"):
        TumourStage(path)



class BackHalf(torch.nn.Module):
    """A tumour 'network' that marks the back half of whatever crop it is shown, whatever is there: a false lesion
    that comes from where lesions sat in training rather than from what the scan shows. ``under``: a pixelwise
    network whose logits it adds to the back half only (the same lesions, outlined a little wider at the back)."""

    def __init__(self, under: torch.nn.Module | None = None, back: float = 4.0) -> None:
        super().__init__()
        self.under, self.back = under, back

    def forward(self, x):
        logits = self.under(x) if self.under is not None else torch.full_like(x[:, :1], -self.back)
        shift = torch.zeros_like(logits)
        shift[:, :, x.shape[2] // 2:] = self.back if self.under is not None else 2 * self.back
        return logits + shift  # rows run front to back (P in the canonical PLS)


def test_the_flip_check_drops_the_lesions_the_mirrored_reading_does_not_mark_and_keeps_the_others_as_read():
    case = generate_case(0, seed=4, size=48, slices=12)
    grey = WindowHU("abdomen")(torch.as_tensor(case.hu, dtype=torch.float32)[None]).float()
    liver = torch.as_tensor(case.label >= 1)
    settings = {"spatial_size": 32, "context": 1, "crop_margin_mm": 4.0, "channels": [4, 8, 16, 32]}

    def read(network, flip_check):
        return TumourStage(network=network, settings=settings, flip_check=flip_check).logits(grey, liver, case.spacing[:2])

    # a pixelwise network sees each lesion the same upside down: nothing dropped
    plain = read(Pixelwise(3), False)
    assert 0 < int((plain > 0).sum()) and torch.allclose(read(Pixelwise(3), True), plain, atol=1e-5)
    # marking the back half of the crop whatever is there: half the liver's box alone, nothing once checked
    alone = read(BackHalf(), False)
    assert 0.3 < float((alone[alone > OUTSIDE_LOGIT] > 0).float().mean()) < 0.7
    assert not bool((read(BackHalf(), True) > 0).any())
    # the kept lesions keep the plain reading's logits and outline, not an average with the mirror's
    wider = read(BackHalf(Pixelwise(3), back=0.3), False)
    checked = read(BackHalf(Pixelwise(3), back=0.3), True)
    assert int((wider > 0).sum()) > int((plain > 0).sum()) and torch.equal(checked, wider)
