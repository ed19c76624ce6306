"""Two stages and slice context through the bundle: the same command lines train the liver on whole slices and the
tumour on crops around it, one model file holds both, and inference and evaluation need no other flag."""

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from transforms import liver_mask, tumour_mask
from workflows.bundle import run_workflow
from workflows.data.liver_boxes import LiverBoxes
from workflows.engine.training_checks import read_datalist

from .conftest import TINY, make_lists


@pytest.fixture(scope="module")
def both_lists(tmp_path_factory):
    return make_lists(tmp_path_factory.mktemp("cascade"), target="both", chunk_size=40, positives=30, negatives=6)


@pytest.fixture(scope="module")
def cascade(both_lists, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    common = {**TINY, "dataset_dir": str(both_lists), "context": 1, "epochs_per_chunk": 2}
    run_workflow("training", ["train"], "train", ckpt_dir=str(models / "whole"), **common)
    run_workflow("training", ["train"], "train", ckpt_dir=str(models / "tumour"), stage="liver_crop",
                 liver_model=str(models / "whole" / "model.pt"), **common)
    return models


def test_one_model_file_holds_both_stages_each_with_its_settings(cascade):
    whole = torch.load(cascade / "whole" / "model.pt", weights_only=True)
    both = torch.load(cascade / "tumour" / "model.pt", weights_only=True)
    assert set(both) == {"model", "settings", "tumour_model"}
    assert all(torch.equal(both["model"][k], v) for k, v in whole["model"].items())  # the liver stage as trained
    assert both["settings"]["target"] == "both" and both["settings"]["context"] == 1
    tumour = both["settings"]["tumour_stage"]
    assert tumour["target"] == "tumor" and tumour["stage"] == "liver_crop" and tumour["crop_margin_mm"] == 15.0
    assert both["tumour_model"]["enc1.conv.0.weight"].shape[1] == 3  # 2k + 1 input channels
    assert both["tumour_model"]["final.weight"].shape[0] == 1


def test_the_tumour_stage_trains_on_the_slices_inside_the_liver_box(both_lists, cascade):
    chunk = read_datalist(both_lists / "chunk_0.json")
    rows = LiverBoxes(both_lists, "liver_crop").rows(chunk)
    assert 0 < len(rows) <= len(chunk) and all(r["box"][4] <= r["slice_index"] < r["box"][5] for r in rows)
    log = json.loads((cascade / "tumour" / "training_log.json").read_text())
    assert log[0]["slices"] == len(rows)


def test_inference_with_the_two_stage_file_needs_no_other_flag(both_lists, cascade, tmp_path):
    scan = sorted((both_lists.parent / "raw").glob("volume-*.nii.gz"))[0]
    rows = run_workflow("inference", ["inference"], "infer", input=str(scan), output_dir=str(tmp_path / "out"),
                        ckpt_file=str(cascade / "tumour" / "model.pt"), largest_liver=False, min_tumour_mm3=0)[0]
    seg = nib.load(tmp_path / "out" / f"{scan.name.split('.')[0]}_seg.nii.gz")
    assert seg.shape == nib.load(scan).shape and np.allclose(seg.affine, nib.load(scan).affine)
    labels = np.asarray(seg.dataobj)
    assert not (tumour_mask(labels) & ~liver_mask(labels)).any()  # the tumour is inside the liver
    assert rows[0]["segmentation"] and "error" not in rows[0]
    # evaluation reads the file's whole-slice stage; the one-stage file of the same liver stage runs too
    metrics = run_workflow("evaluating", ["train", "evaluate"], "eval", dataset_dir=str(both_lists),
                           ckpt_file=str(cascade / "tumour" / "model.pt"), output_dir=str(tmp_path / "eval"),
                           progress=False)
    assert (tmp_path / "eval" / "metrics.json").is_file() and metrics
    run_workflow("inference", ["inference"], "infer", input=str(scan), output_dir=str(tmp_path / "one"),
                 ckpt_file=str(cascade / "whole" / "model.pt"))
    assert (tmp_path / "one" / f"{scan.name.split('.')[0]}_seg.nii.gz").is_file()


def test_a_2d_image_goes_through_both_stages(cascade, tmp_path):
    import cv2

    image = np.full((40, 40), 60, np.uint8)
    image[8:32, 8:32] = 150
    cv2.imwrite(str(tmp_path / "slice.png"), image)
    rows = run_workflow("inference", ["inference"], "infer", input=str(tmp_path / "slice.png"),
                        output_dir=str(tmp_path / "out"), ckpt_file=str(cascade / "tumour" / "model.pt"))[0]
    assert rows[0]["shape"] == "40x40" and (tmp_path / "out" / "slice_mask.png").is_file()


def test_the_flip_check_is_on_unless_the_command_line_turns_it_off(cascade, tmp_path, monkeypatch):
    import cv2

    from workflows.infer import main as infer_main
    from workflows.inference.cascade import TumourStage

    checked = []
    original = TumourStage._logits

    def recording(self, batch):
        checked.append(self.flip_check)
        return original(self, batch)

    monkeypatch.setattr(TumourStage, "_logits", recording)
    cv2.imwrite(str(tmp_path / "slice.png"), np.pad(np.full((24, 24), 150, np.uint8), 8, constant_values=60))
    for flag in ([], ["--no-flip-check"]):
        assert infer_main(["--input", str(tmp_path / "slice.png"), "--model", str(cascade / "tumour" / "model.pt"),
                           "--output", str(tmp_path / f"out{len(flag)}"), *flag]) == 0
    assert checked == [True, False]


@pytest.mark.parametrize("overrides, message", [
    ({"stage": "liver_crop"}, r"--stage liver_crop needs --liver_model"),
    ({"liver_model": "x.pt"}, r"--liver_model x.pt is for --stage liver_crop"),
    ({"stage": "liver_crop", "liver_model": "{liver_only}"}, r"--liver_model .*trained for 'liver'.*--target both"),
])
def test_a_tumour_stage_without_its_liver_stage_is_one_line(both_lists, cascade, tmp_path, overrides, message):
    from workflows.engine.model_file import save_model_file

    liver_only = save_model_file(tmp_path / "liver.pt", {}, {"target": "liver"})
    overrides = {k: str(v).format(liver_only=liver_only) for k, v in overrides.items()}
    with pytest.raises(ValueError, match=message):
        run_workflow("training", ["train"], "train", dataset_dir=str(both_lists), ckpt_dir=str(tmp_path / "m"),
                     **TINY, **overrides)
    assert not (tmp_path / "m").exists()  # refused before anything was written


def test_the_tumour_stage_on_lists_split_for_the_liver_is_refused(tmp_path, cascade):
    lists = make_lists(tmp_path, target="liver")
    with pytest.raises(ValueError, match=r"split for the liver only.*--target both"):
        run_workflow("training", ["train"], "train", dataset_dir=str(lists), ckpt_dir=str(tmp_path / "m"),
                     stage="liver_crop", liver_model=str(cascade / "whole" / "model.pt"), **TINY)


def test_the_next_chunk_with_another_context_is_refused_by_name(both_lists, tmp_path):
    lists = make_lists(tmp_path, target="both", chunk_size=12)
    run_workflow("training", ["train"], "train", dataset_dir=str(lists), ckpt_dir=str(tmp_path / "m"), chunk=0, **TINY)
    with pytest.raises(ValueError, match=r"context: checkpoint 0, now 1"):
        run_workflow("training", ["train"], "train", dataset_dir=str(lists), ckpt_dir=str(tmp_path / "m"), chunk=1,
                     context=1, **TINY)


def test_the_tumour_stage_starts_from_the_liver_stages_weights(cascade):
    from networks import ThreeLevelUNet
    from workflows.engine.training import warm_start

    network = ThreeLevelUNet(in_channels=3, out_channels=1, channels=TINY["network_def#channels"])
    liver = torch.load(cascade / "whole" / "model.pt", weights_only=True)["model"]
    assert warm_start(network, cascade / "whole" / "model.pt") == len(network.state_dict())
    state = network.state_dict()
    assert torch.equal(state["enc1.conv.0.weight"], liver["enc1.conv.0.weight"])
    assert torch.equal(state["final.weight"], liver["final.weight"][1:2])  # the tumour channel
    assert torch.equal(state["final.bias"], liver["final.bias"][1:2])


def test_synthetic_lesions_train_both_stages_and_are_recorded_in_the_model_file(both_lists, tmp_path, monkeypatch):
    """The bundle setting puts lesions into the training samples' livers (seeded per sample as augmentation), for
    the whole-slice and the tumour stage alike, and the model file says how it was trained."""
    from transforms import SynthesizeLesionsd

    placed = []
    original = SynthesizeLesionsd.__call__

    def counting(self, data):
        out = original(self, data)
        placed.append(int(out["label"][-1].sum() - data["label"][-1].sum()))
        return out

    monkeypatch.setattr(SynthesizeLesionsd, "__call__", counting)
    common = {**TINY, "dataset_dir": str(both_lists), "context": 1, "epochs_per_chunk": 1, "synthetic_lesions": 1,
              "lesion_types": "faint:1,rim:2"}
    run_workflow("training", ["train"], "train", ckpt_dir=str(tmp_path / "whole"), **common)
    whole_placed, placed[:] = list(placed), []
    run_workflow("training", ["train"], "train", ckpt_dir=str(tmp_path / "tumour"), stage="liver_crop",
                 liver_model=str(tmp_path / "whole" / "model.pt"), **common)
    assert whole_placed and placed and sum(p > 0 for p in whole_placed) > len(whole_placed) // 2
    assert sum(p > 0 for p in placed) > len(placed) // 2  # the crops carry their liver too
    settings = torch.load(tmp_path / "tumour" / "model.pt", weights_only=True)["settings"]
    assert settings["synthetic_lesions"] == 1.0 and settings["lesion_types"] == "faint:1,rim:2"
    assert settings["tumour_stage"]["synthetic_lesions"] == 1.0


def test_a_liver_only_source_trains_the_liver_and_carries_synthetic_lesions_its_other_tumour_left_out(tmp_path,
                                                                                                    monkeypatch):
    """A volume whose source labels the liver only: the loss sees its tumour channel as unknown inside the liver
    (-1), except where a synthetic lesion was put (1); the volumes that label tumours keep 0/1 targets."""
    from networks import BCEDiceLoss

    lists = make_lists(tmp_path, target="both", liver_only={"3"})
    assert "3" in json.loads((lists / "split.json").read_text())["volumes"]["train"]
    targets = []
    original = BCEDiceLoss.forward

    def recording(self, logits, target):
        targets.append(target.detach().clone())
        return original(self, logits, target)

    monkeypatch.setattr(BCEDiceLoss, "forward", recording)
    log = run_workflow("training", ["train"], "train", dataset_dir=str(lists), ckpt_dir=str(tmp_path / "m"),
                       synthetic_lesions=1, batch_size=1, **TINY)[-1]
    samples = [t[0] for t in targets]
    unknown = [t for t in samples if bool((t[1] < 0).any())]
    assert unknown and len(unknown) < len(samples)
    assert any(bool((t[1] == 1).any()) for t in unknown)  # a synthetic lesion in a liver-only sample is known
    assert all(bool((t[1][t[0] == 0] == 0).all()) for t in unknown)  # outside the liver the tumour is known absent
    assert all(set(t.unique().tolist()) <= {0.0, 1.0} for t in samples if not bool((t[1] < 0).any()))
    assert log and all(math.isfinite(e["mean_loss_last_epoch"]) for e in log)


def _other_seed(model: Path, path: Path) -> Path:
    """``model`` with other weights (as another seed would give), its settings unchanged."""
    state = torch.load(model, weights_only=True)
    generator = torch.Generator().manual_seed(1)
    for key in ("model", "tumour_model"):
        state[key] = {k: v + 0.05 * torch.randn(v.shape, generator=generator)
                      if v.is_floating_point() and "running" not in k else v for k, v in state[key].items()}
    torch.save(state, path)
    return path


def test_two_model_files_averaged_in_one_vote_stage_by_stage_and_inference_runs_it(both_lists, cascade, tmp_path,
                                                                                   capfd):
    from networks import build_network, load_reference_state_dict
    from workflows.ensemble import main
    first, second = cascade / "tumour" / "model.pt", _other_seed(cascade / "tumour" / "model.pt", tmp_path / "b.pt")
    assert main(["--models", str(first), str(second), "--output", str(tmp_path / "pair.pt")]) == 0
    pair = torch.load(tmp_path / "pair.pt", weights_only=True)
    assert pair["settings"]["members"] == 2 and pair["settings"]["tumour_stage"]["members"] == 2
    for key, settings, out in (("model", pair["settings"], 2), ("tumour_model", pair["settings"]["tumour_stage"], 1)):
        def built(members):
            return build_network(settings["architecture"], 2, 3, out, settings["channels"], settings["spatial_size"],
                                 members=members).eval()
        voted = load_reference_state_dict(built(2), pair[key])  # strictly: every member's weights, nothing else
        singles = [load_reference_state_dict(built(1), torch.load(f, weights_only=True)[key]) for f in (first, second)]
        x = torch.rand(2, 3, settings["spatial_size"], settings["spatial_size"])
        with torch.no_grad():
            assert torch.allclose(voted(x), (singles[0](x) + singles[1](x)) / 2, atol=1e-5)
            assert not torch.allclose(singles[0](x), singles[1](x), atol=1e-3)
    scan = sorted((both_lists.parent / "raw").glob("volume-*.nii.gz"))[0]
    capfd.readouterr()
    run_workflow("inference", ["inference"], "infer", input=str(scan), output_dir=str(tmp_path / "out"),
                 ckpt_file=str(tmp_path / "pair.pt"))
    assert "2 networks averaged per stage" in "".join(capfd.readouterr())  # the log says the file votes
    seg = nib.load(tmp_path / "out" / f"{scan.name.split('.')[0]}_seg.nii.gz")
    assert seg.shape == nib.load(scan).shape
    metrics = run_workflow("evaluating", ["train", "evaluate"], "eval", dataset_dir=str(both_lists),
                           ckpt_file=str(tmp_path / "pair.pt"), output_dir=str(tmp_path / "eval"), progress=False)
    assert metrics and (tmp_path / "eval" / "metrics.json").is_file()


def test_model_files_of_other_set_ups_are_not_averaged_and_nothing_is_overwritten(cascade, tmp_path, capsys):
    from workflows.ensemble import main
    both, whole = cascade / "tumour" / "model.pt", cascade / "whole" / "model.pt"
    wider = torch.load(both, weights_only=True)
    wider["settings"]["context"] = 2
    torch.save(wider, tmp_path / "context2.pt")
    (tmp_path / "taken.pt").write_bytes(b"mine")
    for models, output, why in (([both, tmp_path / "context2.pt"], "a.pt", "its context is 2"),
                                ([both, whole], "b.pt", "has no tumour stage"),
                                ([both], "c.pt", "at least two model files"),
                                ([both, both], "taken.pt", "already exists")):
        with pytest.raises(SystemExit) as refused:
            main(["--models", *map(str, models), "--output", str(tmp_path / output)])
        err = capsys.readouterr().err.strip().splitlines()
        assert refused.value.code == 2 and len(err) == 1 and why in err[0], err
    assert (tmp_path / "taken.pt").read_bytes() == b"mine" and not (tmp_path / "a.pt").exists()
