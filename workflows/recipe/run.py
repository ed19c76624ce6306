"""What the recipe trains, holds out and scores, and what its steps hand on to each other."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["OTHER_SCANS", "RECIPE", "RecipeRun", "scores_folder", "shown"]


#: What the recipe trains and holds out. The test list holds a DICOM HCC patient with a real tumour (~4,000 voxels)
#: and a 2D patient; ``original_rgb`` is case 0 of ``liver_png_2d`` as published (512 RGB): one patient.
RECIPE = {
    "test": ["hcc_tace_2144_31_EQP_Ax5.00mm", "liver_png_2d-7"],
    "val": ["liver_png_2d-6"],
    "groups": {"original_rgb": "liver_png_2d-0", "liver_png_2d-0": "liver_png_2d-0"},
    "overrides": {
        "context": 1,
        "spatial_size": 256,
        "network_def#channels": [16, 32, 64, 128],
        "batch_size": 4,
        "learning_rate": 0.001,
        "lr_scheduler#gamma": 0.92,
        "checkpoint_every": 50,
        "augment": True,
        # bf16 where the CPU has it natively (fp32 elsewhere): 1.56x faster here, tumour Dice within two seeds' spread
        "precision": "auto",
    },
    "max_epochs": 40,
    # the chance a training sample gets lesions synthesised in its liver (transforms.lesion_synthesis): on HCC 2144 and
    # crlm_1100 together, mean tumour Dice 0.325 against 0.218 with real lesions only (2 seeds, Intel Xeon AMX), at
    # three times the false lesions (benchmarks page)
    "synthetic": 0.5,
    # sources that label the liver only (CHAOS, dcmqi's slices): "train" (synthetic lesions put in; the tumour of a
    # healthy source below a known 0, of the others unknown) or "leave-out". Trained so, 2 seeds (Intel Xeon AMX): tumour
    # Dice on HCC 2144 + crlm_1100 0.427 against 0.333 left out, the liver of case 7, crlm_1100 and TotalSegmentator's
    # example higher, fewer false lesions (benchmarks page)
    "liver_only_sources": "train",
    # liver-only sources whose livers hold no tumour by design, trained (with --liver-only-sources train) as tumour-free:
    # a known 0 in the tumour channel, a synthetic lesion a known 1 (the set-up of Hu et al., CVPR 2023)
    "healthy_sources": {"chaos_ct_p1": "CHAOS CT: potential liver donors, livers without tumours or lesions (Kavur et "
                                       "al., Medical Image Analysis 69, 2021)"},
    # the tumour stage: the same network on crops around the liver, jittered (shift and scale) in training
    "tumour_stage": {"stage": "liver_crop", "crop_margin_mm": 15.0},
    # the tumour stage's crops resized to 192 pixels a side (the whole slices stay at 256): over 4 seeds (Intel Xeon
    # AMX, --epochs 6) tumour Dice on HCC 2144 + crlm_1100 0.435 against 0.315 at 256 and 0.346 at 128 (HCC 2144
    # 0.543 / 0.371 / 0.510, crlm_1100 0.327 / 0.259 / 0.182), case 7 0.683 / 0.436 / 0.641, fewer false lesions,
    # 60% of the tumour stage's CPU at 256 (benchmarks page)
    "tumour_size": 192,
    # the tumour stage trains this many times the whole-slice stage's epochs (--tumour-epochs sets its own; at 192 a
    # tumour epoch costs 0.57 of a whole-slice one): over 4 seeds (Intel Xeon AMX, --epochs 6: 12 against 6) tumour
    # Dice on HCC 2144 + crlm_1100 0.518 against 0.435, their lesions found 2 and 2 of 4 against 0 and 1, case 7 0.602
    # against 0.683, false lesions on the tumour-free scan 2.5 against 1.75; a tumour stage that learned no tumour at 6
    # epochs (one seed of five) did at 12 (benchmarks page)
    "tumour_epochs_factor": 2,
    # a tumour stage whose validation tumour Dice ends under this learned almost no tumour and is said so (0.43-0.62
    # over 13 runs at 128-256 pixels; 0.059 once, one seed of five at 6 epochs, which 12 epochs trained to 0.52)
    "least_tumour_val_dice": 0.2,
}


#: scans from collections the recipe never trains on, segmented and scored after training: ``name: (scan, label,
#: label map to LiTS or None, what it is)``, paths under ``--data``
OTHER_SCANS = {
    "crlm_1100": ("crlm_1100/ct.nii.gz", "crlm_1100/label.nii.gz", None,
                  "another collection (colorectal metastasis, portal venous), never trained on"),
    "totalseg_example": ("totalseg_example/ct_3mm.nii.gz", "totalseg_example/seg_3mm.nii.gz", {5: 1},
                         "no tumour labelled (its liver label is a model's): predicted lesions count as false"),
}


@dataclass
class RecipeRun:
    """What the recipe's steps hand on: the run's folder, its settings and what each step found or made."""

    args: argparse.Namespace
    out: Path
    threads: int = 0
    started: float = field(default_factory=time.time)
    cpu_started: float = field(default_factory=time.process_time)
    sources: list = field(default_factory=list)
    notes_by_folder: dict = field(default_factory=dict)
    kept: list = field(default_factory=list)
    liver_only: set = field(default_factory=set)
    healthy: set = field(default_factory=set)
    left_out: dict = field(default_factory=dict)
    grey_scaled: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    plan: object = None
    settings: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    model: Path | None = None
    member_models: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def scored(self) -> Path:
        """Where the held-out scans are segmented and scored: for several networks, beside the first one's scores."""
        return scores_folder(self.out, len(self.member_models))


def scores_folder(base: Path, networks: int) -> Path:
    """Where a model of ``networks`` networks is scored: ``base`` for one, ``base/ensemble_<N>`` for several, so a
    rerun with more networks never meets the masks of the model before (which inference refuses to replace)."""
    return base / f"ensemble_{networks}" if networks > 1 else base


def shown(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
