"""A 2D patient scored as a volume: its slices stacked into a NIfTI read back, through inference's own image path,
as the very grey levels and labels of its slice files."""

import cv2
import numpy as np
import torch

from transforms import LoadScan, canonical_grey, to_canonical
from workflows.data.held_out_volumes import stack_2d_patient


def test_stacked_slices_come_back_through_inference_as_the_same_grey_levels_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "masks").mkdir(parents=True)
    rows = []
    for k in range(4):
        grey = rng.integers(0, 256, (20, 24), dtype=np.uint8)
        label = np.zeros((20, 24), np.uint8)
        label[3:12, 5:9 + k] = 1
        label[4:6, 6:8] = 2 if k % 2 else 1
        name = f"volume-p.7_slice_{10 + k}"
        cv2.imwrite(str(tmp_path / "set" / "images" / f"{name}.png"), grey)
        cv2.imwrite(str(tmp_path / "set" / "masks" / f"{name}.png"), label)
        rows.append({"volume_id": "p.7", "slice_index": 10 + k, "image": str(tmp_path / "set" / "images" / f"{name}.png"),
                     "mask": str(tmp_path / "set" / "masks" / f"{name}.png"), "spacing_row_mm": float("nan"),
                     "spacing_col_mm": float("nan"), "slice_thickness_mm": float("nan")})
    scan, truth = stack_2d_patient(rows, tmp_path / "input", [-160.0, 240.0])
    grey = canonical_grey()({"image": str(scan)})["image"][0]  # what inference's preprocessing starts from
    label = to_canonical(LoadScan(modality=None)(str(truth)))[0]
    for z, row in enumerate(rows):
        assert torch.equal(grey[..., z].to(torch.uint8), torch.as_tensor(cv2.imread(row["image"], cv2.IMREAD_GRAYSCALE)))
        assert np.array_equal(label[..., z].numpy().astype(np.uint8), cv2.imread(row["mask"], cv2.IMREAD_GRAYSCALE))
    assert scan.name == "p.7.nii.gz" and truth.name == "p.7_label.nii.gz"


def test_a_held_out_scan_counts_lesions_found_and_false_lesions_against_a_remapped_truth(tmp_path):
    """Scans from other collections are scored as the held-out patients are: a multi-organ truth (liver 5) remapped to
    LiTS labels, lesions found at IoU > 0.5, and predicted lesions that match none counted as false."""
    import nibabel as nib

    from workflows.engine.volume_evaluation import evaluate_volumes
    from workflows.data.held_out_volumes import truth_as_lits
    from workflows.engine.volume_evaluation import held_out_scores

    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    organs = np.zeros((40, 40, 10), np.uint8)
    organs[5:35, 5:35, 1:9] = 5  # the liver
    organs[2:4, 2:4, :] = 3  # another organ, not liver
    nib.save(nib.Nifti1Image(organs, affine), tmp_path / "organs.nii.gz")
    truth = truth_as_lits(tmp_path / "organs.nii.gz", {5: 1}, tmp_path / "truth")
    lits = np.asarray(nib.load(truth).dataobj)
    assert set(np.unique(lits)) == {0, 1} and (lits == 1).sum() == (organs == 5).sum()
    lits[10:18, 10:18, 3:7] = 2  # one real lesion
    nib.save(nib.Nifti1Image(lits, affine), tmp_path / "truth.nii.gz")
    pred = lits.copy()
    pred[25:28, 25:28, 4:6] = 2  # two lesions that are not there
    pred[12:14, 28:31, 2:3] = 2
    nib.save(nib.Nifti1Image(pred, affine), tmp_path / "scan_seg.nii.gz")
    scores = held_out_scores(evaluate_volumes(tmp_path / "scan_seg.nii.gz", tmp_path / "truth.nii.gz",
                                              tmp_path / "evaluation", progress=False))
    assert scores["lesions_true"] == 1 and scores["lesions_found"] == 1 and scores["false_lesions"] == 2
    assert scores["liver_dice"] == 1.0 and 0 < scores["tumour_dice"] < 1
