import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor

from transforms import LoadScan, to_canonical
from workflows.inference.dicom_seg import read_dicom_seg, write_dicom_seg
from workflows.data.synthetic_cases import generate_case
from workflows.data.synthetic_dicom import write_ct_series


def test_real_seg_from_another_tool_lands_on_the_liver(real_data):
    ct = LoadScan()(real_data / "dcmqi_ct3" / "ct")
    label = read_dicom_seg(real_data / "dcmqi_ct3" / "liver_seg.dcm", ct.affine, tuple(ct.shape[1:]))
    liver = label == 1
    assert liver.sum(axis=(0, 1)).min() > 10_000  # liver on all 3 frames
    assert 20 <= float(np.median(ct[0].numpy()[liver])) <= 160  # soft tissue, not air or bone
    canonical = to_canonical(MetaTensor(torch.as_tensor(label)[None].float(), affine=ct.affine))
    assert torch.nonzero(canonical[0])[:, 1].float().mean() < 256  # the patient's right, the image's left


def test_our_seg_round_trips_onto_the_right_frames_of_a_real_series(real_data, tmp_path):
    series = real_data / "dcmqi_ct3" / "ct"
    ct = LoadScan()(series)
    label = np.zeros(ct.shape[1:], np.uint8)
    label[100:300, 150:350, 0] = 1  # different masks on different frames, so a frame mix-up shows
    label[120:200, 160:260, 2] = 1
    label[140:160, 170:190, 2] = 2
    path = write_dicom_seg(label, ct.affine, series, tmp_path / "seg.dcm", target="both")
    assert np.array_equal(read_dicom_seg(path, ct.affine, tuple(ct.shape[1:])), label)
    seg = pydicom.dcmread(path)
    source = pydicom.dcmread(series / "01.dcm")
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Liver", "Liver tumour"]


def test_generated_series_seg_matches_the_label(tmp_path):
    case = generate_case(2, seed=3, size=32, slices=6)
    write_ct_series(case, tmp_path / "series")
    ct = LoadScan()(tmp_path / "series")
    # the label on the series' loaded grid: canonical label reoriented like the loaded series
    from monai.transforms import Orientation
    import nibabel as nib

    from transforms.slicing import RAS_LABELS

    codes = "".join(nib.aff2axcodes(ct.affine.numpy()))
    label = Orientation(axcodes=codes, labels=RAS_LABELS)(
        MetaTensor(torch.as_tensor(case.label)[None], affine=torch.as_tensor(case.affine)))[0].numpy()
    path = write_dicom_seg(label, ct.affine, tmp_path / "series", tmp_path / "seg.dcm")
    assert np.array_equal(read_dicom_seg(path, ct.affine, tuple(ct.shape[1:])), label)


def test_a_non_seg_file_is_refused(real_data):
    with pytest.raises(ValueError, match="not a DICOM Segmentation"):
        read_dicom_seg(real_data / "dcmqi_ct3" / "ct" / "01.dcm", np.eye(4), (512, 512, 3))
