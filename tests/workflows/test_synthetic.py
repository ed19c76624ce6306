import hashlib
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage
import torch

from transforms import LoadScan, axial_axis, to_canonical
from workflows.synthetic import main
from workflows.data.synthetic_cases import SLICE_THICKNESSES_MM, STORED_ORIENTATIONS, generate_case, generate_dataset

REPO = Path(__file__).resolve().parents[2]


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_command_line_same_seed_same_bytes(tmp_path):
    for run in ("a", "b"):
        subprocess.run([sys.executable, "-m", "workflows.synthetic", "--out", str(tmp_path / run), "--cases", "3",
                        "--seed", "1", "--size", "32", "--slices", "6", "--dicom"], cwd=REPO, check=True,
                       capture_output=True)
    first, second = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert first == second
    assert {"volume-0.nii.gz", "segmentation-2.nii.gz", "dicom/volume-1/IM0001.dcm", "dicom/segmentation-1.nii.gz"} <= set(first)
    assert len([n for n in first if n.startswith("dicom/volume-0/")]) == 6


def test_other_seed_other_data(tmp_path):
    a, b = generate_case(0, seed=1, size=32, slices=6), generate_case(0, seed=2, size=32, slices=6)
    assert not np.array_equal(a.hu, b.hu)


def test_command_line_refuses_bad_sizes(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--size", "30"])
    assert exit_info.value.code == 2 and "--size 30" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_files_are_lits_like_and_stored_in_several_orientations(tmp_path):
    generate_dataset(tmp_path, cases=4, seed=3, size=32, slices=8, progress=False)
    codes = []
    for i in range(4):
        volume, segmentation = nib.load(tmp_path / f"volume-{i}.nii.gz"), nib.load(tmp_path / f"segmentation-{i}.nii.gz")
        assert volume.get_data_dtype() == np.int16 and segmentation.get_data_dtype() == np.uint8
        assert np.allclose(volume.affine, segmentation.affine)
        assert set(np.unique(np.asarray(segmentation.dataobj))) <= {0, 1, 2}
        codes.append("".join(nib.aff2axcodes(volume.affine)))
    assert codes == list(STORED_ORIENTATIONS[:4])
    assert len({axial_axis(nib.load(tmp_path / f"volume-{i}.nii.gz").affine) for i in range(4)}) == 2


def test_geometry_ranges():
    full = generate_case(0, seed=4, size=512, slices=1)
    assert 0.6 <= full.spacing[0] <= 1.0 and full.spacing[0] == full.spacing[1]
    thicknesses = {generate_case(i, seed=4, size=16).spacing[2] for i in range(8)}
    assert thicknesses <= set(SLICE_THICKNESSES_MM) and len(thicknesses) > 1


@pytest.fixture(scope="module")
def cases():
    return [generate_case(i, seed=7, size=96, slices=24) for i in range(6)]


def test_tissues_have_ct_values(cases):
    case = cases[0]
    hu, label = case.hu, case.label
    assert abs(np.median(hu[:4, :4, :]) + 1000) < 30  # air in the corners
    assert np.isclose(np.median(hu[(hu > -200) & (hu < -50)]), -100, atol=25)  # fat
    liver = hu[ndimage.binary_erosion(label == 1, iterations=2)]  # away from partial-volume edges
    assert 50 <= liver.mean() <= 80 and 5 < liver.std() < 20  # liver with noise
    assert (hu > 700).sum() > 100  # spine and ribs


def test_lesions_are_inside_the_liver_of_several_kinds_and_sizes(cases):
    with_tumour = [c for c in cases if (c.label == 2).any()]
    without = [c for c in cases if not (c.label == 2).any()]
    assert without and len(with_tumour) >= 3  # some cases have no tumour
    lesions = [lesion for c in with_tumour for lesion in c.lesions]
    assert any(l.hu_offset < 0 for l in lesions) and any(l.hu_offset > 0 for l in lesions)
    radii = [float(np.mean(l.radii)) for l in lesions]
    assert min(radii) < 8 and max(radii) > 12
    for case in with_tumour:
        tumour, liver_mean = case.label == 2, case.hu[case.label == 1].mean()
        # each tumour voxel lies inside the liver's extent and differs from liver on average
        assert tumour.sum() > 0
        assert abs(case.hu[tumour].mean() - liver_mean) > 15 or len(case.lesions) > 1


def test_the_liver_has_slices_above_and_below_it(cases):
    for case in cases:
        per_slice = (case.label >= 1).any(axis=(0, 1))
        assert per_slice.any() and not per_slice.all()


def test_dicom_series_has_ct_tags_and_the_nifti_geometry(tmp_path):
    generate_dataset(tmp_path, cases=4, seed=2, size=32, slices=5, dicom=True, progress=False)
    loader = LoadScan()
    for i in (0, 3):  # LPS, and axial-first ILP
        series = sorted((tmp_path / "dicom" / f"volume-{i}").glob("*.dcm"))
        header = pydicom.dcmread(series[0])
        assert header.Modality == "CT" and header.RescaleType == "HU"
        assert float(header.RescaleIntercept) == -1024 and float(header.RescaleSlope) == 1
        assert header.SOPClassUID == pydicom.uid.CTImageStorage
        assert [float(v) for v in header.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        from_dicom = to_canonical(loader(tmp_path / "dicom" / f"volume-{i}"))
        from_nifti = to_canonical(loader(tmp_path / f"volume-{i}.nii.gz"))
        assert torch.equal(from_dicom, from_nifti)
        assert torch.allclose(from_dicom.affine, from_nifti.affine, atol=1e-3)
