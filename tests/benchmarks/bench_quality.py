"""Where the low-confidence flag sits: a trained model's mean liver probability on the real samples, beside its
liver Dice (a script that prints figures, not a test).

``python -m tests.benchmarks.bench_quality --model realdata/models/model.pt [--data ../shared/data/real]``

Segments every real volume with a liver label through the bundle's inference workflow (the HCC DICOM series with
their SEG, the dcmqi series with its SEG, the TotalSegmentator NIfTI example with its label 5) and prints, per scan,
the liver Dice against the label, the mean liver probability inside the predicted liver and the flags the
summary carries; then the confidence of the well-segmented livers (Dice >= 0.85) against the others, which is
what :data:`workflows.inference.quality.LOW_CONFIDENCE` is set from.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

SCANS = [  # (scan, its liver label: a NIfTI with the liver as `value`, or None for the DICOM SEG beside the series)
    ("hcc_tace_2144/31_EQP_Ax5.00mm", None, None),
    ("hcc_tace_0697/31_EQP_Ax5.00mm", None, None),
    ("hcc_tace_2022/11_AP_Ax5.00mm", None, None),
    ("dcmqi_ct3/ct", None, None),
    ("totalseg_example/ct_3mm.nii.gz", "totalseg_example/seg_3mm.nii.gz", 5),
]


def _truth(data: Path, scan: str, label: str | None, value: int | None) -> np.ndarray:
    """The liver label on the grid the prediction was written on (the scan as ``LoadScan`` reads it)."""
    from transforms import LoadScan, liver_mask
    from transforms.loading import LoadLabeld
    from workflows.data.discovery import seg_labels_of

    path = data / scan
    image = LoadScan()(path)
    if label is None:
        segs = [str(p) for p in seg_labels_of(path)]
        truth = LoadLabeld("label")({"image": image, "label": segs})["label"][0].numpy()
    else:
        truth = LoadScan(modality=None, dtype=None)(data / label)[0].numpy()
        truth = (truth == value).astype(np.uint8)
    return liver_mask(truth)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained model.pt (the real-data recipe's)")
    parser.add_argument("--data", default="../shared/data/real", help="the real samples (../shared/data/real)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    from transforms import liver_mask
    from workflows.bundle import run_workflow

    data = Path(args.data)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as out:
        for scan, label, value in SCANS:
            if not (data / scan).exists():
                print(f"{scan}: not found, skipped")
                continue
            target = Path(out) / scan.replace("/", "_")
            row = run_workflow("inference", ["inference"], "infer", input=str(data / scan), output_dir=str(target),
                               ckpt_file=args.model, threads=args.threads)[0][0]
            predicted = liver_mask(np.asarray(nib.load(row["segmentation"]).dataobj))
            truth = _truth(data, scan, label, value)
            dice = 2 * np.count_nonzero(predicted & truth) / max(1, np.count_nonzero(predicted) + np.count_nonzero(truth))
            rows.append({"scan": scan, "liver_dice": round(float(dice), 3), "confidence": row.get("liver_confidence"),
                         "parts_ml": row.get("liver_parts_ml"),
                         "flags": row.get("flags", "")})
            print(json.dumps(rows[-1]))
    good = [r["confidence"] for r in rows if r["liver_dice"] >= 0.85 and r["confidence"] is not None]
    poor = [r["confidence"] for r in rows if r["liver_dice"] < 0.85 and r["confidence"] is not None]
    print(f"confidence of livers with Dice >= 0.85: {good}; of the others: {poor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
