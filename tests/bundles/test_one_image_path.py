"""One image path: a slice reaches the network bit for bit the same through conversion + the training
preprocessing and through inference; the bundle's configs have every property MONAI checks."""

import dataclasses

import nibabel as nib
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, verify_net_in_out

from workflows.bundle import config_file
from workflows.data.conversion import convert
from workflows.data.synthetic_cases import generate_case
from workflows.data.synthetic_dicom import write_ct_series

from .conftest import BUNDLE


def _parser(name, **overrides):
    parser = ConfigParser()
    parser.read_config(config_file(name))
    parser.update(overrides)
    parser.parse()
    return parser


@pytest.mark.parametrize("stored", ["LPS-nifti", "SAR-nifti", "dicom"])
@pytest.mark.parametrize("spatial_size", [40, 24])  # up and down from the 32-pixel scan
def test_a_slice_reaches_the_network_identically_in_training_and_inference(tmp_path, stored, spatial_size):
    case = generate_case(0, seed=8, size=32, slices=6)
    raw = tmp_path / "raw"
    raw.mkdir()
    if stored == "dicom":
        scan = write_ct_series(case, raw / "volume-0")
        nib.save(case.stored_image(case.label), raw / "segmentation-0.nii.gz")
    else:
        codes = stored.split("-")[0]
        scan = raw / "volume-0.nii.gz"
        nib.save(dataclasses.replace(case, stored_axcodes=codes).stored_image(case.hu), scan)
        nib.save(dataclasses.replace(case, stored_axcodes=codes).stored_image(case.label), raw / "segmentation-0.nii.gz")
    assert not convert(raw, tmp_path / "slices", progress=False).failed

    train = _parser("train", spatial_size=spatial_size, target="liver").get_parsed_content("train#preprocessing")
    infer = _parser("inference", spatial_size=spatial_size, context=0)  # one slice, whatever model the bundle ships
    volume = infer.get_parsed_content("preprocessing")({"image": str(scan)})["image"]
    seen = []

    def network(x):
        seen.append(x.clone())
        return torch.zeros_like(x)

    infer.get_parsed_content("inferer")(volume[None], network)
    inference_slices = torch.cat(seen)  # (slices, 1, S, S), inferior to superior
    assert inference_slices.shape == (case.hu.shape[2], 1, spatial_size, spatial_size)
    for k in range(case.hu.shape[2]):
        item = train({"image": str(tmp_path / "slices" / "images" / f"volume-0_slice_{k}.png"),
                      "label": str(tmp_path / "slices" / "masks" / f"volume-0_slice_{k}.png")})
        assert item["image"].dtype == inference_slices.dtype == torch.float32
        assert torch.equal(item["image"], inference_slices[k].as_subclass(torch.Tensor)), f"slice {k} differs"
    assert 0.0 <= float(inference_slices.min()) < float(inference_slices.max()) <= 1.0


@pytest.mark.parametrize("config, kind", [(["train"], "train"), (["inference"], "infer"),
                                          (["train", "evaluate"], "train")])
def test_the_bundle_has_every_property_monai_checks_from_any_folder(config, kind, lists, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # neither the repository root nor the bundle folder
    files = [config_file(name) for name in config]
    workflow = ConfigWorkflow(config_file=files if len(files) > 1 else files[0], workflow_type=kind,
                              logging_file=False, dataset_dir=str(lists))
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.bundle_root == str(BUNDLE)


def test_the_network_takes_and_gives_what_metadata_says():
    verify_net_in_out(net_id="network_def", meta_file=str(BUNDLE / "configs" / "metadata.json"),
                      config_file=config_file("inference"), device="cpu", p=1, n=1, any=8,
                      **{"network_def#channels": [4, 8, 16, 32]})


def test_metadata_has_every_key_the_zoo_schema_requires_and_measured_metrics():
    import json

    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    required = {"schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                "required_packages_version", "task", "description", "authors", "copyright", "network_data_format"}
    assert required <= set(meta) and meta["version"] in meta["changelog"]
    assert "meta_schema_20240725" in meta["schema"]  # the schema whose package key MONAI 1.6 reads
    for direction in ("inputs", "outputs"):
        for tensor in meta["network_data_format"][direction].values():
            assert {"type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data",
                    "channel_def"} <= set(tensor)
    assert "logit" in meta["network_data_format"]["outputs"]["pred"]["channel_def"]["0"]
    assert meta["network_data_format"]["outputs"]["pred"]["value_range"] == []  # logits are unbounded
    assert "python -m workflows.release" in meta["eval_metrics_source"]
    scores = json.loads((BUNDLE / "models" / "shipped" / "release.json").read_text())["scores"]
    for key, value in meta["eval_metrics"].items():  # the shipped weights' figures, as their release measured them
        scan = next(name for name in scores if key.split("_dice_")[1] in name)
        assert value == round(scores[scan][key.split("shipped_weights_")[1].split("_dice_")[0] + "_dice"], 3)
    import importlib.metadata

    for package, version in meta["required_packages_version"].items():  # what is installed is what is declared
        assert importlib.metadata.version(package) == version, package
    assert (BUNDLE / "LICENSE").read_text().count("Apache License") >= 1
