"""A 2D patient scored as a volume: its slices stacked into a NIfTI read back, through inference's own image path,
as the very grey levels and labels of its slice files."""

import cv2
import numpy as np
import torch

from transforms import LoadScan, canonical_grey, to_canonical
from workflows.realdata import stack_2d_patient


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
