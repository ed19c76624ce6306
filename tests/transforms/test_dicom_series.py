"""Hospital series hygiene: one regular volume from a series folder, or one line saying why not."""

import shutil

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid

from transforms import InvalidScanError, LoadScan
from transforms.dicom_series import dicom_series
from workflows.data.synthetic_cases import generate_case
from workflows.data.synthetic_dicom import write_ct_series


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A generated 8-slice series (24 x 24 pixels) and its volume as LoadScan gives it."""
    folder = write_ct_series(generate_case(1, seed=4, size=24, slices=8), tmp_path_factory.mktemp("clean") / "series")
    return folder, LoadScan()(folder)


def _copy(clean, tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(clean[0], folder)
    return folder, sorted(folder.glob("*.dcm"))


def _edit(path, **changes):
    ds = pydicom.dcmread(path)
    for name, value in changes.items():
        if value is None:
            delattr(ds, name)
        else:
            setattr(ds, name, value)
    ds.save_as(path)


def _as_new_instance(source, target, **changes):
    shutil.copy(source, target)
    uid = generate_uid()
    ds = pydicom.dcmread(target)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.save_as(target)
    _edit(target, **changes)


def _same_volume(img, clean):
    return img.shape == clean[1].shape and torch.equal(img.as_tensor(), clean[1].as_tensor()) and torch.allclose(
        img.affine, clean[1].affine)


def test_a_reformat_of_another_orientation_and_a_localizer_are_left_out_by_name(clean, tmp_path):
    folder, files = _copy(clean, tmp_path)
    _as_new_instance(files[3], folder / "ZZ_coronal.dcm", ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"])
    _as_new_instance(files[2], folder / "AA_scout.dcm", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    img = LoadScan()(folder)
    assert _same_volume(img, clean)
    notes = " ".join(img.meta["series_notes"])
    assert "another orientation" in notes and "ZZ_coronal.dcm" in notes and "localizer" in notes and "AA_scout.dcm" in notes
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(f.name for f in files), "ZZ_coronal.dcm", "AA_scout.dcm"])


def test_files_named_out_of_order_are_stacked_by_position(clean, tmp_path):
    folder, files = _copy(clean, tmp_path)
    for i, path in enumerate(files):  # names and instance numbers no longer follow the slice order
        path.rename(folder / f"{(i * 5) % len(files):03d}-{i}.dcm")
    assert _same_volume(LoadScan()(folder), clean)


def test_an_exact_copy_is_dropped_with_a_note(clean, tmp_path):
    folder, files = _copy(clean, tmp_path)
    shutil.copy(files[4], folder / "copy_of_4.dcm")
    img = LoadScan()(folder)
    assert _same_volume(img, clean) and any("exact copy" in n for n in img.meta["series_notes"])


@pytest.mark.parametrize("fault, message", [
    ("other pixels at one position", r"same position with different pixels"),
    ("missing slice", r"slices are missing between .* a gap of"),
    ("uneven spacing", r"uneven slice spacing"),
    ("tilted stack", r"tilted \(gantry tilt\)"),
    ("no position", r"no valid ImagePositionPatient"),
    ("zero slope", r"RescaleSlope 0"),
    ("as many of each orientation", r"which is the series cannot be told"),
])
def test_what_is_not_one_regular_volume_is_refused_naming_the_files(clean, tmp_path, fault, message):
    folder, files = _copy(clean, tmp_path)
    first = pydicom.dcmread(files[0])
    if fault == "other pixels at one position":
        ds = pydicom.dcmread(files[5])
        pixels = ds.pixel_array.copy()
        pixels[0, 0] += 7
        _as_new_instance(files[5], folder / "conflict.dcm", PixelData=pixels.tobytes())
    elif fault == "missing slice":
        files[3].unlink()
    elif fault == "uneven spacing":
        position = [float(v) for v in pydicom.dcmread(files[3]).ImagePositionPatient]
        normal = np.cross(*np.reshape([float(v) for v in first.ImageOrientationPatient], (2, 3)))
        _edit(files[3], ImagePositionPatient=[f"{v:.4f}" for v in np.array(position) + 0.3 * normal])
    elif fault == "tilted stack":
        for k, path in enumerate(files):
            position = np.array([float(v) for v in pydicom.dcmread(path).ImagePositionPatient])
            _edit(path, ImagePositionPatient=[f"{v:.4f}" for v in position + [0.0, 0.4 * k, 0.0]])
    elif fault == "no position":
        _edit(files[2], ImagePositionPatient=None)
    elif fault == "zero slope":
        _edit(files[6], RescaleSlope="0")
    elif fault == "as many of each orientation":
        for k, path in enumerate(files[:4]):
            _edit(path, ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"])
    with pytest.raises(InvalidScanError, match=message) as error:
        LoadScan()(folder)
    text = str(error.value)
    assert text.startswith(str(folder)) and "\n" not in text
    assert ".dcm" in text or "orientation" in text  # the files it is about, by name


def test_real_hcc_series_loads_its_axial_stack_and_names_the_reformat(real_data):
    folder = real_data / "hcc_tace_0697" / "31_EQP_Ax5.00mm"
    series = dicom_series(folder)
    assert len(series.all_images) == 45 and len(series.files) == 44
    assert series.notes == [f"{folder}: left out 1 image(s) of another orientation (a reformat or localizer): "
                            "dicom-00001.dcm"]
    assert series.step_mm == pytest.approx(5.0, abs=0.01)
    img = LoadScan()(folder)
    assert tuple(img.shape) == (1, 512, 512, 44)
    spacing = torch.linalg.norm(img.affine[:3, :3], dim=0)
    assert spacing[2] == pytest.approx(5.0, abs=0.01)
    # axial: the slice axis runs inferior-superior, the in-plane axes do not
    assert abs(float(img.affine[2, 2])) == pytest.approx(5.0, abs=0.01) and abs(float(img.affine[2, 0])) < 1e-3
