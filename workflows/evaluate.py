"""Volume-level evaluation of predicted label maps against ground truth, as the LiTS benchmark reports it.

``python -m workflows.evaluate --pred DIR --truth DIR [--output DIR] [--slice-metrics metrics.json]``
``python -m workflows.evaluate --pred SCAN_seg.nii.gz --truth LABEL.nii.gz|SERIES_DIR [--output DIR]``

Pairs prediction and truth NIfTI files by volume id (``segmentation-<id>``, ``volume-<id>_seg`` or the same
name), or one prediction file with its truth: a NIfTI label map (``label.nii.gz``, ``segmentation-N.nii.gz``) or a
DICOM series folder whose DICOM SEG objects (beside or inside it, made by another tool) hold the truth. It checks that each pair shares its grid, and writes ``metrics.csv`` (one row per case), ``summary.json``
(per structure: mean Dice per case, global Dice, VOE, RVD, ASSD and HD95 in mm; lesion precision and recall at
IoU > 0.5; tumour burden error) and ``per_case_dice.png``. ``--slice-metrics`` puts the slice-level metrics of the
bundle's ``evaluating`` workflow (the reference's balanced Dice among them) beside the volume ones.
"""

from __future__ import annotations

import argparse
import sys

from pathlib import Path

from workflows.command_line import add_output, add_threads, interruptible, USER_ERRORS, error_line


def _fmt(entry: dict | float | None) -> str:
    value = entry.get("mean") if isinstance(entry, dict) else entry
    return "n/a" if value is None else f"{value:.4f}"


@interruptible
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pred", required=True, help="folder of predicted label maps (NIfTI, LiTS labels), or one")
    parser.add_argument("--truth", required=True, help="folder of ground-truth label maps; with one --pred file, its "
                                                       "truth: a NIfTI label map or a DICOM series folder with its SEG")
    add_output(parser, "report folder (default: PRED/evaluation)", default=None)
    parser.add_argument("--slice-metrics", help="metrics.json of the bundle's evaluating workflow, shown beside")
    add_threads(parser)
    args = parser.parse_args(argv)
    from workflows.machine.threads import set_threads
    from workflows.engine.volume_evaluation import evaluate_volumes  # after --help

    set_threads(args.threads)
    pred = Path(args.pred)
    out = args.output or str((pred.parent if pred.is_file() else pred) / "evaluation")
    try:
        summary = evaluate_volumes(args.pred, args.truth, out, args.slice_metrics)
    except USER_ERRORS as err:
        parser.exit(2, error_line(err))
    for s in ("liver", "tumour"):
        m = summary[s]
        print(f"{s}: Dice per case {_fmt(m['dice_per_case'])}, global Dice {_fmt(m['global_dice'])}, VOE "
              f"{_fmt(m['voe'])}, RVD {_fmt(m['rvd'])}, ASSD {_fmt(m['assd_mm'])} mm, HD95 {_fmt(m['hd95_mm'])} mm")
    lesions = summary["lesions"]
    print(f"lesions: {lesions['true']} true, {lesions['predicted']} predicted, recall {_fmt(lesions['recall'])}, "
          f"precision {_fmt(lesions['precision'])}; tumour burden RMSE {_fmt(summary['tumour_burden']['rmse'])}")
    print(f"report: {Path(out) / 'summary.json'}, {Path(out) / 'metrics.csv'}, {Path(out) / 'per_case_dice.png'}")
    if summary["failed"]:
        print(f"{len(summary['failed'])} case(s) failed: " + "; ".join(summary["failed"].values()))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
