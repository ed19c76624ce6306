"""Steps 5-6 of the recipe: the held-out patients and the scans of collections never trained on segmented by the
bundle's ``inference`` workflow, as a user would, and scored with the LiTS metrics; ``summary.json`` and the
picture."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from workflows.recipe.run import OTHER_SCANS, RecipeRun, shown

__all__ = ["held_out_picture", "score_held_out", "segment_and_score", "write_summary"]


def score_held_out(run: RecipeRun, data: Path) -> tuple[dict, dict, dict]:
    """Step 5: the test list's slices through the bundle's ``evaluating`` workflow, each held-out patient and each
    scan of :data:`OTHER_SCANS` (collections never trained on) through its ``inference`` workflow, as a user would,
    scored with the LiTS metrics."""
    from monai.bundle import run as run_bundle

    from transforms import window_range
    from workflows.bundle import config_file
    from workflows.data.held_out_volumes import stack_2d_patient, truth_as_lits
    from workflows.engine.model_file import model_settings

    out = run.scored
    print("\n== 5/6 scoring the held-out patients")
    # the model file inference runs (its liver stage; with several networks, their mean), as a user would run it
    run_bundle("evaluating", config_file=[config_file("train"), config_file("evaluate")],
               **{**run.training["whole"], "ckpt_file": str(run.model), "output_dir": str(out / "eval_test"),
                  "val_datalist": "test.json"})
    slice_level = json.loads((out / "eval_test" / "metrics.json").read_text())
    window_hu = model_settings(run.model)["window_hu"] or list(window_range("abdomen", None))
    patients = {}
    for volume_id in run.plan.volumes["test"]:
        volume_rows = sorted((r for r in run.rows if r["volume_id"] == volume_id), key=lambda r: r["slice_index"])
        pred_dir = out / "held_out" / volume_id
        scan = Path(volume_rows[0]["source"])
        if scan.is_dir():  # a DICOM series, scored against its SEG objects
            truth, where = scan, "bundle inference on the DICOM series, scored against its SEG on the scan's grid"
        else:
            scan, truth = stack_2d_patient(volume_rows, pred_dir / "input", window_hu)
            where = "bundle inference on its slices stacked into a volume, scored against their masks"
        patients[volume_id] = {**segment_and_score(run.model, run.threads, scan, truth, pred_dir), "where": where}
    other_scans = {}
    for name, (scan, truth, label_map, what) in OTHER_SCANS.items():
        if (data / scan).is_file() and (data / truth).is_file():
            pred_dir = out / "other_collections" / name
            truth_path = truth_as_lits(data / truth, label_map, pred_dir / "truth")
            other_scans[name] = {**segment_and_score(run.model, run.threads, data / scan, truth_path, pred_dir),
                                 "where": what}
    return slice_level, patients, other_scans


def segment_and_score(model: Path, threads: int, scan: Path, truth: Path, pred_dir: Path, **settings) -> dict:
    """One scan through the bundle's ``inference`` workflow with ``model`` into ``pred_dir`` (``settings``: other
    inference settings, e.g. ``flip_check=False``), scored against ``truth``; the figures carry the scan and truth
    they came from."""
    from monai.bundle import run as run_bundle

    from workflows.bundle import config_file
    from workflows.engine.volume_evaluation import evaluate_volumes, held_out_scores

    started = time.perf_counter()
    run_bundle("inference", config_file=config_file("inference"), input=str(scan), output_dir=str(pred_dir),
               ckpt_file=str(model), threads=threads, **settings)
    seconds = time.perf_counter() - started
    scored = evaluate_volumes(next(pred_dir.glob("*_seg.nii.gz")), truth, pred_dir / "evaluation", progress=False)
    return {**held_out_scores(scored), "inference_seconds": round(seconds, 1), "scan": str(scan), "truth": str(truth)}


def scoring_settings() -> dict:
    """The inference settings every score here is made with: the bundle's defaults (``configs/inference.json``), so a
    summary written before a default changed says why its figures differ."""
    from monai.bundle import ConfigParser

    from workflows.bundle import config_file

    config = ConfigParser.load_config_file(config_file("inference"))
    return {name: config[name] for name in ("flip_check", "min_tumour_mm3", "largest_liver")}


def write_summary(run: RecipeRun, argv, slice_level: dict, patients: dict, other_scans: dict) -> None:
    """Step 6: ``summary.json``, the held-out picture, and the figures printed."""
    from workflows.data.pictures import save_figure
    from workflows.machine.atomic import write_json_atomic
    from workflows.machine.precision import cpu_model

    args, out, training = run.args, run.out, run.training
    print("\n== 6/6 summary")
    for kind, scores_of in (("held-out", patients), ("other collection", other_scans)):
        for volume_id, scores in scores_of.items():
            print(f"{kind} {volume_id}: liver Dice {shown(scores['liver_dice'])}, tumour Dice {shown(scores['tumour_dice'])}, "
                  f"lesions found {shown(scores.get('lesion_recall'))}, false lesions {scores.get('false_lesions')} "
                  f"({scores['where']})")
    summary = {
        "command": "python -m workflows.realdata " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": run.threads, "cpu_model": cpu_model(), "plan": "--epochs" if args.epochs is not None else "--minutes",
        "stages": args.stages, "tumour_size": args.tumour_size if args.stages == 2 else None, "context": args.context, "precision": args.precision, "architecture": args.architecture,
        "members": args.members, "member_models": [str(m) for m in run.member_models],
        "synthetic": args.synthetic, "liver_only_sources": args.liver_only_sources,
        "liver_only_volumes": sorted(run.liver_only), "healthy_volumes": sorted(run.healthy),
        "grey_match": args.grey_match, "grey_scaled": run.grey_scaled,
        "probe_images_per_second": round(training["speed"], 2) if training["speed"] is not None else None,
        "epochs": training["epochs"], "tumour_epochs": training["tumour_epochs"], "slices_per_epoch": training["slices"],
        "training_images_per_second": round(training["images"] / max(1e-9, training["minutes"] * 60), 2),
        "training_minutes": round(training["minutes"], 1), "training_cpu_minutes": round(training["cpu_minutes"], 1),
        "wall_minutes": round((time.time() - run.started) / 60, 1),
        "cpu_minutes": round((time.process_time() - run.cpu_started) / 60, 1),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "sources": [s["name"] for s in run.sources], "left_out": {**run.left_out, **run.notes_by_folder},
        "split": run.plan.volumes, "inference": scoring_settings(), "held_out": patients, "other_collections": other_scans,
        "warnings": run.warnings, "slice_level_test": slice_level["channels"], "model": str(run.model), "settings": run.settings,
    }
    write_json_atomic(out / "summary.json", json.loads(json.dumps(summary, default=str)))
    held_out_picture({**patients, **other_scans}, run.scored / "held_out_dice.png", save_figure)
    print(f"training {training['minutes']:.1f} min, whole recipe {summary['wall_minutes']} min wall, "
          f"{summary['cpu_minutes']} CPU-min; model {run.model}; summary {out / 'summary.json'}; "
          f"pictures {run.scored / 'held_out'} (overlays) and {run.scored / 'held_out_dice.png'}")
    for warning in run.warnings:
        print(f"WARNING: {warning}")


def held_out_picture(patients: dict, path: Path, save_figure) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(patients)
    x = np.arange(len(ids))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(ids)), 3.6))
    ax.bar(x - 0.2, [patients[i]["liver_dice"] or 0 for i in ids], 0.4, color="tab:green", label="liver")
    ax.bar(x + 0.2, [patients[i]["tumour_dice"] or 0 for i in ids], 0.4, color="tab:red", label="tumour")
    ax.set_xticks(x, ids, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Dice per held-out patient")
    ax.legend()
    save_figure(fig, path)
