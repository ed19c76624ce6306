import math

import numpy as np
import pytest

from workflows.engine.volume_metrics import case_metrics, lesion_detection, overlap_metrics, surface_metrics

SPACING = (0.8, 0.8, 2.0)


def _box(shape=(40, 40, 20), lo=(10, 10, 5), hi=(30, 30, 15)):
    mask = np.zeros(shape, bool)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return mask


def test_perfect_prediction():
    truth = _box()
    m = {**overlap_metrics(truth, truth), **surface_metrics(truth, truth, SPACING)}
    assert (m["dice"], m["voe"], m["rvd"], m["assd_mm"], m["hd95_mm"]) == (1.0, 0.0, 0.0, 0.0, 0.0)


def test_empty_prediction_and_empty_truth():
    truth = _box()
    missed = {**overlap_metrics(np.zeros_like(truth), truth), **surface_metrics(np.zeros_like(truth), truth, SPACING)}
    assert missed["dice"] == 0.0 and missed["voe"] == 1.0 and missed["rvd"] == -1.0
    assert math.isnan(missed["assd_mm"]) and math.isnan(missed["hd95_mm"])
    both_empty = overlap_metrics(np.zeros_like(truth), np.zeros_like(truth))
    assert both_empty["dice"] == 1.0 and both_empty["voe"] == 0.0
    false_alarm = overlap_metrics(truth, np.zeros_like(truth))
    assert false_alarm["dice"] == 0.0 and math.isnan(false_alarm["rvd"])


@pytest.mark.parametrize("k", [1, 3])
def test_box_shifted_by_k_voxels(k):
    truth = _box()
    pred = np.roll(truth, k, axis=0)  # 20 voxels long along axis 0, shifted by k
    m = {**overlap_metrics(pred, truth), **surface_metrics(pred, truth, SPACING)}
    assert m["dice"] == pytest.approx((20 - k) / 20)
    assert m["voe"] == pytest.approx(1 - (20 - k) / (20 + k))
    assert m["rvd"] == 0.0
    assert m["hd95_mm"] == pytest.approx(k * SPACING[0])  # the shifted faces are k voxels apart
    assert 0 < m["assd_mm"] < k * SPACING[0]  # most surface points of the side faces coincide


def test_one_lesion_split_in_two_is_not_found():
    truth = _box()
    pred = truth.copy()
    pred[19:21] = False  # a 2-voxel gap cuts the prediction into two halves of 9/20 each
    d = lesion_detection(pred, truth)
    assert d == {"true_lesions": 1, "pred_lesions": 2, "found": 0, "matched_pred": 0}
    whole = lesion_detection(truth, truth)
    assert whole == {"true_lesions": 1, "pred_lesions": 1, "found": 1, "matched_pred": 1}


def test_lesions_found_counts_and_false_positives():
    truth = _box(lo=(2, 2, 2), hi=(8, 8, 8)) | _box(lo=(20, 20, 10), hi=(30, 30, 18))
    pred = _box(lo=(2, 2, 2), hi=(8, 8, 7)) | _box(lo=(34, 34, 2), hi=(37, 37, 4))  # first found, one false
    d = lesion_detection(pred, truth)
    assert d == {"true_lesions": 2, "pred_lesions": 2, "found": 1, "matched_pred": 1}


def test_case_metrics_on_lits_labels():
    truth = _box().astype(np.uint8)
    truth[_box(lo=(15, 15, 8), hi=(20, 20, 12))] = 2
    pred = truth.copy()
    pred[pred == 2] = 1  # the tumour missed, the liver perfect
    m = case_metrics(pred, truth, SPACING)
    assert m["liver"]["dice"] == 1.0 and m["tumour"]["dice"] == 0.0
    assert m["lesions"]["true_lesions"] == 1 and m["lesions"]["found"] == 0
    assert m["tumour_burden"]["true"] == pytest.approx(100 / 4000) and m["tumour_burden"]["error"] == pytest.approx(-100 / 4000)
    with pytest.raises(ValueError, match="same grid"):
        case_metrics(pred[:, :, :5], truth, SPACING)
