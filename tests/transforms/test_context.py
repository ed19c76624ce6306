"""Slice context: k neighbours on each side as channels, one rule for volumes (inference) and slice files (training,
converted sets and the Kaggle JPG layout alike)."""

import cv2
import numpy as np
import pytest
import torch

from transforms.context import ContextSliceInferer, StackContext, check_context, context_indices
from workflows.data.conversion import convert
from workflows.data.slice_set import LoadSliced, context_files, read_manifest, slice_name
from workflows.data.synthetic_cases import generate_dataset


def test_context_indices_repeat_the_end_slice_at_the_edges():
    assert context_indices(0, 10, 1) == [0, 0, 1]
    assert context_indices(9, 10, 2) == [7, 8, 9, 9, 9]
    assert context_indices(4, 10, 0) == [4]
    assert context_indices(0, 1, 2) == [0, 0, 0, 0, 0]


def test_stack_context_puts_slice_z_minus_k_plus_j_in_channel_j():
    volume = torch.arange(5, dtype=torch.float32).view(1, 1, 1, 5).expand(1, 2, 3, 5).clone()
    stacked = StackContext(1)(volume)
    assert stacked.shape == (3, 2, 3, 5)
    assert stacked[:, 0, 0, :].tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 4]]
    batch = StackContext(2)(volume[None])
    assert batch.shape == (1, 5, 2, 3, 5) and batch[0, :, 0, 0, 0].tolist() == [0, 0, 0, 1, 2]
    assert StackContext(0)(volume) is volume


@pytest.mark.parametrize("bad", [-1, 9, "two", True, 1.5])
def test_a_bad_context_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="`context`"):
        check_context(bad)


def test_the_context_inferer_shows_each_slice_with_its_neighbours():
    """A network returning its first channel minus its last: slice z-1 minus slice z+1, with the edges repeated."""
    volume = (torch.arange(6, dtype=torch.float32) ** 2).view(1, 1, 1, 1, 6).expand(1, 1, 8, 8, 6).clone()
    out = ContextSliceInferer(context=1, roi_size=(8, 8), sw_batch_size=4)(volume, lambda x: x[:, :1] - x[:, -1:])
    assert out.shape == (1, 1, 8, 8, 6)
    squares = [0, 1, 4, 9, 16, 25]
    expected = [squares[max(z - 1, 0)] - squares[min(z + 1, 5)] for z in range(6)]
    assert out[0, 0, 3, 3].tolist() == expected


def test_neighbours_from_slice_files_equal_the_volume_stacked(tmp_path):
    """Training's neighbours (read by volume id and slice index from the converted set) are inference's (stacked
    from the volume), at both ends of the volume."""
    generate_dataset(tmp_path / "raw", cases=1, seed=3, size=24, slices=6, progress=False)
    convert(tmp_path / "raw", tmp_path / "slices", progress=False)
    rows = read_manifest(tmp_path / "slices")
    volume = np.stack([cv2.imread(r["image"], cv2.IMREAD_GRAYSCALE) for r in rows], axis=-1)
    stacked = StackContext(2)(torch.as_tensor(volume, dtype=torch.float32)[None])
    load = LoadSliced(keys="image", context=2)
    for z, row in enumerate(rows):
        loaded = load({"image": row["image"]})["image"]
        assert loaded.shape == (5, 24, 24)
        assert torch.equal(torch.as_tensor(loaded), stacked[..., z]), z


def test_the_kaggle_layout_finds_neighbours_by_name_and_fills_a_gap_towards_the_slice(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for k in (3, 4, 6, 7):  # slice 5 is missing; another volume's slices sit in the same folder
        cv2.imwrite(str(folder / f"{slice_name('12', k)}.jpg"), np.full((8, 8), 10 * k, np.uint8))
        cv2.imwrite(str(folder / f"{slice_name('120', k)}.jpg"), np.full((8, 8), 200, np.uint8))
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    assert names(context_files(folder / "volume-12_slice_4.jpg", 2)) == [
        "volume-12_slice_3.jpg", "volume-12_slice_3.jpg", "volume-12_slice_4.jpg", "volume-12_slice_4.jpg",
        "volume-12_slice_6.jpg"]
    assert names(context_files(folder / "volume-12_slice_7.jpg", 1)) == [
        "volume-12_slice_6.jpg", "volume-12_slice_7.jpg", "volume-12_slice_7.jpg"]
    loaded = LoadSliced(keys="image", context=1)({"image": str(folder / "volume-12_slice_6.jpg")})["image"]
    assert [round(float(c.mean())) for c in loaded] == [60, 60, 70]  # the missing 5 is filled by the slice itself
    assert context_files(tmp_path / "plain.png", 1) == [tmp_path / "plain.png"] * 3  # no name, no neighbours
    for k in (0, 1):  # a DICOM series' volume id holds dots
        cv2.imwrite(str(folder / f"{slice_name('hcc_Ax5.00mm', k)}.png"), np.zeros((4, 4), np.uint8))
    assert names(context_files(folder / "volume-hcc_Ax5.00mm_slice_1.png", 1)) == [
        "volume-hcc_Ax5.00mm_slice_0.png", "volume-hcc_Ax5.00mm_slice_1.png", "volume-hcc_Ax5.00mm_slice_1.png"]
