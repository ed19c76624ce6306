import json

import cv2
import nibabel as nib
import numpy as np
import pytest

from workflows.evaluate import main
from workflows.engine.volume_evaluation import pair_files
from workflows.data.synthetic_cases import generate_case


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Truth and predictions for 3 generated cases: 0 perfect, 1 (no tumour) perfect, 2 with the liver shifted."""
    root = tmp_path_factory.mktemp("evaluate")
    (root / "truth").mkdir()
    (root / "pred").mkdir()
    for i in range(3):
        case = generate_case(i, seed=4, size=32, slices=12)
        nib.save(case.stored_image(case.label), root / "truth" / f"segmentation-{i}.nii.gz")
        nib.save(case.stored_image(case.hu), root / "truth" / f"volume-{i}.nii.gz")  # scans beside labels: skipped
        pred = case.label if i < 2 else np.roll(case.label, 2, axis=0)
        nib.save(case.stored_image(pred), root / "pred" / f"volume-{i}_seg.nii.gz")
    return root


def test_files_pair_by_volume_id(cases):
    pairs, notes = pair_files(cases / "pred", cases / "truth")
    assert [(i, p.name, t.name) for i, p, t in pairs] == [
        ("0", "volume-0_seg.nii.gz", "segmentation-0.nii.gz"), ("1", "volume-1_seg.nii.gz", "segmentation-1.nii.gz"),
        ("2", "volume-2_seg.nii.gz", "segmentation-2.nii.gz")]
    assert notes == []


def test_report_per_case_and_summary(cases, tmp_path, capsys):
    slice_metrics = tmp_path / "slice_metrics.json"
    slice_metrics.write_text(json.dumps({"channels": {"liver": {"reference": {"dice": 0.95}}}}))
    assert main(["--pred", str(cases / "pred"), "--truth", str(cases / "truth"), "--output", str(tmp_path / "out"),
                 "--slice-metrics", str(slice_metrics)]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    rows = (tmp_path / "out" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[1].startswith("0,1,0,0,0,0,")  # case 0: Dice 1, VOE 0, RVD 0, ASSD 0, HD95 0
    assert summary["cases"] == 3
    liver = summary["liver"]
    assert 0.5 < liver["dice_per_case"]["mean"] < 1 and liver["hd95_mm"]["cases"] == 3
    assert summary["tumour"]["dice_per_case"]["cases"] == 3  # case 1 (no tumour, none predicted) scores 1
    assert summary["lesions"]["true"] >= 2 and summary["lesions"]["recall"] is not None
    assert summary["slice_level"]["channels"]["liver"]["reference"]["dice"] == 0.95
    assert cv2.imread(str(tmp_path / "out" / "per_case_dice.png")) is not None
    assert "liver: Dice per case" in capsys.readouterr().out


def test_a_bad_pair_is_reported_and_the_others_evaluated(cases, tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    truth = nib.load(cases / "truth" / "segmentation-0.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(truth.dataobj)[:, :, :-1], truth.affine), tmp_path / "pred" / "volume-0_seg.nii.gz")
    (tmp_path / "pred" / "volume-1_seg.nii.gz").write_bytes((cases / "pred" / "volume-1_seg.nii.gz").read_bytes())
    assert main(["--pred", str(tmp_path / "pred"), "--truth", str(cases / "truth"), "--out", str(tmp_path / "out")]) == 1
    printed = capsys.readouterr().out
    assert "FAILED 0:" in printed and "volume-0_seg.nii.gz: prediction grid (32, 32, 11) does not match its truth" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cases"] == 1 and summary["liver"]["dice_per_case"]["mean"] == 1.0 and "0" in summary["failed"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["--pred", str(tmp_path / "empty"), "--truth", str(cases / "truth")])
    assert "no prediction in" in capsys.readouterr().err
