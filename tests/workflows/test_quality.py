"""Per-scan quality control and the report page: each flag raised by a case made for it and none on a clean case,
the lesion table's RECIST-style diameter, and report.html opening in a real browser with its pictures."""

import re
from pathlib import Path
import shutil
import subprocess

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from transforms import target_to_lits
from workflows.data.pictures import coronal, montage
from workflows.inference.quality import BeforeCleanUpd, lesion_table, quality_flags
from workflows.inference.report import write_report

SPACING = (2.5, 2.5, 4.0)  # mm: 25 mm³ a voxel


def _probs(liver_boxes=(), tumour_boxes=(), shape=(64, 64, 40), inside=0.98, target="liver"):
    channels = 2 if target == "both" else 1
    probs = np.full((channels, *shape), 0.02, np.float32)
    for box in liver_boxes:
        probs[(0, *box)] = inside
    for box in tumour_boxes:
        probs[(channels - 1, *box)] = 0.9
    return probs


def _flags(probs, target="liver", spacing=SPACING, trained_slice_mm=4.0):
    tensor = MetaTensor(torch.as_tensor(probs), affine=torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64)))
    qc = BeforeCleanUpd("pred", target=target)({"pred": tensor})["qc"]
    label = target_to_lits(probs, target)
    return quality_flags(label, spacing, qc, trained_slice_mm, target), qc


LIVER = (slice(7, 57), slice(7, 57), slice(5, 35))  # 75,000 voxels: 1,875 mL


def test_a_clean_case_raises_no_flag():
    flags, qc = _flags(_probs([LIVER]))
    assert flags == [] and qc == {"liver_confidence": 0.98, "liver_parts": 1, "liver_parts_ml": "1875"}


@pytest.mark.parametrize("probs, kwargs, words", [
    (_probs([]), {}, "no liver found"),
    (_probs([(slice(20, 30), slice(20, 30), slice(10, 20))]), {}, "liver volume 25 mL outside the adult range 800-3,000 mL"),
    (_probs([(slice(7, 57), slice(7, 57), slice(0, 30))]), {}, "liver touches the first slice"),
    (_probs([(slice(7, 57), slice(7, 57), slice(10, 40))]), {}, "liver touches the last slice"),
    (_probs([LIVER]), {"spacing": (2.5, 2.5, 5.0)}, "slices 5.0 mm thick, the model was trained on <= 4.0 mm"),
    (_probs([(slice(7, 57), slice(7, 30), slice(5, 35)), (slice(7, 57), slice(34, 57), slice(5, 35))]), {},
     "2 disconnected liver parts before clean-up"),
    (_probs([LIVER], [(slice(60, 63), slice(60, 63), slice(1, 3))], target="both"), {"target": "both"},
     "0.45 mL of tumour outside the liver before clean-up"),
    (_probs([LIVER], inside=0.6), {}, "low confidence: mean liver probability 0.60 < 0.95"),
], ids=["no liver", "small liver", "first slice", "last slice", "thick slices", "two parts", "tumour outside",
        "low confidence"])
def test_each_flag_is_raised_by_the_case_made_for_it(probs, kwargs, words):
    flags, _ = _flags(probs, **kwargs)
    assert len(flags) == 1 and words in flags[0], flags


def test_lesions_are_measured_by_volume_and_longest_axial_diameter():
    label = np.zeros((40, 40, 10), np.uint8)
    label[5:35, 5:35, 1:9] = 1
    label[10:20, 10:30, 3:6] = 2  # 10 x 20 pixels on 3 slices
    label[28:30, 28:30, 7] = 2  # a second, small lesion
    rows = lesion_table(label, (0.8, 0.8, 3.0))
    assert [r["lesion"] for r in rows] == [1, 2] and rows[0]["slices"] == "3-5"
    assert rows[0]["volume_ml"] == pytest.approx(600 * 0.8 * 0.8 * 3.0 / 1000, abs=1e-3)
    assert rows[0]["longest_axial_mm"] == pytest.approx(np.hypot(9 * 0.8, 19 * 0.8) + 0.8, abs=0.05)
    assert rows[1]["longest_axial_mm"] == pytest.approx(np.hypot(0.8, 0.8) + 0.8, abs=0.05)


def _page(tmp_path, deidentify=False):
    """A report of two scans: a clean one, then one whose liver is cut off by the field of view."""
    rng = np.random.default_rng(0)
    grey = rng.integers(60, 120, (48, 48, 12), dtype=np.uint8)
    rows = []
    for name, slices, flags in (("clean_scan", slice(2, 10), ""),
                                ("cut_off_scan", slice(0, 8), "liver touches the first slice (cut off by the field of view?)")):
        label = np.zeros(grey.shape, np.uint8)
        label[10:38, 8:40, slices] = 1
        label[20:26, 20:26, 4:6] = 2
        montage(grey, label, tmp_path / f"{name}_overlay.png", name)
        coronal(grey, label, (1.0, 1.0, 2.5), tmp_path / f"{name}_coronal.png", name)
        rows.append({"scan": f"/data/{name}.nii.gz" if not deidentify else name,
                     "segmentation": str(tmp_path / f"{name}_seg.nii.gz"), "liver_ml": 10.1, "tumour_ml": 0.2,
                     "flags": flags, "lesion_table": lesion_table(label, (1.0, 1.0, 2.5))})
    rows.append({"scan": "/data/broken.nii.gz", "segmentation": "", "error": "cannot be read"})
    return write_report(tmp_path, rows, deidentify)


def test_the_report_lists_flagged_scans_first_and_links_its_own_pictures(tmp_path):
    page = _page(tmp_path).read_text()
    assert page.index("cut_off_scan") < page.index("clean_scan")
    assert "<script" not in page and "http://" not in page and "https://" not in page  # opens from disk alone
    assert set(re.findall(r'src="([^"]+)"', page)) == {"cut_off_scan_overlay.png", "cut_off_scan_coronal.png",
                                                      "clean_scan_overlay.png", "clean_scan_coronal.png"}
    assert "FAILED: cannot be read" in page and "/data/" not in page.split("<h2>")[0]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_the_report_renders_with_its_pictures_in_headless_chromium(tmp_path):
    import cv2

    page = _page(tmp_path)
    shot = tmp_path / "screenshot.png"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1400", f"--screenshot={shot}",
            page.as_uri()]
    subprocess.run(args, capture_output=True, timeout=120, check=True)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (1400, 1400)
    b, g, r = (image[..., k].astype(int) for k in range(3))
    green = np.count_nonzero((g > r + 40) & (g > b + 40))  # the liver overlays: only loaded pictures hold them
    assert green > 2000, green
    dom = subprocess.run([*args[:-2], "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.index("cut_off_scan") < dom.index("clean_scan")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_a_tiny_inference_runs_report_renders_with_its_pictures_and_the_flagged_scan_first(tmp_path):
    import json

    import cv2
    import nibabel as nib

    from networks import ThreeLevelUNet
    from workflows.bundle import run_workflow
    from workflows.data.synthetic_cases import generate_case
    from workflows.engine.model_file import save_model_file

    torch.manual_seed(0)
    case = generate_case(0, seed=6, size=32, slices=12)  # 15.9 mm slices (a 32-pixel generated scan)
    model = save_model_file(tmp_path / "model.pt", ThreeLevelUNet(channels=(4, 8, 16, 32)).state_dict(),
                            {"target": "liver", "spatial_size": 32, "channels": [4, 8, 16, 32], "window": "abdomen",
                             "window_hu": None, "slice_thickness_mm": 16.0})
    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(case.stored_image(case.hu), scans / "a_clean.nii.gz")
    thick = case.affine.copy()
    thick[:3, 2] *= 2  # 31.8 mm slices: thicker than the model was trained on
    nib.save(nib.Nifti1Image(case.hu, thick), scans / "b_thick.nii.gz")
    out = tmp_path / "out"
    run_workflow("inference", ["inference"], "infer", input=str(scans), output_dir=str(out), ckpt_file=str(model))
    flags = {Path(r["scan"]).name: r["flags"] for r in json.loads((out / "summary.json").read_text())}
    assert "slices 31.8 mm thick" in flags["b_thick.nii.gz"] and "thick" not in flags["a_clean.nii.gz"]
    shot = tmp_path / "screenshot.png"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1400"]
    subprocess.run([*args, f"--screenshot={shot}", (out / "report.html").as_uri()], capture_output=True, timeout=120,
                   check=True)
    image = cv2.imread(str(shot))
    assert np.count_nonzero(image.max(axis=2) < 40) > 40_000  # the CT pictures' dark air: only loaded images hold it
    dom = subprocess.run([*args, "--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert 0 < dom.index("b_thick") < dom.index("a_clean")  # the flagged scan first, though listed second
