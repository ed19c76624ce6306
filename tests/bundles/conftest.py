"""Tiny lists for bundle tests: generated volumes, converted and split into small chunks."""

from pathlib import Path

import pytest

from workflows.data.conversion import convert
from workflows.data.slice_set import read_manifest
from workflows.data.splitting import plan_split, write_split
from workflows.data.synthetic_cases import generate_dataset

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "liver_tumor_ct_segmentation"
TRAIN = str(BUNDLE / "configs" / "train.json")
EVALUATE = str(BUNDLE / "configs" / "evaluate.json")
TINY = {"spatial_size": 32, "network_def#channels": [4, 8, 16, 32], "epochs_per_chunk": 1, "progress": False}


def make_lists(root: Path, target: str = "liver", chunk_size: int = 8, positives: int = 12, negatives: int = 12,
               seed: int = 0, test_fraction: float = 0.0, val_fraction: float = 0.2, liver_only: set | None = None) -> Path:
    generate_dataset(root / "raw", cases=5, seed=21, size=32, slices=12, progress=False)
    convert(root / "raw", root / "slices", progress=False)
    plan = plan_split(read_manifest(root / "slices"), target=target, positives=positives, negatives=negatives,
                      chunk_size=chunk_size, val_fraction=val_fraction, seed=seed, val_balanced=8,
                      test_fraction=test_fraction, liver_only=liver_only)
    write_split(plan, root / "lists", root / "slices")
    return root / "lists"


@pytest.fixture(scope="session")
def lists(tmp_path_factory) -> Path:
    return make_lists(tmp_path_factory.mktemp("bundle_data"))
