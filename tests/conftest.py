"""Shared fixtures: small generated cases and the real samples in ../shared/data/real (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflows.data.synthetic_cases import generate_case

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real CT samples not found at {REAL_DATA} (they live beside the repository, not in it)")
    return REAL_DATA


@pytest.fixture(scope="session")
def small_case():
    """Case 0 of seed 5: 48 x 48 pixels, 24 slices, with tumour; canonical arrays plus affine."""
    return generate_case(0, seed=5, size=48, slices=24)
