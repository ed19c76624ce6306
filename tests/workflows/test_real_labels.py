"""Labels made by other tools come in: DICOM SEG objects beside a study's series, 2D sets with a label map,
grey images saved as RGB."""

import csv
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation

from transforms import LoadScan
from transforms.slicing import RAS_LABELS
from workflows.data.conversion import ConvertSettings, convert
from workflows.inference.dicom_seg import write_dicom_seg
from workflows.data.discovery import find_volume_sources
from workflows.data.slice_set import read_manifest, read_mask
from workflows.data.synthetic_cases import generate_case
from workflows.data.synthetic_dicom import write_ct_series


def _rows(folder):
    with open(folder / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _study_with_seg(tmp_path, one_reference=True):
    """A study folder: a labelled series with its SEG beside it (every frame referencing the first image, as the
    HCC-TACE SEGs do), and an unlabelled second series of the same patient."""
    case = generate_case(2, seed=3, size=32, slices=8)
    study = tmp_path / "study"
    write_ct_series(case, study / "EQP")
    write_ct_series(case, study / "ARTERIAL")
    other = pydicom.uid.generate_uid()
    for path in (study / "ARTERIAL").iterdir():  # another series of the same study
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = other
        ds.save_as(path)
    ct = LoadScan()(study / "EQP")
    import nibabel as nib
    codes = "".join(nib.aff2axcodes(ct.affine.numpy()))
    label = Orientation(axcodes=codes, labels=RAS_LABELS)(
        MetaTensor(torch.as_tensor(case.label)[None], affine=torch.as_tensor(case.affine)))[0].numpy().astype(np.uint8)
    seg_path = write_dicom_seg(label, ct.affine, study / "EQP", study / "EQP_ManualROI.dcm")
    if one_reference:
        seg = pydicom.dcmread(seg_path)
        first = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        for group in seg.PerFrameFunctionalGroupsSequence:
            group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID = first.ReferencedSOPInstanceUID
        order = list(range(len(seg.PerFrameFunctionalGroupsSequence)))[::-1]  # frames in another order too
        frames = seg.pixel_array.reshape(len(order), seg.Rows, seg.Columns)[order]
        seg.PerFrameFunctionalGroupsSequence = [seg.PerFrameFunctionalGroupsSequence[i] for i in order]
        seg.PixelData = np.packbits(frames.astype(np.uint8).reshape(-1), bitorder="little").tobytes()
        seg.save_as(seg_path)
    return study, case, label


def test_a_seg_beside_a_study_labels_its_series_and_the_unlabelled_series_is_left_out(tmp_path, capsys):
    study, case, _ = _study_with_seg(tmp_path)
    sources, notes = find_volume_sources(study)
    assert [(s.volume_id, [p.name for p in s.segs]) for s in sources] == [("study_EQP", ["EQP_ManualROI.dcm"])]
    assert any("left out" in n and "ARTERIAL" in n for n in notes)
    summary = convert(study, tmp_path / "out", progress=True)
    assert summary.converted == ["study_EQP"] and not summary.failed  # the study names its series
    printed = capsys.readouterr().err + capsys.readouterr().out
    rows = _rows(tmp_path / "out")
    # frames placed by position: the canonical masks equal the generated label slice by slice
    for row in rows:
        mask = cv2.imread(str(tmp_path / "out" / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(mask, case.label[:, :, int(row["slice_index"])])
    assert sum(int(r["tumor_pixels"]) for r in rows) == int((case.label == 2).sum()) > 0
    assert {r["patient_id"] for r in rows} == {pydicom.dcmread(next((study / "EQP").iterdir())).PatientID}


def test_seg_segments_are_mapped_by_label_and_code_and_the_mapping_is_said(tmp_path, capsys):
    study, _, _ = _study_with_seg(tmp_path, one_reference=False)
    seg = pydicom.dcmread(study / "EQP_ManualROI.dcm")
    seg.SegmentSequence[0].SegmentLabel = "Segment_1"  # no word: the SNOMED code (liver) decides
    seg.SegmentSequence[1].SegmentLabel = "HCC lesion"
    seg.save_as(study / "EQP_ManualROI.dcm")
    convert(study, tmp_path / "out")
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "segment 1 'Segment_1' -> liver (1)" in text and "segment 2 'HCC lesion' -> tumour (2)" in text


def test_a_seg_of_other_organs_only_is_refused_by_name(tmp_path):
    study, _, _ = _study_with_seg(tmp_path, one_reference=False)
    seg = pydicom.dcmread(study / "EQP_ManualROI.dcm")
    for segment in seg.SegmentSequence:
        segment.SegmentLabel = "Spleen"
        segment.SegmentedPropertyTypeCodeSequence[0].CodeValue = "78961009"
        segment.SegmentedPropertyTypeCodeSequence[0].CodeMeaning = "Spleen"
    seg.save_as(study / "EQP_ManualROI.dcm")
    summary = convert(study, tmp_path / "out", progress=False)
    assert "no segment is liver or tumour" in summary.failed["study_EQP"] and "Spleen" in summary.failed["study_EQP"]


def _two_case_set(root, rgb=False, values=(127, 255)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for case in (0, 1):
        for k in (3, 4):
            image = np.full((16, 16), 100 + case, np.uint8)
            mask = np.zeros((16, 16), np.uint8)
            mask[4:12, 4:12] = values[0]
            mask[6:8, 6:8] = values[1]
            if rgb:
                image, mask = np.dstack([image] * 3), np.dstack([mask] * 3)
            cv2.imwrite(str(root / "images" / f"{case}_{k}.png"), image)
            cv2.imwrite(str(root / "masks" / f"{case}_{k}.png"), mask)


def test_a_2d_set_with_a_label_map_and_rgb_slices_converts_per_case(tmp_path):
    _two_case_set(tmp_path / "set", rgb=True)
    convert(tmp_path / "set", tmp_path / "out", ConvertSettings(label_map={127: 1, 255: 2}), progress=False)
    rows = _rows(tmp_path / "out")
    assert sorted({r["volume_id"] for r in rows}) == ["set-0", "set-1"]  # one volume per case
    assert all(int(r["liver_pixels"]) == 64 and int(r["tumor_pixels"]) == 4 for r in rows)
    mask = cv2.imread(str(tmp_path / "out" / rows[0]["mask"]), cv2.IMREAD_UNCHANGED)
    assert mask.ndim == 2 and set(np.unique(mask).tolist()) == {0, 1, 2}
    image = cv2.imread(str(tmp_path / "out" / rows[0]["image"]), cv2.IMREAD_UNCHANGED)
    assert image.ndim == 2 and int(image[0, 0]) == 100
    recorded = __import__("json").loads((tmp_path / "out" / "convert.json").read_text())
    assert recorded["label_map"] == {"127": 1, "255": 2}


def test_mask_values_outside_the_label_map_or_colour_images_are_refused_by_name(tmp_path):
    _two_case_set(tmp_path / "set", values=(127, 200))
    with pytest.raises(ValueError, match=r"mask values 200 are not in the label map 127:1,255:2"):
        read_mask(tmp_path / "set" / "masks" / "0_3.png", label_map={127: 1, 255: 2})
    with pytest.raises(ValueError, match="--label-map"):
        read_mask(tmp_path / "set" / "masks" / "0_3.png")
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 2] = 255
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    with pytest.raises(ValueError, match="colour image whose channels differ"):
        read_mask(tmp_path / "colour.png")


def test_jpeg_lossless_dicom_has_a_decoder():
    from pydicom.pixels.decoders import JPEGLosslessSV1Decoder, JPEG2000LosslessDecoder
    assert JPEGLosslessSV1Decoder.is_available and JPEG2000LosslessDecoder.is_available


def test_real_hcc_study_converts_its_labelled_series_with_liver_and_tumour(real_data, tmp_path):
    summary = convert(real_data / "hcc_tace_2144", tmp_path / "out", progress=False)
    assert summary.converted == ["hcc_tace_2144_31_EQP_Ax5.00mm"] and not summary.failed
    rows = _rows(tmp_path / "out")
    liver = sum(int(r["liver_pixels"]) for r in rows)
    tumour = sum(int(r["tumor_pixels"]) for r in rows)
    assert liver > 100_000 and 2_000 < tumour < 10_000  # the README: tumour ~4,000 voxels
    assert {r["patient_id"] for r in rows} == {"2144"} or len({r["patient_id"] for r in rows}) == 1


def test_real_hcc_patient_crop_holds_its_liver_and_lesion_and_its_slices_stack_with_neighbours(real_data, tmp_path):
    """The tumour stage's box on a real HCC series (5 mm slices, 0.7-0.8 mm pixels) holds every liver and lesion
    voxel, and zooms: the crop is well under the 512-pixel slice. Neighbours read from its slice files are the
    series' own neighbouring slices."""
    from workflows.data.liver_boxes import LiverBoxes
    from workflows.data.slice_set import LoadSliced
    from workflows.data.splitting import plan_split, write_split

    convert(real_data / "hcc_tace_2144", tmp_path / "slices", progress=False)
    rows = read_manifest(tmp_path / "slices")
    plan = plan_split(rows, target="both", positives=10**6, negatives=10**6, seed=0, val_fraction=0.0,
                      test_fraction=0.0, chunk_size=10**6, val_balanced=0)
    write_split(plan, tmp_path / "lists", tmp_path / "slices")
    boxes = LiverBoxes(tmp_path / "lists", "liver_crop")
    x0, x1, y0, y1, z0, z1 = boxes.box(rows[0]["volume_id"])
    assert 150 < x1 - x0 < 400  # the crop zooms the liver (slices are 512 pixels)
    kept = boxes.rows([{"volume_id": r["volume_id"], "slice_index": r["slice_index"], "image": r["image"]} for r in rows])
    kept_slices = {r["slice_index"] for r in kept}
    for row in rows:
        labels = read_mask(row["mask"])
        if labels.any():
            assert row["slice_index"] in kept_slices
            xs, ys = np.nonzero(labels)
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
    middle = rows[len(rows) // 2]
    stacked = LoadSliced(keys="image", context=1)({"image": middle["image"]})["image"]
    by_index = {r["slice_index"]: r["image"] for r in rows}
    for channel, k in enumerate((middle["slice_index"] - 1, middle["slice_index"], middle["slice_index"] + 1)):
        assert np.array_equal(np.asarray(stacked[channel]), cv2.imread(by_index[k], cv2.IMREAD_GRAYSCALE))


def test_real_2d_set_with_lesions_converts_with_its_label_map(real_data, tmp_path):
    summary = convert(real_data / "liver_png_2d", tmp_path / "out", ConvertSettings(label_map={127: 1, 255: 2}),
                      progress=False)
    assert not summary.failed
    rows = _rows(tmp_path / "out")
    cases = {r["volume_id"] for r in rows}
    assert {f"liver_png_2d-{k}" for k in range(8)} <= cases
    assert sum(int(r["tumor_pixels"]) > 0 for r in rows if r["volume_id"].startswith("liver_png_2d-")) == 500


def test_evaluate_pairs_one_prediction_with_a_series_and_its_seg(tmp_path, capsys):
    import nibabel as nib

    from workflows.evaluate import main
    study, _, label = _study_with_seg(tmp_path)
    affine = LoadScan()(study / "EQP").affine.numpy()
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "EQP_seg.nii.gz")
    half = label.copy()
    half[:, :, : label.shape[2] // 2] = 0
    nib.save(nib.Nifti1Image(half, affine), tmp_path / "half_seg.nii.gz")
    assert main(["--pred", str(tmp_path / "EQP_seg.nii.gz"), "--truth", str(study / "EQP"),
                 "--output", str(tmp_path / "exact")]) == 0
    summary = __import__("json").loads((tmp_path / "exact" / "summary.json").read_text())
    assert summary["liver"]["dice_per_case"]["mean"] == pytest.approx(1.0)
    assert summary["tumour"]["dice_per_case"]["mean"] == pytest.approx(1.0)
    main(["--pred", str(tmp_path / "half_seg.nii.gz"), "--truth", str(study / "EQP"), "--output", str(tmp_path / "half")])
    assert __import__("json").loads((tmp_path / "half" / "summary.json").read_text())["liver"]["dice_per_case"]["mean"] < 0.95
    with pytest.raises(SystemExit):
        main(["--pred", str(tmp_path / "EQP_seg.nii.gz"), "--truth", str(study / "EQP_ManualROI.dcm")])
    assert "give --truth the series folder" in capsys.readouterr().err


def test_the_recipe_finds_the_real_sources_with_their_label_maps(real_data):
    from workflows.recipe.sources import find_real_sources
    sources, notes = find_real_sources(real_data)
    found = {s["name"]: s for s in sources}
    assert {"hcc_tace_0697", "hcc_tace_2022", "hcc_tace_2144", "liver_png_2d", "chaos_ct_p1"} <= set(found)
    assert found["liver_png_2d"]["label_map"] == {127: 1, 255: 2} and found["chaos_ct_p1"]["label_map"] is None
    assert found["hcc_tace_2144"]["kind"] == "DICOM study with SEG"
    assert "totalseg_example" in notes


def _recipe_data(tmp_path):
    """A study with its SEG, a 2D set with lesions (three cases) and a 2D set that labels the liver only, in another
    window (as CHAOS: liver grey 240)."""
    data = tmp_path / "data"
    study, _, _ = _study_with_seg(data)  # data/study: a series with its SEG, and an unlabelled series
    for case in range(3):
        (data / "set" / "images").mkdir(parents=True, exist_ok=True)
        (data / "set" / "masks").mkdir(parents=True, exist_ok=True)
        for k in range(4):
            image = np.full((32, 32), 60, np.uint8)
            image[6:26, 6:26] = 150
            mask = np.zeros((32, 32), np.uint8)
            mask[6:26, 6:26] = 127
            mask[10:14, 10:14] = 255 if k % 2 else 127
            cv2.imwrite(str(data / "set" / "images" / f"{case}_{k}.png"), image)
            cv2.imwrite(str(data / "set" / "masks" / f"{case}_{k}.png"), mask)
    for k in range(3):  # a set that labels the liver only (0/255), in another window (as CHAOS: liver grey 240)
        for folder in ("images", "masks"):
            (data / "liveronly" / folder).mkdir(parents=True, exist_ok=True)
        image = np.full((32, 32), 120, np.uint8)
        image[4:24, 8:28] = 240
        cv2.imwrite(str(data / "liveronly" / "images" / f"9_{k}.png"), image)
        cv2.imwrite(str(data / "liveronly" / "masks" / f"9_{k}.png"), np.where(image > 200, 255, 0).astype(np.uint8))
    return data


def test_the_recipe_runs_end_to_end_on_a_small_study_and_2d_set(tmp_path, capsys):
    from workflows.realdata import main
    data = _recipe_data(tmp_path)
    assert main(["--data", str(data), "--output", str(tmp_path / "out"), "--epochs", "2",
                 "--liver-only-sources", "train"]) == 0
    printed = capsys.readouterr().out
    assert "set: 2D set (label map 127:1,255:2)" in printed and "study: DICOM study with SEG" in printed
    assert "liveronly: 1 volume(s), 3 slices; labels the liver only: trains the liver, its tumour unknown" in printed
    # the set in another window is converted again, its liver brought to the scan's grey, and trained on so
    study_liver = __import__("json").loads((tmp_path / "out" / "slices" / "study" / "grey_levels.json").read_text())
    factor = round(next(iter(study_liver.values()))["liver_median"] / 240, 3)
    assert f"liveronly: liver grey 240 against the scans' (another window): converted again with its grey levels x{factor:g}" in printed
    scaled = tmp_path / "out" / "slices" / f"liveronly_grey_x{factor:g}"
    liver = [cv2.imread(r["image"], 0)[10, 10] for r in read_manifest(scaled)]
    assert liver == [round(240 * factor)] * 3 and "WARNING (sources trained on)" not in printed
    assert "whole: liver + tumour on whole slices, 2 epoch(s) of" in printed and "measured" not in printed
    # the tumour stage twice the whole-slice stage's epochs by default; no speed probe
    assert "liver_crop: the tumour on crops around the liver at 192x192, 4 epoch(s) of" in printed
    summary = __import__("json").loads((tmp_path / "out" / "summary.json").read_text())
    held_out = summary["held_out"]
    assert held_out and all(0 <= s["liver_dice"] <= 1 for s in held_out.values())
    # every held-out patient is segmented by bundle inference as a volume, the 2D one from its stacked slices
    assert {s["where"].split(" on ")[1].split(",")[0] for s in held_out.values()} <= {"the DICOM series",
                                                                                       "its slices stacked into a volume"}
    assert summary["epochs"] == 2 and summary["tumour_epochs"] == 4 and summary["plan"] == "--epochs"
    assert summary["threads"] >= 1
    assert summary["stages"] == 2 and summary["context"] == 1
    # the scores say which inference made them: the bundle's defaults
    assert summary["inference"] == {"flip_check": True, "min_tumour_mm3": 500.0, "largest_liver": True}
    assert summary["liver_only_volumes"] and set(summary["liver_only_volumes"]) <= set(summary["split"]["train"])
    assert summary["grey_match"] == "liver" and summary["grey_scaled"] == {"liveronly": factor}
    assert {Path(e["image"]).parts[2] for e in __import__("json").loads((tmp_path / "out" / "lists" / "chunk_0.json")
            .read_text())["training"] if e["volume_id"] in summary["liver_only_volumes"]} == {scaled.name}
    chunk = __import__("json").loads((tmp_path / "out" / "lists" / "chunk_0.json").read_text())["training"]
    assert {e["volume_id"] for e in chunk if e.get("tumour_labelled") is False} == set(summary["liver_only_volumes"])
    assert summary["cpu_model"] and summary["training_images_per_second"] > 0
    for stage, epochs in (("whole_slices", 2), ("tumour_on_liver_crop", 4)):
        log = __import__("json").loads((tmp_path / "out" / "models" / stage / "training_log.json").read_text())
        assert [e["epochs"] for e in log] == [epochs]
    for flag, value, started in (("--epochs", "3", "2"), ("--context", "0", "1"), ("--stages", "1", "2"),
                                 ("--precision", "fp32", "auto"), ("--liver-only-sources", "leave-out", "train"),
                                 ("--grey-match", "off", "liver"), ("--tumour-size", "256", "192"),
                                 ("--tumour-epochs", "2", "4")):
        with pytest.raises(SystemExit) as refused:  # the same folder with another plan: refused before anything runs
            main(["--data", str(data), "--output", str(tmp_path / "out"), "--liver-only-sources", "train", flag, value])
        err = capsys.readouterr().err
        assert refused.value.code == 2 and f"{flag} {value}: " in err and f"was started with {flag} {started}" in err
    # a rerun that finds every epoch done trains nothing and keeps the training time the first run measured
    spent = __import__("json").loads((tmp_path / "out" / "models" / "training_time.json").read_text())
    assert main(["--data", str(data), "--output", str(tmp_path / "out"), "--epochs", "2",
                 "--liver-only-sources", "train"]) == 0
    again = __import__("json").loads((tmp_path / "out" / "models" / "training_time.json").read_text())
    assert again["minutes"] >= spent["minutes"] > 0 and again["cpu_minutes"] >= spent["cpu_minutes"] > 0
    rerun = __import__("json").loads((tmp_path / "out" / "summary.json").read_text())
    assert rerun["training_minutes"] == round(again["minutes"], 1) >= summary["training_minutes"]
    state = torch.load(tmp_path / "out" / "models" / "tumour_on_liver_crop" / "model.pt", weights_only=True)
    settings = state["settings"]  # one file, both stages
    assert settings["tumour_stage"]["stage"] == "liver_crop" and settings["tumour_stage"]["context"] == 1
    assert settings["context"] == 1 and set(state) == {"model", "settings", "tumour_model"}
    assert settings["target"] == "both" and settings["channels"] == [16, 32, 64, 128]


def test_the_tumour_stage_trains_and_runs_at_its_own_crop_size(tmp_path, capsys):
    """``--tumour-size 64``: the crops around the liver are resized to 64 pixels a side in training, the model file
    records it for inference (the liver stage stays at 256), and a size the network cannot halve three times is
    refused in one line; ``--tumour-epochs`` sets the tumour stage's epochs apart from the whole-slice stage's."""
    import json

    from workflows.realdata import main
    data, out = _recipe_data(tmp_path), tmp_path / "out"
    with pytest.raises(SystemExit) as refused:
        main(["--data", str(data), "--output", str(out), "--tumour-size", "100"])
    assert refused.value.code == 2 and "error: --tumour-size must be a multiple of 8 from 32 to 1024 pixels, got 100." \
        in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["--data", str(data), "--output", str(out), "--tumour-epochs", "0"])
    assert refused.value.code == 2 and "error: --tumour-epochs must be a whole number >= 1, got 0." \
        in capsys.readouterr().err
    assert main(["--data", str(data), "--output", str(out), "--epochs", "1", "--tumour-size", "64",
                 "--tumour-epochs", "3"]) == 0
    printed = capsys.readouterr().out
    assert "whole: liver + tumour on whole slices, 1 epoch(s)" in printed
    assert "liver_crop: the tumour on crops around the liver at 64x64, 3 epoch(s)" in printed
    settings = torch.load(out / "models" / "tumour_on_liver_crop" / "model.pt", weights_only=True)["settings"]
    assert settings["spatial_size"] == 256 and settings["tumour_stage"]["spatial_size"] == 64
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tumour_size"] == 64 and summary["held_out"]  # segmented through the bundle at that size
    assert (summary["epochs"], summary["tumour_epochs"]) == (1, 3)


def test_a_healthy_liver_only_source_trains_as_tumour_free_and_an_unknown_one_is_refused(tmp_path, capsys):
    """CHAOS's livers are potential donors' (no tumour): named healthy, a liver-only source's tumour channel is a known
    0, not unknown; a folder that is not there is refused in one line before anything runs."""
    from workflows.realdata import main
    data = _recipe_data(tmp_path)
    with pytest.raises(SystemExit) as refused:
        main(["--data", str(data), "--output", str(tmp_path / "out"), "--healthy-sources", "nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert refused.value.code == 2 and err[-1].startswith("error: --healthy-sources nope: no such folder in")
    assert main(["--data", str(data), "--output", str(tmp_path / "out"), "--epochs", "1", "--stages", "1",
                 "--liver-only-sources", "train", "--healthy-sources", "liveronly", "set"]) == 0
    printed = capsys.readouterr().out
    assert "liveronly: 1 volume(s), 3 slices; labels the liver only, and its livers hold no tumour" in printed
    assert "--healthy-sources set: it labels tumours itself, so its own labels are used" in printed  # said, not guessed
    summary = __import__("json").loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["healthy_volumes"] and not summary["liver_only_volumes"]
    chunk = __import__("json").loads((tmp_path / "out" / "lists" / "chunk_0.json").read_text())["training"]
    healthy = [e for e in chunk if e["volume_id"] in summary["healthy_volumes"]]
    assert len(healthy) == 3 and not any("tumour_labelled" in e for e in healthy)  # labelled: no tumour, for certain
    with pytest.raises(SystemExit) as refused:  # a rerun with the tumour unknown again: another plan, refused
        main(["--data", str(data), "--output", str(tmp_path / "out"), "--stages", "1", "--liver-only-sources", "train",
              "--healthy-sources"])
    assert refused.value.code == 2 and "was started with --healthy-sources liveronly set" in capsys.readouterr().err


def test_more_members_train_the_missing_networks_with_the_next_seeds_and_the_averaged_file_is_scored(tmp_path, capsys):
    """``--members 2`` on a finished run trains a second network (seed 1, the same split) beside the first, which is
    left as it was, and scores the model file that averages the two."""
    import json

    from workflows.realdata import main
    data, out = _recipe_data(tmp_path), tmp_path / "out"
    run = ["--data", str(data), "--output", str(out), "--epochs", "1", "--stages", "1"]
    with pytest.raises(SystemExit) as refused:
        main(run + ["--members", "0"])
    assert refused.value.code == 2 and "error: --members must be 1..16 networks, got 0." in capsys.readouterr().err
    assert main(run) == 0
    first = out / "models" / "whole_slices" / "model.pt"
    first_bytes, lists = first.read_bytes(), (out / "lists" / "chunk_0.json").read_text()
    capsys.readouterr()
    assert main(run + ["--members", "2"]) == 0
    assert "network 2 of 2: seed 1" in capsys.readouterr().out
    assert first.read_bytes() == first_bytes and (out / "lists" / "chunk_0.json").read_text() == lists
    summary = json.loads((out / "summary.json").read_text())
    ensemble = out / "models" / "ensemble_2" / "model.pt"
    assert summary["members"] == 2 and summary["model"] == str(ensemble)
    assert list((out / "ensemble_2" / "held_out").glob("*/*_seg.nii.gz")) and list((out / "held_out").glob("*/*_seg.nii.gz"))
    assert all(0 <= s["liver_dice"] <= 1 for s in summary["held_out"].values())
    state = torch.load(ensemble, weights_only=True)
    assert state["settings"]["members"] == 2
    assert state["settings"]["member_files"] == ["whole_slices/model.pt", "seed_1/whole_slices/model.pt"]
    one, two = (torch.load(m, weights_only=True)["model"] for m in (first, out / "models" / "seed_1" / "whole_slices" / "model.pt"))
    assert all(torch.equal(state["model"][f"members.0.{k}"], v) and torch.equal(state["model"][f"members.1.{k}"], two[k])
               for k, v in one.items())
    assert any(not torch.equal(v, two[k]) for k, v in one.items())  # another seed, another network


def test_the_recipe_refuses_a_source_folder_that_is_not_there_in_one_line(real_data, tmp_path, capsys):
    from workflows.realdata import main
    with pytest.raises(SystemExit) as refused:
        main(["--data", str(real_data), "--output", str(tmp_path / "out"), "--sources", "hcc_tace_0697", "nope",
              "--epochs", "1"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.strip().splitlines()[-1].startswith("error: --sources nope: no such folder in")
    assert not (tmp_path / "out" / "slices").exists()
