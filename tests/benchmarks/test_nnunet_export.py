"""The peer benchmark's export to nnU-Net v2's raw format: labels and geometry read back equal."""

import json

import cv2
import nibabel as nib
import numpy as np
import torch

from tests.benchmarks.nnunet_export import export_nnunet
from tests.bundles.conftest import make_lists
from transforms import canonical_grey
from workflows.data.slice_set import read_slice_sets
from workflows.data.splitting import slices_dirs_of


def test_the_export_holds_every_patient_with_its_pixels_labels_and_spacing(tmp_path):
    lists = make_lists(tmp_path, target="both", test_fraction=0.2)
    folder = export_nnunet(lists, tmp_path / "raw", dataset_id=7)
    split = json.loads((lists / "split.json").read_text())
    ids = json.loads((folder / "case_ids.json").read_text())
    assert folder.name == "Dataset007_LiverCT" and sorted(ids.values()) == sorted(sum(split["volumes"].values(), []))
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "liver": 1, "tumour": 2} and dataset["channel_names"] == {"0": "CT"}
    assert dataset["numTraining"] == len(list((folder / "imagesTr").glob("*_0000.nii.gz")))
    folds = json.loads((folder / "splits_final.json").read_text())
    assert [ids[c] for c in folds[0]["val"]] == split["volumes"]["val"]
    assert [ids[c] for c in folds[0]["train"]] == split["volumes"]["train"]
    rows = read_slice_sets([str(d) for d in slices_dirs_of(lists)])
    for case, volume_id in ids.items():
        where = "Ts" if volume_id in split["volumes"]["test"] else "Tr"
        image, label = folder / f"images{where}" / f"{case}_0000.nii.gz", folder / f"labels{where}" / f"{case}.nii.gz"
        patient = sorted((r for r in rows if r["volume_id"] == volume_id), key=lambda r: r["slice_index"])
        grey = canonical_grey()({"image": str(image)})["image"][0]
        truth = np.asarray(nib.load(label).dataobj)
        for z, row in enumerate(patient):
            assert torch.equal(grey[..., z].to(torch.uint8), torch.as_tensor(cv2.imread(row["image"], cv2.IMREAD_GRAYSCALE)))
            assert np.array_equal(truth[..., z], cv2.imread(row["mask"], cv2.IMREAD_GRAYSCALE))
        spacing = nib.load(image).header.get_zooms()
        assert np.allclose(sorted(spacing[:2]), sorted([patient[0]["spacing_row_mm"], patient[0]["spacing_col_mm"]]),
                           rtol=1e-4)
        assert np.allclose(nib.load(image).affine, nib.load(label).affine)
