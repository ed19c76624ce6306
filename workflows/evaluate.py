"""Volume-level evaluation of predicted label maps against ground truth, as the LiTS benchmark reports it.

``python -m workflows.evaluate --pred DIR --truth DIR [--out DIR] [--slice-metrics metrics.json]``

Pairs prediction and truth NIfTI files by volume id (``segmentation-<id>``, ``volume-<id>_seg`` or the same
name), checks that each pair shares its grid, and writes ``metrics.csv`` (one row per case), ``summary.json``
(per structure: mean Dice per case, global Dice, VOE, RVD, ASSD and HD95 in mm; lesion precision and recall at
IoU > 0.5; tumour burden error) and ``per_case_dice.png``. ``--slice-metrics`` puts the slice-level metrics of the
bundle's ``evaluating`` workflow (the reference's balanced Dice among them) beside the volume ones.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from transforms import LoadScan, check_label_grid, check_lits_labels, is_nifti, nifti_stem, to_canonical  # noqa: E402
from workflows.atomic import save_figure, write_json_atomic, write_text_atomic  # noqa: E402
from workflows.slice_set import volume_sort_key  # noqa: E402
from workflows.volume_metrics import case_metrics  # noqa: E402

__all__ = ["pair_files", "flatten_case", "summarise_cases", "write_case_csv", "evaluate_volumes", "main"]

_ID_PATTERNS = (re.compile(r"^segmentation-(.+)$"), re.compile(r"^(?:volume-)?(.+)_seg$"))


def _volume_id(path: Path) -> str:
    stem = nifti_stem(path)
    for pattern in _ID_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def pair_files(pred_dir: str | os.PathLike, truth_dir: str | os.PathLike) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(volume id, prediction, truth) for every id found in both folders, and notes on the unpaired files.
    Scans named ``volume-<id>.nii[.gz]`` beside their labels (the LiTS layout) are not label maps and are skipped."""
    def by_id(folder: Path) -> dict[str, Path]:
        found = {}
        for path in sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith(".")):
            if re.fullmatch(r"volume-[^_]+", nifti_stem(path)):
                continue
            found[_volume_id(path)] = path
        return found

    preds, truths = by_id(Path(pred_dir)), by_id(Path(truth_dir))
    common = sorted(set(preds) & set(truths), key=volume_sort_key)
    notes = [f"no truth for prediction {preds[i]}" for i in sorted(set(preds) - set(truths))]
    notes += [f"no prediction for truth {truths[i]}" for i in sorted(set(truths) - set(preds))]
    return [(i, preds[i], truths[i]) for i in common], notes


def write_case_csv(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    write_text_atomic(path, buffer.getvalue())


def flatten_case(volume_id: str, metrics: dict) -> dict:
    """One CSV row from :func:`workflows.volume_metrics.case_metrics`."""
    row = {"volume_id": volume_id}
    for structure in ("liver", "tumour"):
        for key in ("dice", "voe", "rvd", "assd_mm", "hd95_mm", "pred_voxels", "true_voxels", "tp"):
            row[f"{structure}_{key}"] = metrics[structure][key]
    row.update({f"lesions_{k}": v for k, v in metrics["lesions"].items()})
    row.update({f"tumour_burden_{k}": v for k, v in metrics["tumour_burden"].items()})
    return row


def _mean(values: list[float]) -> dict:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return {"mean": float(np.mean(finite)) if finite else None, "cases": len(finite)}


def summarise_cases(rows: list[dict]) -> dict:
    """Summary over cases: mean per case, pooled (global) Dice, lesion precision/recall, burden error."""
    summary = {"cases": len(rows)}
    for s in ("liver", "tumour"):
        tp = sum(r[f"{s}_tp"] for r in rows)
        volume = sum(r[f"{s}_pred_voxels"] + r[f"{s}_true_voxels"] for r in rows)
        summary[s] = {
            "dice_per_case": _mean([r[f"{s}_dice"] for r in rows]),
            "global_dice": 2 * tp / volume if volume else None,
            **{key: _mean([r[f"{s}_{key}"] for r in rows]) for key in ("voe", "rvd", "assd_mm", "hd95_mm")},
        }
    true_lesions = sum(r["lesions_true_lesions"] for r in rows)
    pred_lesions = sum(r["lesions_pred_lesions"] for r in rows)
    summary["lesions"] = {
        "true": true_lesions, "predicted": pred_lesions,
        "recall": sum(r["lesions_found"] for r in rows) / true_lesions if true_lesions else None,
        "precision": sum(r["lesions_matched_pred"] for r in rows) / pred_lesions if pred_lesions else None,
        "rule": "a true lesion is found when a predicted 3D component overlaps it with IoU > 0.5",
    }
    errors = [r["tumour_burden_error"] for r in rows if not math.isnan(r["tumour_burden_error"])]
    summary["tumour_burden"] = {"rmse": float(np.sqrt(np.mean(np.square(errors)))) if errors else None,
                                "max_abs_error": float(np.max(np.abs(errors))) if errors else None}
    return summary


def evaluate_volumes(pred_dir: str | os.PathLike, truth_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     slice_metrics: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Evaluate every pair, write the report, return the summary."""
    pairs, notes = pair_files(pred_dir, truth_dir)
    say = tqdm.write if progress else (lambda *_: None)
    for note in notes:
        say(note)
    if not pairs:
        raise ValueError(f"no prediction in {pred_dir} pairs with a truth in {truth_dir} (by volume id).")
    loader = LoadScan(modality=None)
    rows, failed = [], {}
    for volume_id, pred_path, truth_path in tqdm(pairs, desc="evaluating", unit="case", disable=not progress):
        try:  # a bad pair is reported and skipped; the others are evaluated
            pred, truth = to_canonical(loader(pred_path)), to_canonical(loader(truth_path))
            check_label_grid(pred, truth)
            for label, path in ((pred, pred_path), (truth, truth_path)):
                check_lits_labels(label, path)
        except ValueError as err:
            failed[volume_id] = str(err)
            say(f"FAILED {volume_id}: {err}")
            continue
        spacing = torch.linalg.norm(truth.affine[:3, :3], dim=0).tolist()
        metrics = case_metrics(pred[0].numpy().astype(np.uint8), truth[0].numpy().astype(np.uint8), spacing)
        rows.append(flatten_case(volume_id, metrics))
    if not rows:
        raise ValueError(f"no case could be evaluated: {failed}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_case_csv(rows, out / "metrics.csv")
    summary = summarise_cases(rows)
    summary["failed"] = failed
    if slice_metrics is not None:
        summary["slice_level"] = json.loads(Path(slice_metrics).read_text())
    write_json_atomic(out / "summary.json", summary)
    _figure(rows, out / "per_case_dice.png")
    return summary


def _figure(rows: list[dict], path: Path) -> None:
    ids = [r["volume_id"] for r in rows]
    x = np.arange(len(ids))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(ids)), 4))
    ax.bar(x - 0.2, [r["liver_dice"] for r in rows], 0.4, color="tab:green", label="liver")
    ax.bar(x + 0.2, [r["tumour_dice"] for r in rows], 0.4, color="tab:red", label="tumour")
    ax.set_xticks(x, ids, rotation=90 if len(ids) > 12 else 0)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("volume")
    ax.set_ylabel("Dice per case")
    ax.legend()
    save_figure(fig, path)


def _fmt(entry: dict | float | None) -> str:
    value = entry.get("mean") if isinstance(entry, dict) else entry
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pred", required=True, help="folder of predicted label maps (NIfTI, LiTS labels)")
    parser.add_argument("--truth", required=True, help="folder of ground-truth label maps")
    parser.add_argument("--out", default=None, help="report folder (default: PRED/evaluation)")
    parser.add_argument("--slice-metrics", help="metrics.json of the bundle's evaluating workflow, shown beside")
    args = parser.parse_args(argv)
    out = args.out or str(Path(args.pred) / "evaluation")
    try:
        summary = evaluate_volumes(args.pred, args.truth, out, args.slice_metrics)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
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
