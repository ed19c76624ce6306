
import nibabel as nib
import numpy as np
import pytest
import torch

from transforms import InvalidScanError, LoadScan, LoadScand, ValidateScand, to_canonical
from workflows.data.synthetic_dicom import write_ct_series


@pytest.fixture(scope="module")
def loader():
    return LoadScan()


def _air_hu(volume):
    """A low percentile of the voxels inside the field of view (scanners pad outside it with -2000 or -3024)."""
    values = volume.numpy().ravel()
    return float(np.percentile(values[values > -1500], 1))


def test_real_uncompressed_dicom_series_loads_in_hu(real_data, loader):
    volume = loader(real_data / "dcmqi_ct3" / "ct")
    assert volume.shape == (1, 512, 512, 3)
    assert abs(_air_hu(volume) + 1000) < 60
    assert np.allclose(sorted(torch.linalg.norm(volume.affine[:3, :3], dim=0).tolist())[:2], [0.8105, 0.8105],
                       atol=1e-3)


def test_real_jpeg2000_series_loads_and_its_liver_reads_as_liver(real_data, loader):
    folder = real_data / "totalseg_example"
    volume = to_canonical(loader(folder / "ct_dicom"))
    label = to_canonical(loader(folder / "seg_dicom.nii.gz"))
    assert volume.shape == label.shape == (1, 512, 512, 20)
    assert torch.allclose(volume.affine, label.affine, atol=1e-3)
    assert abs(_air_hu(volume) + 1000) < 60
    liver = label[0] == 5  # TotalSegmentator's liver label
    assert liver.sum() > 10_000
    assert 40 <= float(torch.median(volume[0][liver])) <= 160
    assert torch.nonzero(liver)[:, 1].float().mean() < 256  # patient's right, on the image's left


def test_real_nifti_loads_with_its_affine(real_data, loader):
    volume = loader(real_data / "totalseg_example" / "ct_3mm.nii.gz")
    assert volume.shape == (1, 122, 101, 30) and volume.dtype == torch.float32
    assert np.allclose(np.diag(volume.affine.numpy())[:3], [3, 3, 3])


def test_generated_dicom_series_equals_its_nifti(small_case, tmp_path, loader):
    nib.save(small_case.stored_image(small_case.hu), tmp_path / "volume-0.nii.gz")
    write_ct_series(small_case, tmp_path / "series")
    (tmp_path / "series" / "README.txt").write_text("not a DICOM file")  # ignored
    from_dicom, from_nifti = to_canonical(loader(tmp_path / "series")), to_canonical(loader(tmp_path / "volume-0.nii.gz"))
    assert torch.equal(from_dicom, from_nifti)
    assert torch.allclose(from_dicom.affine, from_nifti.affine, atol=1e-3)


def test_dictionary_loader(small_case, tmp_path):
    nib.save(small_case.stored_image(small_case.label), tmp_path / "seg.nii.gz")
    out = LoadScand(keys="label")({"label": tmp_path / "seg.nii.gz"})
    assert out["label"].shape[1:] == small_case.label.shape


# -- errors: one clear message naming the file and the problem -------------------------------------------------
def _nifti(tmp_path, array, name="x.nii.gz", affine=None):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def test_non_ct_dicom_is_refused(small_case, tmp_path, loader):
    write_ct_series(small_case, tmp_path / "mr", modality="MR")
    with pytest.raises(InvalidScanError, match=r"mr: DICOM modality is MR, expected CT"):
        loader(tmp_path / "mr")


def test_folder_without_dicom_and_with_two_series_are_refused(small_case, tmp_path, loader):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidScanError, match="no DICOM image files"):
        loader(tmp_path / "empty")
    import dataclasses
    write_ct_series(small_case, tmp_path / "a")
    write_ct_series(dataclasses.replace(small_case, index=9), tmp_path / "b")
    (tmp_path / "b" / "IM0001.dcm").rename(tmp_path / "a" / "other.dcm")
    with pytest.raises(InvalidScanError, match="holds 2 DICOM series"):
        loader(tmp_path / "a")


def test_2d_and_4d_images_are_refused(tmp_path, loader):
    with pytest.raises(InvalidScanError, match=r"2d.nii.gz: expected a 3D volume.*got a 2D image"):
        loader(_nifti(tmp_path, np.zeros((8, 8), np.int16), "2d.nii.gz"))
    with pytest.raises(InvalidScanError, match=r"4d.nii.gz: expected a 3D volume.*got a 4D image"):
        loader(_nifti(tmp_path, np.zeros((8, 8, 4, 2), np.int16), "4d.nii.gz"))


def test_nan_voxels_are_refused(tmp_path, loader):
    array = np.zeros((8, 8, 4), np.float32)
    array[2, 3, 1] = np.nan
    with pytest.raises(InvalidScanError, match=r"nan.nii.gz: 1 voxel\(s\) are NaN"):
        loader(_nifti(tmp_path, array, "nan.nii.gz"))


def test_truncated_and_unknown_files_are_refused(tmp_path, loader):
    good = _nifti(tmp_path, np.zeros((16, 16, 8), np.int16), "good.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(InvalidScanError, match=r"truncated.nii.gz: cannot be read"):
        loader(truncated)
    not_gzip = tmp_path / "plain.nii.gz"
    not_gzip.write_bytes(b"hello")
    with pytest.raises(InvalidScanError, match=r"plain.nii.gz: cannot be read"):
        loader(not_gzip)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InvalidScanError, match=r"notes.txt: not a scan"):
        loader(tmp_path / "notes.txt")
    with pytest.raises(InvalidScanError, match=r"missing.nii.gz: no such file"):
        loader(tmp_path / "missing.nii.gz")


def test_label_grid_and_values_are_checked(tmp_path, loader):
    image = loader(_nifti(tmp_path, np.zeros((16, 16, 8), np.int16), "volume-1.nii.gz"))
    validate = ValidateScand(keys="image", label_key="label")

    good = loader(_nifti(tmp_path, np.ones((16, 16, 8), np.uint8), "segmentation-1.nii.gz"))
    assert validate({"image": image, "label": good})["label"] is good

    wrong_shape = loader(_nifti(tmp_path, np.zeros((16, 16, 7), np.uint8), "seg-shape.nii.gz"))
    with pytest.raises(InvalidScanError, match=r"seg-shape.nii.gz: label grid \(16, 16, 7\) does not match.*\(16, 16, 8\)"):
        validate({"image": image, "label": wrong_shape})

    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    wrong_place = loader(_nifti(tmp_path, np.zeros((16, 16, 8), np.uint8), "seg-place.nii.gz", shifted))
    with pytest.raises(InvalidScanError, match=r"seg-place.nii.gz: label affine differs.*by up to 2 mm"):
        validate({"image": image, "label": wrong_place})

    values = np.zeros((16, 16, 8), np.uint8)
    values[0, 0, 0] = 5
    wrong_values = loader(_nifti(tmp_path, values, "seg-values.nii.gz"))
    with pytest.raises(InvalidScanError, match=r"seg-values.nii.gz: label values must be LiTS labels.*got also 5"):
        validate({"image": image, "label": wrong_values})


def test_an_unreadable_file_is_one_line_with_the_readers_reason(tmp_path):
    broken = tmp_path / "volume-9.nii.gz"
    broken.write_bytes(b"not a scan")
    with pytest.raises(InvalidScanError) as error:
        LoadScan()(broken)
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"{broken}: cannot be read") and "not a gzip" in message.lower()


@pytest.mark.parametrize("fault, message", [
    ("nan affine", r"NaN or infinite"),
    ("zero spacing", r"zero \(or negative\) axis"),
    ("sheared", r"sheared"),
    ("truncated .nii", r"cannot be read \(truncated: the header describes"),
    ("too many voxels", r"more than the"),
])
def test_nifti_headers_that_cannot_be_used_are_refused_before_reading(tmp_path, loader, fault, message):
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    data = np.zeros((8, 8, 4), np.int16)
    name = "scan.nii" if fault == "truncated .nii" else "scan.nii.gz"
    if fault == "nan affine":
        affine[0, 3] = np.nan
    elif fault == "sheared":
        affine[0, 1] = 0.4
    image = nib.Nifti1Image(data, affine)
    if fault == "zero spacing":  # no sform or qform: the geometry comes from pixdim, one of them 0
        image = nib.Nifti1Image(data, None)
        image.header.set_sform(None, code=0)
        image.header.set_qform(None, code=0)
        image.header["pixdim"][1:4] = [0.8, 0.8, 0.0]
    nib.save(image, tmp_path / name)
    if fault == "truncated .nii":
        full = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(full[:-100])
    if fault == "too many voxels":
        header = nib.load(tmp_path / name).header
        header.set_data_shape((4096, 4096, 128))  # 2**31 voxels, described in 352 bytes
        nib.save(nib.Nifti1Image(np.zeros((1, 1, 1), np.int16), affine, header), tmp_path / "big.nii.gz")
        raw = bytearray((tmp_path / "big.nii.gz").read_bytes())
        import gzip

        body = bytearray(gzip.decompress(bytes(raw)))
        body[40:56] = np.array([3, 4096, 4096, 128, 1, 1, 1, 1], np.int16).tobytes()
        (tmp_path / name).write_bytes(gzip.compress(bytes(body)))
    with pytest.raises(InvalidScanError, match=message) as error:
        loader(tmp_path / name)
    assert str(error.value).startswith(str(tmp_path / name)) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["two.nii", "two.nii.gz"])
def test_nifti_2_files_pass_the_header_checks(tmp_path, name):
    nib.save(nib.Nifti2Image(np.arange(256, dtype=np.int16).reshape(8, 8, 4), np.diag([0.7, 0.7, 2.0, 1.0])),
             tmp_path / name)
    img = LoadScan(modality=None)(tmp_path / name)
    assert tuple(img.shape) == (1, 8, 8, 4) and float(img.max()) == 255.0


@pytest.mark.parametrize("name, header", [("one.nii.gz", nib.Nifti1Image), ("two.nii.gz", nib.Nifti2Image),
                                          ("plain.nii", nib.Nifti1Image)])
def test_nifti_voxels_load_exactly_as_nibabel_reads_them(tmp_path, name, header):
    """NIfTI stores voxels in Fortran order and .nii.gz files are decompressed by ISA-L: the loaded volume holds
    nibabel's own values, scaled by the header's slope and intercept, in C order."""
    rng = np.random.default_rng(1)
    stored = rng.integers(-1024, 3000, (13, 11, 7)).astype(np.int16)
    image = header(stored, np.diag([0.7, 0.7, 2.0, 1.0]))
    image.header.set_slope_inter(1.0, -5.0 if "two" not in name else 0.0)
    nib.save(image, tmp_path / name)
    expected = np.asanyarray(nib.load(tmp_path / name).dataobj)
    img = LoadScan(modality=None, dtype=None)(tmp_path / name)
    assert img.is_contiguous() and tuple(img.shape) == (1, 13, 11, 7)
    assert np.array_equal(img[0].numpy(), expected)
