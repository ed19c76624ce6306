import dataclasses
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from networks import ThreeLevelUNet
from transforms import LoadScan, to_canonical
from workflows.bundle import run_workflow
from workflows.infer import main as infer_main
from workflows.data.synthetic_cases import generate_case
from workflows.data.synthetic_dicom import write_ct_series
from workflows.engine.volume_metrics import overlap_metrics

CHANNELS = (4, 8, 16, 32)
INFERENCE = str(Path(__file__).resolve().parents[2] / "bundles" / "liver_tumor_ct_segmentation" / "configs" / "inference.json")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A small untrained network whose mask covers about half of a slice: enough to see any flip or rotation."""
    torch.manual_seed(0)
    net = ThreeLevelUNet(channels=CHANNELS).eval()
    case = generate_case(0, seed=6, size=32, slices=10)
    x = torch.as_tensor(np.clip((case.hu.astype(np.float32) + 160) / 400, 0, 1)).permute(2, 0, 1)[:, None]
    with torch.no_grad():
        # a margin above the median: air is one constant logit there, and float noise must not flip it
        net.final.bias.sub_(float(net(x).median()) + 1e-3)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(net.state_dict(), path)
    return path


def _infer(weights, input_path, out, **overrides):
    settings = {"input": str(input_path), "output_dir": str(out), "ckpt_file": str(weights), "spatial_size": 32,
                "network_def#channels": list(CHANNELS), "largest_liver": False, "min_tumour_mm3": 0, **overrides}
    return run_workflow("inference", ["inference"], "infer", **settings)[0]


@pytest.mark.parametrize("codes", ["LPS", "PLI", "ILP", "RAS"])
def test_mask_lands_on_the_scan_grid_whatever_its_orientation(weights, tmp_path, codes):
    case = dataclasses.replace(generate_case(0, seed=6, size=32, slices=10), stored_axcodes=codes)
    nib.save(case.stored_image(case.hu), tmp_path / "volume-0.nii.gz")
    truth = case.stored_image(case.label)
    rows = _infer(weights, tmp_path / "volume-0.nii.gz", tmp_path / "out")
    seg = nib.load(tmp_path / "out" / "volume-0_seg.nii.gz")
    assert seg.shape == truth.shape and np.allclose(seg.affine, truth.affine)
    assert "".join(nib.aff2axcodes(seg.affine)) == codes
    native = overlap_metrics(np.asarray(seg.dataobj) >= 1, np.asarray(truth.dataobj) >= 1)["dice"]
    canonical = to_canonical(LoadScan(modality=None)(tmp_path / "out" / "volume-0_seg.nii.gz"))[0].numpy()
    assert overlap_metrics(canonical >= 1, case.label >= 1)["dice"] == pytest.approx(native)
    assert 0.05 < native < 0.95  # a real comparison, not all or nothing
    reference = _canonical_prediction(weights, tmp_path)
    assert np.array_equal(canonical, reference)  # the same prediction for every stored orientation
    assert rows[0]["liver_ml"] == pytest.approx(np.count_nonzero(canonical >= 1) * np.prod(case.spacing) / 1000, rel=1e-3)


def _canonical_prediction(weights, tmp_path):
    case = generate_case(0, seed=6, size=32, slices=10)
    folder = tmp_path / "lps"
    folder.mkdir(exist_ok=True)
    nib.save(dataclasses.replace(case, stored_axcodes="LPS").stored_image(case.hu), folder / "volume-0.nii.gz")
    _infer(weights, folder / "volume-0.nii.gz", folder / "out")
    return to_canonical(LoadScan(modality=None)(folder / "out" / "volume-0_seg.nii.gz"))[0].numpy()


def test_dicom_series_gets_a_mask_on_its_grid(weights, tmp_path):
    case = generate_case(0, seed=6, size=32, slices=10)
    write_ct_series(case, tmp_path / "series")
    _infer(weights, tmp_path / "series", tmp_path / "out")
    series = LoadScan()(tmp_path / "series")
    seg = LoadScan(modality=None)(tmp_path / "out" / "series_seg.nii.gz")
    assert seg.shape == series.shape and torch.allclose(seg.affine, series.affine, atol=1e-3)
    assert np.array_equal(to_canonical(seg)[0].numpy(), _canonical_prediction(weights, tmp_path))
    # the DICOM SEG beside it says the same, frame by frame
    from workflows.inference.dicom_seg import read_dicom_seg

    from_seg = read_dicom_seg(tmp_path / "out" / "series_seg.dcm", series.affine, tuple(series.shape[1:]))
    assert np.array_equal(from_seg, seg[0].numpy().astype(np.uint8))


def test_a_2d_image_gives_a_mask_and_the_side_by_side_picture(weights, tmp_path, capsys):
    image = np.clip(np.random.default_rng(0).normal(120, 30, (48, 40)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "new_ct.jpg"), image)
    assert infer_main(["--input", str(tmp_path / "new_ct.jpg"), "--model", str(weights), "--channels",
                       *map(str, CHANNELS), "--spatial-size", "32", "--output", str(tmp_path / "out")]) == 0
    mask = cv2.imread(str(tmp_path / "out" / "new_ct_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (48, 40) and set(np.unique(mask)) <= {0, 255}
    assert cv2.imread(str(tmp_path / "out" / "new_ct_prediction.png")) is not None
    assert "new_ct_mask.png" in capsys.readouterr().out


def test_weights_that_do_not_fit_name_the_setting(weights, tmp_path, capsys):
    with pytest.raises(SystemExit):
        infer_main(["--image", str(tmp_path), "--model", str(weights), "--output", str(tmp_path / "out")])
    assert "network_def#channels [4,8,16,32]" in capsys.readouterr().err
    case = generate_case(0, seed=6, size=32, slices=4)
    nib.save(case.stored_image(case.hu), tmp_path / "volume-0.nii.gz")
    with pytest.raises(ValueError, match=r"1 output channel\(s\), the network 2: set --target"):
        _infer(weights, tmp_path / "volume-0.nii.gz", tmp_path / "out", target="both")


def test_bundle_inference_workflow(weights, tmp_path):
    case = generate_case(1, seed=6, size=32, slices=8)
    nib.save(case.stored_image(case.hu), tmp_path / "volume-1.nii.gz")
    workflow = ConfigWorkflow(config_file=INFERENCE, workflow_type="infer", run_id="inference",
                              **{"input": str(tmp_path / "volume-1.nii.gz"), "output_dir": str(tmp_path / "out"),
                                 "ckpt_file": str(weights), "spatial_size": 32, "network_def#channels": list(CHANNELS)})
    workflow.initialize()
    rows = workflow.run()[0]
    workflow.finalize()
    assert rows[0]["segmentation"].endswith("volume-1_seg.nii.gz")
    assert (tmp_path / "out" / "summary.csv").exists() and (tmp_path / "out" / "volume-1_overlay.png").exists()


def test_torchscript_export_gives_the_same_masks(weights, tmp_path):
    from monai.bundle import ckpt_export

    case = generate_case(0, seed=6, size=32, slices=10)
    nib.save(case.stored_image(case.hu), tmp_path / "volume-0.nii.gz")
    ckpt_export("network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(weights), config_file=INFERENCE,
                meta_file=str(Path(INFERENCE).with_name("metadata.json")), ckpt_dir=str(weights.parent),
                **{"network_def#channels": list(CHANNELS)})  # ckpt_dir: the config reads the model's settings there
    _infer(weights, tmp_path / "volume-0.nii.gz", tmp_path / "from_pt")
    _infer(tmp_path / "model.ts", tmp_path / "volume-0.nii.gz", tmp_path / "from_ts")
    assert (tmp_path / "from_ts" / "volume-0_seg.nii.gz").read_bytes() == (tmp_path / "from_pt" / "volume-0_seg.nii.gz").read_bytes()


def test_a_lits_folder_segments_the_scans_not_their_labels(weights, tmp_path):
    case = generate_case(0, seed=6, size=32, slices=6)
    (tmp_path / "lits").mkdir()
    nib.save(case.stored_image(case.hu), tmp_path / "lits" / "volume-0.nii.gz")
    nib.save(case.stored_image(case.label), tmp_path / "lits" / "segmentation-0.nii.gz")
    rows = _infer(weights, tmp_path / "lits", tmp_path / "out")
    assert [Path(r["scan"]).name for r in rows if r["segmentation"]] == ["volume-0.nii.gz"]
    assert [(Path(r["scan"]).name, r["skipped"]) for r in rows if r.get("skipped")] == [
        ("segmentation-0.nii.gz", "named like a label (seg, label, mask)")]  # listed, not silently ignored


def test_a_bad_scan_is_reported_and_the_others_segmented(weights, tmp_path, capsys):
    case = generate_case(0, seed=6, size=32, slices=6)
    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(case.stored_image(case.hu), scans / "volume-0.nii.gz")
    good = (scans / "volume-0.nii.gz").read_bytes()
    (scans / "volume-1.nii.gz").write_bytes(good[: len(good) // 2])
    assert infer_main(["--image", str(scans), "--model", str(weights), "--channels", *map(str, CHANNELS),
                       "--spatial-size", "32", "--output", str(tmp_path / "out")]) == 1
    printed = capsys.readouterr().out
    assert "volume-1.nii.gz: FAILED:" in printed and "cannot be read" in printed
    assert (tmp_path / "out" / "volume-0_seg.nii.gz").exists()


def test_an_anonymised_series_gets_its_nifti_mask_and_a_reason_for_no_seg(weights, real_data, tmp_path):
    rows = _infer(weights, real_data / "totalseg_example" / "ct_dicom", tmp_path)
    assert rows[0]["dicom_seg"].startswith("not written:") and "StudyInstanceUID" in rows[0]["dicom_seg"]
    assert nib.load(tmp_path / "ct_dicom_seg.nii.gz").shape == (512, 512, 20)


def test_a_real_hospital_series_with_a_reformat_is_segmented_on_its_axial_grid(weights, real_data, tmp_path):
    folder = real_data / "hcc_tace_0697" / "31_EQP_Ax5.00mm"
    rows = _infer(weights, folder, tmp_path)
    series = LoadScan()(folder)
    seg = LoadScan(modality=None)(tmp_path / "31_EQP_Ax5.00mm_seg.nii.gz")
    assert tuple(seg.shape) == tuple(series.shape) == (1, 512, 512, 44)
    assert torch.allclose(seg.affine, series.affine, atol=1e-3)
    assert rows[0]["dicom_seg"].endswith("31_EQP_Ax5.00mm_seg.dcm")  # every kept frame sits on the grid
    assert "dicom-00001.dcm" in rows[0]["notes"] and "another orientation" in rows[0]["notes"]


def test_outputs_never_overwrite_each_other_nor_become_inputs(weights, tmp_path):
    case = generate_case(0, seed=6, size=32, slices=6)
    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(case.stored_image(case.hu), scans / "scan.nii.gz")
    nib.save(dataclasses.replace(case, stored_axcodes="SAR").stored_image(case.hu), scans / "scan.nii")
    rows = _infer(weights, scans, tmp_path / "out")
    assert sorted(Path(r["segmentation"]).name for r in rows) == ["scan_nii_gz_seg.nii.gz", "scan_nii_seg.nii.gz"]
    assert nib.load(tmp_path / "out" / "scan_nii_seg.nii.gz").affine.tolist() != nib.load(
        tmp_path / "out" / "scan_nii_gz_seg.nii.gz").affine.tolist()  # each mask on its own scan's grid
    # a folder holding a previous run's outputs beside the scans: only the scans are segmented
    for output in (tmp_path / "out").iterdir():
        output.rename(scans / output.name)
    again = _infer(weights, scans, tmp_path / "again")
    assert sorted(Path(r["scan"]).name for r in again if r["segmentation"]) == ["scan.nii", "scan.nii.gz"]
    assert {r["skipped"] for r in again if r.get("skipped")} == {"an output of this tool"}
    with pytest.raises(ValueError, match=r"inside --input .*choose an output folder outside"):
        _infer(weights, scans, scans / "predictions")
    assert not (scans / "predictions").exists()


def test_the_bundle_command_exits_1_in_one_line_when_a_scan_failed(weights, tmp_path):
    import subprocess
    import sys

    case = generate_case(0, seed=6, size=32, slices=6)
    nib.save(case.stored_image(case.hu), tmp_path / "volume-0.nii.gz")
    (tmp_path / "volume-1.nii.gz").write_bytes(b"broken")
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", INFERENCE,
                             "--input", str(tmp_path), "--output_dir", str(tmp_path.parent / "out_bundle"),
                             "--ckpt_file", str(weights), "--spatial_size", "32", "--network_def#channels",
                             "[4,8,16,32]"], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: 1 scan(s) failed (")
    assert (tmp_path.parent / "out_bundle" / "volume-0_seg.nii.gz").exists()


def test_free_text_of_the_scans_header_does_not_reach_the_mask(weights, tmp_path):
    case = generate_case(0, seed=6, size=32, slices=6)
    image = case.stored_image(case.hu)
    image.header["descrip"] = b"Doe^Jane 1950-01-01"
    image.header["aux_file"] = b"MRN 123456"
    nib.save(image, tmp_path / "volume-0.nii.gz")
    _infer(weights, tmp_path / "volume-0.nii.gz", tmp_path / "out")
    header = nib.load(tmp_path / "out" / "volume-0_seg.nii.gz").header
    assert bytes(header["descrip"]).strip(b"\0") == b"" and bytes(header["aux_file"]).strip(b"\0") == b""
    assert np.allclose(header.get_best_affine(), image.header.get_best_affine())  # the geometry is kept


def test_deidentified_outputs_carry_no_name_of_the_patient(weights, tmp_path, caplog):
    import logging

    import pydicom

    scans = tmp_path / "Doe_Jane"
    write_ct_series(generate_case(0, seed=6, size=32, slices=6), scans / "Doe_Jane_CT")
    for path in (scans / "Doe_Jane_CT").iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientName = "Doe^Jane"
        ds.save_as(path)
    (scans / "Doe_Jane_old.nii.gz").write_bytes(b"broken")
    (scans / "Doe_notes.txt").write_text("private")
    caplog.set_level(logging.INFO)
    with pytest.raises(ValueError, match="1 scan\\(s\\) failed"):
        _infer(weights, scans, tmp_path / "out", deidentify=True)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [".rows", "report.html", "scan-001_coronal.png", "scan-001_overlay.png", "scan-001_seg.nii.gz",
                       "summary.csv", "summary.json"]  # no SEG
    records = sorted((tmp_path / "out" / ".rows").iterdir())  # what a rerun reads: neutral names, hashes, no path
    assert [p.name for p in records] == [".naming.json", "scan-001.json", "scan-002.json"]
    summary = "".join((tmp_path / "out" / name).read_text() for name in ("summary.csv", "summary.json", "report.html"))
    summary += "".join(p.read_text() for p in records)
    assert "Doe" not in summary and "Doe" not in caplog.text and "Jane" not in caplog.text
    assert "cannot be read" in summary and "left-out-001" in summary


@pytest.mark.parametrize("overrides, message", [
    ({"spatial_size": -5}, r"--spatial_size must be a whole number from 8 to 1024, got -5"),
    ({"spatial_size": 30}, r"--spatial_size must be a multiple of 8"),
    ({"target": "spleen"}, r"--target must be one of liver, tumor, both, got 'spleen'"),
    ({"sw_batch_size": 0}, r"--sw_batch_size must be a whole number from 1"),
    ({"min_tumour_mm3": "big"}, r"--min_tumour_mm3 must be a number >= 0 \(mm³\)"),
    ({"precision": "fp16"}, r"--precision must be one of auto, fp32, bf16"),
    ({"channels_last": "maybe"}, r"--channels_last must be true or false"),
    ({"shard": "3/2"}, r"--shard must be I/N"),
])
def test_bad_inference_settings_are_one_line_before_anything_is_built(weights, tmp_path, overrides, message):
    from workflows.bundle import BundleCommandError

    workflow = ConfigWorkflow(config_file=INFERENCE, workflow_type="infer", run_id="inference", logging_file=False,
                              **{"input": str(tmp_path), "output_dir": str(tmp_path / "out"), **overrides})
    with pytest.raises(BundleCommandError, match=message) as error:
        workflow.initialize()
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()
