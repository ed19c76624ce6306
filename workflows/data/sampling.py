"""Patient-balanced sampling of tumour slices: every training patient's tumour slices drawn as often, together, as
any other patient's.

A mixed training set is lopsided by patient: on the real-data recipe two HCC patients bring 3 tumour slices each
and the 2D set's patients 40-60 each, so an epoch shows the network an HCC lesion 6 times against 341 others. With
these weights the tumour slices of each patient carry the same share of an epoch; the slices without tumour keep
weight 1, and the tumour slices together keep the share they had (the epoch's length and its tumour / no-tumour
balance do not change, only which patients' lesions fill it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

__all__ = ["patient_balanced_weights"]


def patient_balanced_weights(rows: Sequence[dict], with_tumour: Sequence[bool]) -> list[float]:
    """Sampling weights for ``rows`` (each with a ``volume_id``): 1 for a slice without tumour; for a tumour slice
    of patient ``v`` with ``n_v`` tumour slices, ``T / (P * n_v)`` (``T`` tumour slices of ``P`` patients in all),
    so each patient's tumour slices sum to ``T / P`` and all of them to ``T``.

    Example: patients a (1 tumour slice) and b (3), one slice without tumour: weights 2.0 for a's, 0.667 for each of
    b's, 1.0 for the last; a's slice is drawn 3x as often as each of b's and a and b share the tumour draws evenly.
    """
    if len(rows) != len(with_tumour):
        raise ValueError(f"patient_balanced_weights: {len(rows)} rows but {len(with_tumour)} tumour flags.")
    per_patient = Counter(str(row["volume_id"]) for row, tumour in zip(rows, with_tumour) if tumour)
    total = sum(per_patient.values())
    return [total / (len(per_patient) * per_patient[str(row["volume_id"])]) if tumour else 1.0
            for row, tumour in zip(rows, with_tumour)]
