"""The smallest tumour inference keeps (``min_tumour_mm3``), measured on finished recipe runs: each run's saved masks
of its held-out and unseen scans cleaned again with the bundle's own clean-up (:class:`transforms.TumourInLiver`) at
a few sizes, and scored as the recipe scores them (a script that prints figures, not a test).

``python -m tests.benchmarks.bench_min_lesion --runs DIR [DIR ...] [--sizes 10 500 1000]``

Each DIR is a finished ``python -m workflows.realdata`` output (``summary.json`` records each scan's truth). Prints
one row per run and scan: tumour Dice, lesions found at IoU > 0.5 and false lesions at each size, then the means over
the runs per scan. The masks were cleaned at inference with the size the run used (10 mm³ before this benchmark), so
sizes below it change nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from transforms import TumourInLiver
from workflows.engine.volume_evaluation import evaluate_volumes, held_out_scores


def rescored(segmentation: Path, truth: Path, min_tumour_mm3: float, work: Path) -> dict:
    """``segmentation`` cleaned again at ``min_tumour_mm3`` and scored against ``truth``."""
    image = nib.load(segmentation)
    label = MetaTensor(torch.as_tensor(np.asarray(image.dataobj).astype(np.uint8))[None],
                       affine=torch.as_tensor(image.affine))
    cleaned = TumourInLiver(min_tumour_mm3)(label)[0].numpy().astype(np.uint8)
    path = work / segmentation.name
    nib.save(nib.Nifti1Image(cleaned, image.affine, image.header), path)
    return held_out_scores(evaluate_volumes(path, truth, work / "scored", progress=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_min_lesion", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="finished recipe output folders")
    parser.add_argument("--sizes", nargs="+", type=float, default=[10.0, 500.0, 1000.0], help="mm³ (10 500 1000)")
    args = parser.parse_args(argv)
    table: dict[str, dict[float, list[dict]]] = {}
    for run in map(Path, args.runs):
        summary = json.loads((run / "summary.json").read_text())
        for name, scores in {**summary["held_out"], **summary.get("other_collections", {})}.items():
            if "truth" not in scores:
                raise SystemExit(f"{run / 'summary.json'}: no truth recorded for {name} (a run from before this "
                                 "benchmark); rerun the recipe into a fresh folder.")
            folder = run / ("held_out" if name in summary["held_out"] else "other_collections") / name
            segmentation = next(folder.glob("*_seg.nii.gz"))
            cells = []
            for size in args.sizes:
                with tempfile.TemporaryDirectory() as work:
                    s = rescored(segmentation, Path(scores["truth"]), size, Path(work))
                table.setdefault(name, {}).setdefault(size, []).append(s)
                cells.append(f"{size:g} mm³: tumour {s['tumour_dice']:.3f}, found {s['lesions_found']} of "
                             f"{s['lesions_true']}, {s['false_lesions']} false")
            print(f"{run.name} {name}: " + " | ".join(cells), flush=True)
    print(f"\nmean of {len(args.runs)} run(s)")
    for name, by_size in table.items():
        print(f"{name}: " + " | ".join(
            f"{size:g} mm³: tumour {np.mean([s['tumour_dice'] for s in rows]):.3f}, found "
            f"{sum(s['lesions_found'] for s in rows)} of {sum(s['lesions_true'] for s in rows)}, "
            f"{np.mean([s['false_lesions'] for s in rows]):.1f} false" for size, rows in by_size.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
