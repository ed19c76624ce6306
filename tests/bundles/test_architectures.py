"""MONAI's stock networks through the same bundle command lines: ``--architecture`` trains one, the model file
records it, and evaluation and inference rebuild it with no flag; a flag that contradicts the file is refused."""

import nibabel as nib
import numpy as np
import pytest
import torch

from networks import build_network
from workflows.bundle import run_workflow
from workflows.engine.training import warm_start

from .conftest import TINY, make_lists


@pytest.fixture(scope="module")
def both_lists(tmp_path_factory):
    return make_lists(tmp_path_factory.mktemp("architectures"), target="both", chunk_size=40, positives=20,
                      negatives=4)


@pytest.mark.parametrize("architecture", ["dynunet", "segresnet"])
def test_a_stock_network_trains_evaluates_and_infers_with_the_same_command_lines(architecture, both_lists, tmp_path):
    models = tmp_path / "models"
    run_workflow("training", ["train"], "train", dataset_dir=str(both_lists), ckpt_dir=str(models),
                 architecture=architecture, **TINY)
    saved = torch.load(models / "model.pt", weights_only=True)
    assert saved["settings"]["architecture"] == architecture
    rebuilt = build_network(architecture, in_channels=1, out_channels=2, channels=TINY["network_def#channels"],
                            spatial_size=TINY["spatial_size"])
    rebuilt.load_state_dict(saved["model"])  # the weights are that network's, strictly

    scan = sorted((both_lists.parent / "raw").glob("volume-*.nii.gz"))[0]
    rows = run_workflow("inference", ["inference"], "infer", input=str(scan), output_dir=str(tmp_path / "out"),
                        ckpt_file=str(models / "model.pt"))[0]
    assert rows[0]["segmentation"] and "error" not in rows[0]
    seg = nib.load(tmp_path / "out" / f"{scan.name.split('.')[0]}_seg.nii.gz")
    assert seg.shape == nib.load(scan).shape and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
    metrics = run_workflow("evaluating", ["train", "evaluate"], "eval", dataset_dir=str(both_lists),
                           ckpt_file=str(models / "model.pt"), output_dir=str(tmp_path / "eval"), progress=False)
    assert metrics and (tmp_path / "eval" / "metrics.json").is_file()

    with pytest.raises(ValueError, match=rf"--architecture 'three_level_unet' contradicts .*model.pt, trained with "
                                         rf"architecture '{architecture}'"):
        run_workflow("inference", ["inference"], "infer", input=str(scan), output_dir=str(tmp_path / "again"),
                     ckpt_file=str(models / "model.pt"), architecture="three_level_unet")
    assert not (tmp_path / "again").exists()


def test_the_tumour_stage_of_a_stock_network_starts_from_its_liver_stage(tmp_path):
    torch.manual_seed(0)
    liver = build_network("segresnet", in_channels=3, out_channels=2, channels=(4, 8, 16, 32), spatial_size=32)
    torch.save({"model": liver.state_dict(), "settings": {"target": "both"}}, tmp_path / "liver.pt")
    tumour = build_network("segresnet", in_channels=3, out_channels=1, channels=(4, 8, 16, 32), spatial_size=32)
    copied = warm_start(tumour, tmp_path / "liver.pt")
    assert copied == len(tumour.state_dict())  # every tensor, the output layer's too
    out_weight = [k for k in tumour.state_dict() if k.startswith("conv_final")][-2]
    assert torch.equal(tumour.state_dict()[out_weight], liver.state_dict()[out_weight][1:2])  # the tumour channel
