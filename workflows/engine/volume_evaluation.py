"""Volume-level evaluation of predicted label maps against ground truth, as the LiTS benchmark reports it: the
library behind ``python -m workflows.evaluate`` (see there for the files written)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from monai.data import MetaTensor  # noqa: E402

from transforms import LoadScan, check_label_grid, check_lits_labels, is_nifti, nifti_stem, to_canonical  # noqa: E402
from transforms.dicom_seg import is_dicom_seg  # noqa: E402
from transforms.loading import LoadLabeld  # noqa: E402
from workflows.data.discovery import seg_labels_of  # noqa: E402
from workflows.machine.atomic import write_csv_atomic, write_json_atomic  # noqa: E402
from workflows.data.pictures import save_figure  # noqa: E402
from workflows.data.slice_set import volume_sort_key  # noqa: E402
from workflows.engine.volume_metrics import case_metrics, flatten_case, summarise_cases  # noqa: E402

__all__ = ["pair_files", "load_truth", "evaluate_volumes", "held_out_scores"]

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


def load_truth(path: str | os.PathLike, loader: LoadScan) -> MetaTensor:
    """A ground-truth label map: a NIfTI file, or a DICOM series folder labelled by DICOM SEG objects beside or
    inside it (made by another tool; placed on the series' grid as conversion places them)."""
    path = Path(path)
    if path.is_dir():
        segs = seg_labels_of(path)
        if not segs:
            raise ValueError(f"{path}: no DICOM SEG labels this series (beside it or inside it); give the truth as a "
                             "NIfTI label map or put its SEG objects beside the series folder.")
        return LoadLabeld(keys="label")({"image": LoadScan()(path), "label": list(segs)})["label"]
    if is_dicom_seg(path):
        raise ValueError(f"{path}: a DICOM SEG is read on its series' grid: give --truth the series folder it labels "
                         "(the SEG beside it), not the SEG file.")
    return loader(path)


def evaluate_volumes(pred_dir: str | os.PathLike, truth_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     slice_metrics: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Evaluate every pair, write the report, return the summary. ``pred_dir`` may be one prediction file, then
    ``truth_dir`` is its truth: a NIfTI label map or a DICOM series folder with its SEG objects."""
    if Path(pred_dir).is_file():
        for given, name in ((pred_dir, "--pred"), (truth_dir, "--truth")):
            if not Path(given).exists():
                raise FileNotFoundError(f"{name} {given}: no such file or folder.")
        pairs, notes = [(_volume_id(Path(pred_dir)), Path(pred_dir), Path(truth_dir))], []
    else:
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
            pred, truth = to_canonical(loader(pred_path)), to_canonical(load_truth(truth_path, loader))
            check_label_grid(pred, truth, str(pred_path), ("prediction", "its truth"), str(truth_path))
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
        first, reason = next(iter(failed.items()))
        raise ValueError(f"no case could be evaluated ({len(failed)} failed; {first}: {reason})")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(out / "metrics.csv", rows)
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


def held_out_scores(scored: dict) -> dict:
    """One patient's figures from :func:`~workflows.engine.volume_evaluation.evaluate_volumes`'s summary: liver and
    tumour Dice, lesions found (recall, precision, how many there are, how many found at IoU > 0.5), false lesions
    (predicted lesions matching none) and the liver's mean surface distance (mm)."""
    lesions = scored["lesions"]
    matched = round((lesions["precision"] or 0) * lesions["predicted"])
    return {"liver_dice": scored["liver"]["dice_per_case"]["mean"],
            "tumour_dice": scored["tumour"]["dice_per_case"]["mean"], "lesion_recall": lesions["recall"],
            "lesion_precision": lesions["precision"], "lesions_true": lesions["true"],
            "lesions_found": round((lesions["recall"] or 0) * lesions["true"]),
            "false_lesions": lesions["predicted"] - matched, "liver_assd_mm": scored["liver"]["assd_mm"]["mean"]}
