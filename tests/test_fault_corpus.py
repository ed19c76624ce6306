"""The fault corpus: bad inputs as users and hospitals produce them, each beside a good volume, through the command
lines as a user runs them. Every case asserts the exit status, one line naming the file and the reason, nothing
half-written under a final name (no temporary left), and the good volume processed; the OK cases (hospital series
quirks that are left out with a note) assert that the volume is read anyway. Generated on the fly, tiny."""

from __future__ import annotations

import dataclasses
import gzip
import shutil
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid

from networks import ThreeLevelUNet
from workflows.convert import main as convert_main
from workflows.infer import main as infer_main
from workflows.data.synthetic_cases import generate_case
from workflows.data.synthetic_dicom import write_ct_series

CASE = generate_case(0, seed=2, size=16, slices=6)
CHANNELS = ["4", "8", "16", "32"]


def _nifti(path, array, affine=None, header=None):
    image = nib.Nifti1Image(array, CASE.affine if affine is None else affine, header)
    nib.save(image, path)
    return path


def _series(folder):
    write_ct_series(CASE, folder)
    return sorted(folder.glob("*.dcm"))


def _edit(path, **changes):
    ds = pydicom.dcmread(path)
    for name, value in changes.items():
        setattr(ds, name, value)
    ds.save_as(path)


def _copy_as_new(source, target, **changes):
    shutil.copy(source, target)
    ds = pydicom.dcmread(target)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for name, value in changes.items():
        setattr(ds, name, value)
    ds.save_as(target)


# -- volume faults: (name, maker(raw folder) -> the faulty path, words the one line must hold) ----------------------
def _truncated_gz(raw):
    good = _nifti(raw / "volume-1.nii.gz", CASE.hu)
    good.write_bytes(good.read_bytes()[:200])
    return good


def _not_gzip(raw):
    (raw / "volume-1.nii.gz").write_bytes(b"this is no scan")
    return raw / "volume-1.nii.gz"


def _truncated_nii(raw):
    path = _nifti(raw / "volume-1.nii", CASE.hu)
    path.write_bytes(path.read_bytes()[:-64])
    return path


def _nan_affine(raw):
    affine = CASE.affine.copy()
    affine[0, 3] = np.nan
    return _nifti(raw / "volume-1.nii.gz", CASE.hu, affine)


def _sheared(raw):
    affine = CASE.affine.copy()
    affine[:3, 0] += 0.5 * affine[:3, 1]  # the first axis leans toward the second
    return _nifti(raw / "volume-1.nii.gz", CASE.hu, affine)


def _zero_spacing(raw):
    image = nib.Nifti1Image(CASE.hu, None)
    image.header.set_sform(None, code=0)
    image.header.set_qform(None, code=0)
    image.header["pixdim"][1:4] = [0.8, 0.8, 0.0]
    nib.save(image, raw / "volume-1.nii.gz")
    return raw / "volume-1.nii.gz"


def _two_d(raw):
    return _nifti(raw / "volume-1.nii.gz", CASE.hu[..., 0])


def _four_d(raw):
    return _nifti(raw / "volume-1.nii.gz", np.stack([CASE.hu, CASE.hu], -1))


def _nan_voxels(raw):
    hu = CASE.hu.astype(np.float32)
    hu[3, 3, 2] = np.nan
    return _nifti(raw / "volume-1.nii.gz", hu)


def _label_shape(raw):
    _nifti(raw / "segmentation-1.nii.gz", CASE.label[..., :-1])
    return _nifti(raw / "volume-1.nii.gz", CASE.hu)


def _label_affine(raw):
    affine = CASE.affine.copy()
    affine[0, 3] += 7.0
    _nifti(raw / "segmentation-1.nii.gz", CASE.label, affine)
    return _nifti(raw / "volume-1.nii.gz", CASE.hu)


def _label_values(raw):
    label = CASE.label.copy()
    label[0, 0, 0] = 5
    _nifti(raw / "volume-1.nii.gz", CASE.hu)
    return _nifti(raw / "segmentation-1.nii.gz", label)


def _missing_slice(raw):
    files = _series(raw / "volume-1")
    files[2].unlink()
    return raw / "volume-1"


def _uneven(raw):
    files = _series(raw / "volume-1")
    position = np.array([float(v) for v in pydicom.dcmread(files[2]).ImagePositionPatient])
    _edit(files[2], ImagePositionPatient=[f"{v:.4f}" for v in position + [0.0, 0.0, 0.4]])
    return raw / "volume-1"


def _tilted(raw):
    for k, path in enumerate(_series(raw / "volume-1")):
        position = np.array([float(v) for v in pydicom.dcmread(path).ImagePositionPatient])
        _edit(path, ImagePositionPatient=[f"{v:.4f}" for v in position + [0.0, 0.5 * k, 0.0]])
    return raw / "volume-1"


def _conflicting_duplicate(raw):
    files = _series(raw / "volume-1")
    pixels = pydicom.dcmread(files[3]).pixel_array.copy()
    pixels[0, 0] += 9
    _copy_as_new(files[3], raw / "volume-1" / "extra.dcm", PixelData=pixels.tobytes())
    return raw / "volume-1"


def _no_position(raw):
    files = _series(raw / "volume-1")
    ds = pydicom.dcmread(files[1])
    del ds.ImagePositionPatient
    ds.save_as(files[1])
    return raw / "volume-1"


def _zero_slope(raw):
    files = _series(raw / "volume-1")
    _edit(files[4], RescaleSlope="0")
    return raw / "volume-1"


def _mr(raw):
    write_ct_series(CASE, raw / "volume-1", modality="MR")
    return raw / "volume-1"


def _label_nan(raw):
    label = CASE.label.astype(np.float32)
    label[2, 2, 2] = np.nan
    _nifti(raw / "volume-1.nii.gz", CASE.hu)
    return _nifti(raw / "segmentation-1.nii.gz", label)


def _empty_file(raw):
    (raw / "volume-1.nii.gz").write_bytes(b"")
    return raw / "volume-1.nii.gz"


def _huge_header(raw):
    body = bytearray(gzip.decompress(_nifti(raw / "volume-1.nii.gz", np.zeros((2, 2, 2), np.int16)).read_bytes()))
    body[40:56] = np.array([3, 4096, 4096, 128, 1, 1, 1, 1], np.int16).tobytes()  # 2**31 voxels, 352 bytes
    (raw / "volume-1.nii.gz").write_bytes(gzip.compress(bytes(body)))
    return raw / "volume-1.nii.gz"


def _other_matrix(raw):
    files = _series(raw / "volume-1")
    ds = pydicom.dcmread(files[3])
    ds.Rows, ds.Columns = 8, 8
    ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    ds.save_as(files[3])
    return raw / "volume-1"


def _two_series(raw):
    _series(raw / "volume-1")
    other = raw / "other"
    write_ct_series(dataclasses.replace(CASE, index=7), other)
    for path in other.iterdir():
        path.rename(raw / "volume-1" / f"B{path.name}")
    other.rmdir()
    return raw / "volume-1"


def _damaged_dicom_pixels(raw):
    files = _series(raw / "volume-1")
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 300])
    return raw / "volume-1"


VOLUME_FAULTS = [
    ("truncated .nii.gz", _truncated_gz, "cannot be read"),
    ("not gzip", _not_gzip, "cannot be read"),
    ("truncated .nii", _truncated_nii, "truncated"),
    ("NaN affine", _nan_affine, "NaN or infinite"),
    ("sheared affine", _sheared, "sheared"),
    ("zero voxel size", _zero_spacing, "zero (or negative) axis"),
    ("2D image", _two_d, "expected a 3D volume"),
    ("4D image", _four_d, "expected a 3D volume"),
    ("NaN voxels", _nan_voxels, "NaN or infinite"),
    ("label grid shape", _label_shape, "label grid"),
    ("label affine", _label_affine, "label affine differs"),
    ("label values", _label_values, "label values must be LiTS labels"),
    ("DICOM missing slice", _missing_slice, "slices are missing"),
    ("DICOM uneven spacing", _uneven, "uneven slice spacing"),
    ("DICOM tilted stack", _tilted, "tilted"),
    ("DICOM conflicting duplicate", _conflicting_duplicate, "same position with different pixels"),
    ("DICOM image without position", _no_position, "no valid ImagePositionPatient"),
    ("DICOM zero rescale slope", _zero_slope, "RescaleSlope 0"),
    ("DICOM MR series", _mr, "modality is MR, expected CT"),
    ("DICOM two series in one folder", _two_series, "2 DICOM series"),
    ("DICOM damaged pixel data", _damaged_dicom_pixels, "cannot be read"),
    ("label with NaN", _label_nan, "NaN or infinite"),
    ("empty file", _empty_file, "empty (0 bytes)"),
    ("header of 2**31 voxels", _huge_header, "voxels, more than the"),
    ("DICOM image of another matrix size", _other_matrix, "cannot be read"),
]
#: Label faults concern conversion only: inference reads no labels.
LABEL_FAULTS = {"label grid shape", "label affine", "label values", "label with NaN"}


# -- 2D set faults --------------------------------------------------------------------------------------------------
def _png_set(root, masks, images=None):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, mask in enumerate(masks):
        image = np.full((16, 16), 90, np.uint8) if images is None else images[k]
        if image is not None:
            cv2.imwrite(str(root / "images" / f"volume-1_slice_{k}.png"), image)
        else:
            (root / "images" / f"volume-1_slice_{k}.png").write_bytes(b"not a png")
        if mask is not None:
            cv2.imwrite(str(root / "masks" / f"volume-1_slice_{k}.png"), mask)
    return root


_BINARY = np.zeros((16, 16), np.uint8)
_BINARY[4:12, 4:12] = 255

SET_FAULTS = [
    ("2D mask values 127/255", lambda raw: _png_set(raw / "set", [np.where(_BINARY, 127, 0).astype(np.uint8)]),
     "mask values 0, 127 are neither LiTS labels"),
    ("2D missing mask", lambda raw: _png_set(raw / "set", [_BINARY, None, _BINARY]), "no mask for volume-1_slice_1.png"),
    ("2D unreadable image", lambda raw: _png_set(raw / "set", [_BINARY], images=[None]), "cannot be read as an image"),
    ("2D mask values 0/3", lambda raw: _png_set(raw / "set", [np.where(_BINARY, 3, 0).astype(np.uint8)]),
     "mask values 0, 3 are neither LiTS labels"),
    ("2D mask of another size", lambda raw: _png_set(raw / "set", [np.zeros((8, 8), np.uint8) + _BINARY[:8, :8]]),
     "does not match its image"),
]


# -- hospital quirks that are fine: left out with a note, the volume read -------------------------------------------
def _reformat(raw):
    files = _series(raw / "volume-1")
    _copy_as_new(files[2], raw / "volume-1" / "coronal.dcm", ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"])
    return raw / "volume-1"


def _localizer(raw):
    files = _series(raw / "volume-1")
    _copy_as_new(files[2], raw / "volume-1" / "scout.dcm", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    return raw / "volume-1"


def _exact_copy(raw):
    files = _series(raw / "volume-1")
    shutil.copy(files[2], raw / "volume-1" / "copy.dcm")
    return raw / "volume-1"


def _shuffled_names(raw):
    for k, path in enumerate(_series(raw / "volume-1")):
        path.rename(path.with_name(f"{(k * 7) % 6}-{k}.dcm"))
    return raw / "volume-1"


def _nifti_2(raw):
    nib.save(nib.Nifti2Image(CASE.hu, CASE.affine), raw / "volume-1.nii.gz")
    return raw / "volume-1.nii.gz"


def _label_other_orientation(raw):
    nib.save(dataclasses.replace(CASE, stored_axcodes="SAR").stored_image(CASE.hu), raw / "volume-1.nii.gz")
    nib.save(dataclasses.replace(CASE, stored_axcodes="LPI").stored_image(CASE.label), raw / "segmentation-1.nii.gz")
    return raw / "volume-1.nii.gz"


def _stored(codes):
    def make(raw):
        nib.save(dataclasses.replace(CASE, stored_axcodes=codes).stored_image(CASE.hu), raw / "volume-1.nii.gz")
        return raw / "volume-1.nii.gz"

    return make


def _readme_in_series(raw):
    _series(raw / "volume-1")
    (raw / "volume-1" / "00_README.txt").write_text("exported by PACS")  # sorted before the images
    return raw / "volume-1"


OK_CASES = [
    ("DICOM reformat of another orientation", _reformat, "coronal.dcm"),
    ("DICOM localizer", _localizer, "scout.dcm"),
    ("DICOM exact copy", _exact_copy, "copy.dcm"),
    ("DICOM names out of order", _shuffled_names, None),
    ("NIfTI-2", _nifti_2, None),
    ("label stored in another orientation", _label_other_orientation, None),
    ("NIfTI stored SAR", _stored("SAR"), None),
    ("NIfTI stored ILP", _stored("ILP"), None),
    ("DICOM series with a README", _readme_in_series, None),
]


def _good(raw):
    raw.mkdir(parents=True, exist_ok=True)
    nib.save(CASE.stored_image(CASE.hu), raw / "volume-0.nii.gz")
    nib.save(CASE.stored_image(CASE.label), raw / "segmentation-0.nii.gz")


def _no_temporaries(folder):
    return not [p for p in Path(folder).rglob(".tmp-*")]


def _one_failure_line(printed, name):
    lines = [line for line in printed.splitlines() if line.startswith("FAILED volume")]
    return len(lines) == 1 and name in lines[0]


@pytest.mark.parametrize("case", VOLUME_FAULTS + SET_FAULTS, ids=lambda c: c[0])
def test_convert_refuses_the_fault_in_one_line_and_converts_the_good_volume(case, tmp_path, capsys):
    _, make, words = case
    raw = tmp_path / "raw"
    _good(raw)
    bad = make(raw)
    code = convert_main(["--input", str(raw), "--output", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    named = bad.name if isinstance(bad, Path) else "volume-1"
    assert code == 1
    assert _one_failure_line(printed, named) and words in printed, printed[-1500:]
    assert (tmp_path / "out" / "images" / "volume-0_slice_0.png").exists()
    assert not list((tmp_path / "out" / "images").glob("volume-1_*"))  # nothing of the bad volume under a final name
    assert _no_temporaries(tmp_path / "out")


@pytest.mark.parametrize("case", OK_CASES, ids=lambda c: c[0])
def test_convert_reads_hospital_quirks_and_names_what_it_left_out(case, tmp_path, capsys):
    _, make, left_out = case
    raw = tmp_path / "raw"
    _good(raw)
    make(raw)
    assert convert_main(["--input", str(raw), "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert len(list((tmp_path / "out" / "images").glob("volume-1_slice_*.png"))) == CASE.hu.shape[2]
    assert left_out is None or ("volume 1: " in printed and left_out in printed)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("corpus_weights") / "model.pt"
    torch.save(ThreeLevelUNet(channels=tuple(map(int, CHANNELS))).state_dict(), path)
    return path


@pytest.mark.parametrize("case", [c for c in VOLUME_FAULTS if c[0] not in LABEL_FAULTS], ids=lambda c: c[0])
def test_inference_reports_the_fault_in_one_line_and_segments_the_good_scan(case, weights, tmp_path, capsys):
    _, make, words = case
    raw = tmp_path / "scans"
    raw.mkdir()
    nib.save(CASE.stored_image(CASE.hu), raw / "volume-0.nii.gz")
    bad = make(raw)
    code = infer_main(["--input", str(raw), "--model", str(weights), "--channels", *CHANNELS, "--spatial-size", "16",
                       "--output", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    failed = [line for line in printed.splitlines() if ": FAILED: " in line]
    assert code == 1 and len(failed) == 1 and failed[0].startswith(str(bad)) and words in failed[0], printed[-1500:]
    assert (tmp_path / "out" / "volume-0_seg.nii.gz").exists() and _no_temporaries(tmp_path / "out")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(bad.name.split(".")[0] + "_")]


def test_the_corpus_is_the_size_the_issue_asks_for():
    converted = len(VOLUME_FAULTS) + len(SET_FAULTS) + len(OK_CASES)
    segmented = len([c for c in VOLUME_FAULTS if c[0] not in LABEL_FAULTS])
    assert converted + segmented >= 60, (converted, segmented)
