"""Patient-balanced sampling: each training patient's tumour slices drawn as often as another's, the epoch's length
and its tumour share unchanged, reproducible under resume."""

from collections import Counter

import pytest

from workflows.data.sampling import patient_balanced_weights
from workflows.engine.training import ResumableSampler


def _rows():
    # patient a: 1 tumour slice; patient b: 9 tumour slices; 10 slices without tumour (a's and b's)
    rows = [{"volume_id": "a", "slice_index": 0}] + [{"volume_id": "b", "slice_index": i} for i in range(9)]
    rows += [{"volume_id": "a" if i % 2 else "b", "slice_index": 100 + i} for i in range(10)]
    return rows, [True] * 10 + [False] * 10


def test_each_patients_tumour_slices_weigh_the_same_and_the_tumour_share_is_kept():
    rows, tumour = _rows()
    weights = patient_balanced_weights(rows, tumour)
    assert weights[0] == pytest.approx(5.0) and weights[1:10] == [pytest.approx(5 / 9)] * 9
    assert weights[10:] == [1.0] * 10
    assert sum(weights[:10]) == pytest.approx(10)  # the tumour slices keep their share of the epoch


def test_rows_and_flags_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="3 rows but 2 tumour flags"):
        patient_balanced_weights([{"volume_id": "a"}] * 3, [True, False])


def test_the_weighted_sampler_draws_patients_evenly_and_resumes_with_the_same_order():
    rows, tumour = _rows()
    sampler = ResumableSampler(rows, seed=1, weights=lambda data: patient_balanced_weights(data, tumour))
    drawn = Counter()
    for epoch in range(300):
        sampler.set_epoch(chunk=0, epoch=epoch)
        order = list(sampler)
        assert len(order) == len(rows)
        drawn.update(order)
    a, b = drawn[0], sum(drawn[i] for i in range(1, 10))
    assert 0.8 < a / b < 1.25  # unweighted, a's one slice would be drawn 9x less than b's nine
    assert 0.4 < sum(drawn[i] for i in range(10)) / 6000 < 0.6  # half of the draws are tumour slices, as before
    sampler.set_epoch(chunk=0, epoch=7)
    full = list(sampler)
    sampler.skip_next(5)
    assert list(sampler) == full[5:] and list(sampler) == full
