import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from workflows.data.conversion import ConvertSettings, convert
from workflows.data.discovery import find_volume_sources
from workflows.convert import main
from workflows.data.slice_set import parse_slice_name, read_manifest, read_mask

from .conftest import make_raw_set

REPO = Path(__file__).resolve().parents[2]


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_finds_lits_pairs_and_dicom_series(raw_set):
    sources, notes = find_volume_sources(raw_set)
    kinds = {s.volume_id: s.kind for s in sources}
    assert kinds == {"0": "lits", "1": "lits", "2": "lits", "3": "lits", "4": "lits", "5": "dicom"}
    assert all(s.label is not None for s in sources)
    assert sources[0].label.name == "segmentation-5.nii.gz" and sources[0].image.name == "volume-5"


def test_manifest_rows_match_every_volume_and_masks_hold_lits_labels(raw_set, slice_set):
    rows = read_manifest(slice_set)
    per_volume = {}
    for row in rows:
        per_volume[row["volume_id"]] = per_volume.get(row["volume_id"], 0) + 1
    assert per_volume == {str(i): 10 for i in range(6)}
    for row in rows:
        image = cv2.imread(row["image"], cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(row["mask"], cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.shape == mask.shape == (32, 32)
        assert set(np.unique(mask)) <= {0, 1, 2}
        assert row["liver_pixels"] == int((mask >= 1).sum()) and row["tumor_pixels"] == int((mask == 2).sum())
        assert parse_slice_name(Path(row["image"]).name) == (row["volume_id"], row["slice_index"])
    assert any(r["tumor_pixels"] for r in rows) and any(not r["liver_pixels"] for r in rows)


def test_slices_are_canonical_whatever_the_storage(raw_set, slice_set):
    from workflows.data.synthetic_cases import generate_case

    case = generate_case(1, 11, 32, 10)  # stored PLI: transposed and upside down on disk
    rows = [r for r in read_manifest(slice_set) if r["volume_id"] == "1"]
    for row in rows:
        assert np.array_equal(read_mask(row["mask"]), case.label[..., row["slice_index"]])


def test_target_liver_merges_tumour_and_tumor_keeps_it_as_2(raw_set, tmp_path):
    for target, allowed in (("liver", {0, 1}), ("tumor", {0, 2})):
        convert(raw_set / "volume-0.nii.gz", tmp_path / target, ConvertSettings(target=target), progress=False)
        masks = [read_mask(r["mask"]) for r in read_manifest(tmp_path / target)]
        values = set(np.unique(np.stack(masks)))
        assert values <= allowed and len(values) == 2


def test_resize_and_jpg(raw_set, tmp_path):
    convert(raw_set / "volume-2.nii.gz", tmp_path, ConvertSettings(size=64, format="jpg"), progress=False)
    row = read_manifest(tmp_path)[0]
    assert row["image"].endswith(".jpg") and cv2.imread(row["image"]).shape[:2] == (64, 64)
    assert read_mask(row["mask"]).shape == (64, 64)


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path):
    raw = make_raw_set(tmp_path / "raw", cases=6, seed=3, size=96, slices=40, dicom_case=None)
    convert(raw, tmp_path / "clean", progress=False)

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "workflows.convert", "--input", str(raw), "--output", str(out)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / ".parts").glob("*.csv")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list((out / ".parts").glob("*.csv")))
    assert 1 <= done_before < 6 and not (out / "manifest.csv").exists()  # it really died mid-run

    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{done_before} volume(s) already complete, skipped" in result.stdout
    assert _tree(out) == _tree(tmp_path / "clean")


def test_rerun_skips_complete_volumes_and_refuses_other_settings(raw_set, tmp_path):
    first = convert(raw_set / "volume-3.nii.gz", tmp_path, progress=False)
    again = convert(raw_set / "volume-3.nii.gz", tmp_path, progress=False)
    assert first.converted == ["3"] and again.skipped == ["3"] and not again.converted
    with pytest.raises(ValueError, match=r"converted with other settings \(target: 'both' -> 'liver'\)"):
        convert(raw_set / "volume-3.nii.gz", tmp_path, ConvertSettings(target="liver"), progress=False)


def test_bad_volumes_are_reported_and_the_good_ones_converted(tmp_path, capsys):
    raw = make_raw_set(tmp_path / "raw", cases=4, seed=2, size=32, slices=6, dicom_case=None)
    data = (raw / "volume-1.nii.gz").read_bytes()
    (raw / "volume-1.nii.gz").write_bytes(data[: len(data) // 3])  # truncated download
    label = nib.load(raw / "segmentation-2.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:, :, :-1], label.affine), raw / "segmentation-2.nii.gz")

    code = main(["--input", str(raw), "--output", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert code == 1
    assert "failed 1: " in printed and "volume-1.nii.gz: cannot be read" in printed
    assert "failed 2: " in printed and "segmentation-2.nii.gz: label grid" in printed
    assert "converted 2, skipped 0 (already complete), failed 2" in printed
    assert sorted({r["volume_id"] for r in read_manifest(tmp_path / "out")}) == ["0", "3"]


def test_duplicate_volume_ids_are_refused(tmp_path):
    raw = make_raw_set(tmp_path, cases=1, seed=1, size=16, slices=2, dicom_case=None)
    (raw / "copy").mkdir()
    (raw / "copy" / "volume-0.nii.gz").write_bytes((raw / "volume-0.nii.gz").read_bytes())
    with pytest.raises(ValueError, match=r"volume id '0' is found twice"):
        find_volume_sources(raw)


def test_real_totalsegmentator_liver_lands_on_the_liver(real_data, tmp_path):
    folder = real_data / "totalseg_example"
    code = main(["--input", str(folder / "ct_3mm.nii.gz"), "--label", str(folder / "seg_3mm.nii.gz"),
                 "--label-map", "5:1", "--target", "liver", "--output", str(tmp_path)])
    assert code == 0
    rows = read_manifest(tmp_path)
    assert len(rows) == 30 and sum(bool(r["liver_pixels"]) for r in rows) > 5
    inside = np.concatenate([cv2.imread(r["image"], cv2.IMREAD_GRAYSCALE)[read_mask(r["mask"]) == 1]
                             for r in rows if r["liver_pixels"]])
    # liver enhances to about 40-160 HU: grey 128-204 in the abdomen window
    assert 128 <= inside.mean() <= 204


def test_real_chaos_pngs_read_as_a_2d_set(real_data, tmp_path):
    summary = convert(real_data / "chaos_ct_p1", tmp_path, progress=False)
    rows = read_manifest(tmp_path)
    assert summary.converted == ["chaos_ct_p1"]
    assert len(rows) == 95 and sum(bool(r["liver_pixels"]) for r in rows) == 93
    assert all(r["tumor_pixels"] is None for r in rows)  # 0/255 masks say nothing about tumour
    first = rows[0]
    assert Path(first["image"]).name == "volume-chaos_ct_p1_slice_0.png"
    # images are copied byte for byte
    assert Path(first["image"]).read_bytes() == (real_data / "chaos_ct_p1" / "images" / "slice_000.png").read_bytes()


def test_a_2d_set_in_another_window_is_rescaled_by_its_factor_and_volumes_are_refused_it(raw_set, tmp_path, capsys):
    """CHAOS's PNGs: the liver at grey 240 where the scans' is ~140. --grey-scale multiplies the grey levels (air stays
    0, the bright end stays in order), the masks are untouched, and the slice set records the factor."""
    grey = np.array([[0, 60, 120, 240], [250, 255, 1, 2]], np.uint8).repeat(4, 0).repeat(4, 1)
    mask = np.zeros_like(grey)
    mask[:, 8:] = 255
    root = tmp_path / "other_window"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for k in range(2):
        cv2.imwrite(str(root / "images" / f"slice_{k}.png"), grey)
        cv2.imwrite(str(root / "masks" / f"slice_{k}.png"), mask)
    assert main(["--input", str(root), "--output", str(tmp_path / "scaled"), "--grey-scale", "0.6"]) == 0
    rows = read_manifest(tmp_path / "scaled")
    image = cv2.imread(rows[0]["image"], cv2.IMREAD_UNCHANGED)
    assert np.array_equal(image, np.rint(grey * 0.6).astype(np.uint8)) and image.max() == 153 and image.min() == 0
    assert np.array_equal(read_mask(rows[0]["mask"]), (mask > 0).astype(np.uint8))
    record = __import__("json").loads((tmp_path / "scaled" / "grey_levels.json").read_text())
    assert record["other_window"]["window"] == "unknown (8-bit 2D source), grey levels x0.6"
    for given, why in (([str(raw_set)], "windowed by --window / --window-hu"), ([str(root)], "positive number")):
        with pytest.raises(SystemExit) as refused:
            main(["--input", *given, "--output", str(tmp_path / "refused"), "--grey-scale", "0" if given[0] == str(root) else "0.6"])
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert refused.value.code == 2 and "Traceback" not in err and "--grey-scale" in last and why in last


def test_kaggle_jpg_masks_are_thresholded_at_half_range(tmp_path):
    kaggle = tmp_path / "kaggle"
    (kaggle / "train_images" / "train_images").mkdir(parents=True)
    (kaggle / "train_masks" / "train_masks").mkdir(parents=True)
    truth = np.zeros((64, 64), np.uint8)
    cv2.circle(truth, (30, 34), 14, 255, -1)
    image = np.clip(truth * 0.4 + 60 + np.random.default_rng(0).normal(0, 5, truth.shape), 0, 255).astype(np.uint8)
    for k in range(3):
        cv2.imwrite(str(kaggle / "train_images" / "train_images" / f"volume-7_slice_{k}.jpg"), image)
        cv2.imwrite(str(kaggle / "train_masks" / "train_masks" / f"volume-7_slice_{k}.jpg"), truth,
                    [cv2.IMWRITE_JPEG_QUALITY, 75])
    jpg_mask = cv2.imread(str(kaggle / "train_masks" / "train_masks" / "volume-7_slice_0.jpg"), cv2.IMREAD_GRAYSCALE)
    assert (jpg_mask > 0).sum() > (truth > 0).sum()  # JPEG ringing: "> 0" would grow the liver

    convert(kaggle, tmp_path / "out", progress=False)
    rows = read_manifest(tmp_path / "out")
    assert [(r["volume_id"], r["slice_index"]) for r in rows] == [("7", 0), ("7", 1), ("7", 2)]
    mask = read_mask(rows[0]["mask"])
    assert set(np.unique(mask)) == {0, 1}
    assert abs(int(mask.sum()) - int((truth > 0).sum())) < 0.02 * (truth > 0).sum()
    assert rows[0]["image"].endswith(".jpg")  # kept as the export made it

    with pytest.raises(SystemExit):
        main(["--input", str(kaggle), "--output", str(tmp_path / "bad"), "--window-hu", "10"])


def test_a_real_hospital_series_converts_its_axial_stack(real_data, tmp_path, capsys):
    folder = real_data / "hcc_tace_2144" / "31_EQP_Ax5.00mm"
    summary = convert(folder, tmp_path / "out")
    assert not summary.failed and summary.slices == 58  # 59 images, one coronal reformat left out
    assert "dicom-00001.dcm" in capsys.readouterr().out


def _png_set(root, masks):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, mask in enumerate(masks):
        cv2.imwrite(str(root / "images" / f"slice_{k:03d}.png"), np.full((16, 16), 100, np.uint8))
        if mask is not None:
            cv2.imwrite(str(root / "masks" / f"slice_{k:03d}.png"), mask)
    return root


def test_masks_outside_the_conventions_and_missing_masks_are_refused_by_name(tmp_path, capsys):
    liver_lesion = np.zeros((16, 16), np.uint8)
    liver_lesion[4:12, 4:12], liver_lesion[6:8, 6:8] = 127, 255  # a layout with 127 liver, 255 lesion
    binary = np.where(liver_lesion > 0, 255, 0).astype(np.uint8)
    _png_set(tmp_path / "sets" / "odd_values", [liver_lesion, binary])
    _png_set(tmp_path / "sets" / "missing", [binary, None, binary])
    _png_set(tmp_path / "sets" / "good", [binary, binary])
    code = main(["--input", str(tmp_path / "sets"), "--output", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert code == 1
    assert "slice_000.png: mask values 0, 127, 255 are neither LiTS labels" in printed
    assert "no mask for slice_001.png (the other 2 images have one" in printed
    assert {r["volume_id"] for r in read_manifest(tmp_path / "out")} == {"good"}  # the good set converted
