
import pytest

from workflows.data.conversion import convert
from workflows.data.synthetic_cases import generate_case, generate_dataset, write_case


def make_raw_set(folder, cases=6, seed=11, size=32, slices=10, dicom_case=5):
    """``cases`` generated LiTS pairs in mixed orientations, case ``dicom_case`` as a DICOM series
    (``dicom/volume-<i>/`` with ``dicom/segmentation-<i>.nii.gz`` beside it) instead of NIfTI."""
    generate_dataset(folder, cases=cases, seed=seed, size=size, slices=slices, progress=False)
    if dicom_case is not None:
        write_case(generate_case(dicom_case, seed, size, slices), folder, dicom=True)
        (folder / f"volume-{dicom_case}.nii.gz").unlink()
        (folder / f"segmentation-{dicom_case}.nii.gz").unlink()
    return folder


@pytest.fixture(scope="session")
def raw_set(tmp_path_factory):
    return make_raw_set(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="session")
def slice_set(raw_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("slices")
    summary = convert(raw_set, out, progress=False)
    assert not summary.failed
    return out
