import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch

from transforms import CANONICAL_AXCODES, AxialSlices, AxialSlicesd, LoadScan, axial_axis, to_canonical

ORIENTATIONS = ["LPS", "PLI", "RAS", "ILP", "LPI", "SAR"]


def _write(case, codes, folder):
    stored = dataclasses.replace(case, stored_axcodes=codes)
    paths = []
    for name, array in (("volume", case.hu), ("segmentation", case.label)):
        paths.append(folder / f"{name}-{codes}.nii.gz")
        nib.save(stored.stored_image(array), paths[-1])
    return paths


@pytest.fixture(scope="module")
def loader():
    return LoadScan()


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_any_stored_orientation_gives_the_same_canonical_volume(small_case, codes, tmp_path, loader):
    volume_path, label_path = _write(small_case, codes, tmp_path)
    volume, label = loader(volume_path), loader(label_path)
    assert nib.aff2axcodes(volume.affine.numpy()) == tuple(codes)
    assert axial_axis(volume.affine) == codes.index("S" if "S" in codes else "I")

    canonical, canonical_label = to_canonical(volume), to_canonical(label)
    assert nib.aff2axcodes(canonical.affine.numpy()) == tuple(CANONICAL_AXCODES)
    assert np.array_equal(canonical[0].numpy(), small_case.hu)
    assert np.allclose(canonical.affine.numpy(), small_case.affine, atol=1e-4)
    # the liver lands on the same slices, whatever the stored orientation
    liver_slices = np.flatnonzero((canonical_label[0].numpy() >= 1).any(axis=(0, 1)))
    assert np.array_equal(liver_slices, np.flatnonzero((small_case.label >= 1).any(axis=(0, 1))))
    assert 0 < len(liver_slices) < small_case.label.shape[2]


def test_slices_are_in_radiological_view(small_case):
    # patient's right on the image's left: the liver sits in the left half; posterior at the bottom: the spine
    # (the brightest pixels) lies in the lower half
    rows, cols = np.nonzero((small_case.label >= 1).any(axis=2))
    assert cols.mean() < small_case.hu.shape[1] / 2
    bone_rows, _ = np.nonzero((small_case.hu > 600).any(axis=2))
    assert np.median(bone_rows) > small_case.hu.shape[0] / 2


def test_axial_slices_carry_index_spacing_and_place(small_case, tmp_path, loader):
    volume_path, _ = _write(small_case, "ILP", tmp_path)
    slices = AxialSlices()(loader(volume_path))
    rows, cols, n = small_case.hu.shape
    assert len(slices) == n
    assert all(s.shape == (1, rows, cols) for s in slices)
    k = 7
    assert slices[k].meta["slice_index"] == k
    assert np.allclose(slices[k].meta["spacing"], small_case.spacing[:2], atol=1e-4)
    assert np.array_equal(slices[k][0].numpy(), small_case.hu[..., k])
    expected_origin = small_case.affine @ np.array([0, 0, k, 1.0])
    assert np.allclose(slices[k].affine[:3, 3].numpy(), expected_origin[:3], atol=1e-3)


def test_dictionary_slices_keep_image_and_label_together(small_case, tmp_path, loader):
    volume_path, label_path = _write(small_case, "PLI", tmp_path)
    items = AxialSlicesd(keys=["image", "label"])({"image": loader(volume_path), "label": loader(label_path), "id": 3})
    assert len(items) == small_case.hu.shape[2]
    for item in items:
        k = item["slice_index"]
        assert item["id"] == 3
        assert np.array_equal(item["image"][0].numpy(), small_case.hu[..., k])
        assert np.array_equal(item["label"][0].numpy(), small_case.label[..., k])


def test_dictionary_slices_refuse_keys_on_different_grids(small_case, tmp_path, loader):
    volume_path, _ = _write(small_case, "LPS", tmp_path)
    volume = loader(volume_path)
    with pytest.raises(ValueError, match="different slice counts"):
        AxialSlicesd(keys=["image", "label"])({"image": volume, "label": volume[..., :5]})


def test_to_canonical_needs_a_3d_image_with_affine():
    with pytest.raises(ValueError, match=r"channel-first 3D MetaTensor"):
        to_canonical(torch.zeros(1, 8, 8))
