"""Side by side with what a user would pick instead, on the real-data recipe's own slices, split and threads: this
project's default, MONAI's DynUNet and SegResNet through this project's bundle, and nnU-Net v2 itself, each at the
same training CPU-minutes, scored on the same held-out patients (a script that prints figures, not a test).

``python -m tests.benchmarks.bench_peers --data ../shared/data/real --output DIR [--budgets 10 30]
[--systems ours dynunet segresnet nnunet] [--threads 2] [--venv DIR/nnunet_venv] [--quick]``

- ``ours``, ``dynunet``, ``segresnet``: ``python -m workflows.realdata --minutes B/threads [--architecture X]`` in
  ``DIR/<system>_<B>cpumin``: the recipe's default (two stages, one neighbouring slice each side, fp32), with only
  the network swapped (``--architecture``, recorded in the model file); scored by the recipe itself (bundle inference
  on each held-out patient, LiTS metrics).
- ``nnunet``: nnU-Net v2 (``nnunetv2`` from PyPI, version :data:`NNUNET_VERSION`) in its own virtual environment
  (``--venv``; created with ``pip install torch==<this torch> nnunetv2==...`` when missing, never a dependency of
  this project), the recipe's patients exported to its raw format (:mod:`tests.benchmarks.nnunet_export`: the same
  pixels our network sees), its own fingerprint, plans and preprocessing, its ``2d`` configuration trained on the CPU
  with ``nnUNetTrainer_CPUBudget`` (:mod:`tests.benchmarks.nnunet_budget_trainer`: nnU-Net's trainer with its poly
  schedule fitted to the budget's wall-clock minutes, B/threads), predicted on the held-out patients without test-time
  mirroring (ours does not mirror either), scored with the same LiTS metrics against the same labels.

A budget B is training CPU-minutes: B/threads minutes of wall-clock training on ``--threads`` cores; the x axis uses
the CPU-minutes each run measured. Runs already finished are read back, and the table holds every finished run in
DIR. Writes ``DIR/peers.json`` and
``DIR/peers.png`` (held-out liver and tumour Dice against training CPU-minutes, one line per system) and prints a table.
``--quick`` (a few CPU-minutes in all, in ``DIR/quick``): ours and nnU-Net at :data:`QUICK`'s 2 CPU-minutes,
nnU-Net with epochs of one iteration (its first epoch of 5 would outlast the budget) and predicting one held-out
patient (the DICOM HCC one: its ~70 s a scan is most of the time), both scored on that patient, ending with one line
``ratio=<ours / nnU-Net held-out mean Dice, liver and tumour averaged>``. Measure alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

NNUNET_VERSION = "2.8.1"
DATASET_ID = 501
ARCHITECTURES = {"ours": "three_level_unet", "dynunet": "dynunet", "segresnet": "segresnet"}
SYSTEMS = (*ARCHITECTURES, "nnunet")
#: ``--quick``: a budget, the systems, nnU-Net's iterations per epoch and the held-out patients scored.
QUICK = {"budget": 2.0, "systems": ["ours", "nnunet"], "iterations_per_epoch": 1,
         "held_out": ["hcc_tace_2144_31_EQP_Ax5.00mm"]}
LABELS = {"ours": "ours (3-level UNet, 2 stages)", "dynunet": "MONAI DynUNet (bundle)",
          "segresnet": "MONAI SegResNet (bundle)", "nnunet": f"nnU-Net v2 {NNUNET_VERSION} (2d)"}


def _child(command: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``command`` with its output in ``log``; its wall seconds, CPU minutes and peak memory (from ``wait4``)."""
    started = time.perf_counter()
    with open(log, "a") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    code = process.returncode = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{command[0]} {' '.join(command[1:3])} ... failed (exit {code}); see {log}")
    return {"seconds": time.perf_counter() - started, "cpu_minutes": (usage.ru_utime + usage.ru_stime) / 60,
            "peak_memory_mb": usage.ru_maxrss / 1024}


def _score(pred: Path, truth: Path, out: Path) -> dict:
    from workflows.engine.volume_evaluation import evaluate_volumes
    from workflows.engine.volume_evaluation import held_out_scores

    return held_out_scores(evaluate_volumes(pred, truth, out, progress=False))


def run_bundle_system(system: str, data: Path, out: Path, budget: float, threads: int, slices: Path | None) -> dict:
    """One recipe run with ``system``'s network for ``budget`` training CPU-minutes (see the module)."""
    from tests.benchmarks.bench_recipe import run_recipe

    summary = run_recipe(data, out, ["--minutes", f"{budget / threads:g}"], ["--architecture", ARCHITECTURES[system]],
                         threads, slices)
    seconds = [p["inference_seconds"] for p in summary["held_out"].values() if p.get("inference_seconds") is not None]
    return {"system": system, "label": LABELS[system], "budget_cpu_minutes": budget,
            "training_cpu_minutes": summary["training_cpu_minutes"], "training_minutes": summary["training_minutes"],
            "epochs": summary["epochs"], "threads": summary["threads"], "cpu_model": summary["cpu_model"],
            "held_out": {pid: {k: p[k] for k in ("liver_dice", "tumour_dice", "lesion_recall", "lesions_true")}
                         for pid, p in summary["held_out"].items()},
            "inference_seconds_per_scan": round(sum(seconds) / len(seconds), 1) if seconds else None,
            "peak_memory_mb": summary.get("peak_memory_mb"), "lists": str(out / "lists"),
            "command": summary["command"]}


def nnunet_venv(venv: Path) -> Path:
    """nnU-Net's own virtual environment (created when missing) with this project's torch version; its python."""
    import torch

    python = venv / "bin" / "python"
    probe = [str(python), "-c", f"import importlib.metadata as m; assert m.version('nnunetv2') == '{NNUNET_VERSION}'"]
    if not python.exists() or subprocess.run(probe, capture_output=True).returncode != 0:
        print(f"installing nnU-Net v2 {NNUNET_VERSION} into its own virtual environment {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        torch_version = torch.__version__.split("+")[0]
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={torch_version}",
                        f"nnunetv2=={NNUNET_VERSION}"], check=True)
    package = subprocess.run([str(python), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    variants = Path(package) / "training" / "nnUNetTrainer" / "variants"
    shutil.copyfile(Path(__file__).with_name("nnunet_budget_trainer.py"), variants / "nnUNetTrainer_CPUBudget.py")
    return python


def run_nnunet(python: Path, lists: Path, out: Path, budget: float, threads: int, iterations_per_epoch: int = 5,
               held_out: list[str] | None = None) -> dict:
    """nnU-Net v2's ``2d`` configuration on the recipe's split for ``budget`` training CPU-minutes (see the module),
    with epochs of ``iterations_per_epoch``, predicting the ``held_out`` patients (default: every one)."""
    from tests.benchmarks.nnunet_export import export_nnunet

    result_file = out / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    root = out.parent / "nnunet_data"
    raw, preprocessed = root / "raw", root / "preprocessed"
    folder = raw / f"Dataset{DATASET_ID:03d}_LiverCT"
    log = out.parent / f"{out.name}.log"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(preprocessed),
           "nnUNet_results": str(out / "results"), "nnUNet_n_proc_DA": "0", "nnUNet_compile": "f",
           "OMP_NUM_THREADS": str(threads), "NNUNET_BUDGET_MINUTES": f"{budget / threads:g}",
           "NNUNET_ITERATIONS_PER_EPOCH": str(iterations_per_epoch)}
    tools = python.parent
    if not (folder / "dataset.json").is_file():
        export_nnunet(lists, raw, DATASET_ID)
    case_ids = json.loads((folder / "case_ids.json").read_text())
    inputs = folder / "imagesTs"
    if held_out is not None:  # a subset: its scans linked into a folder of their own
        missing = sorted(set(held_out) - set(case_ids.values()))
        if missing:
            raise SystemExit(f"error: {folder / 'case_ids.json'}: no held-out patient {', '.join(missing)} in the "
                             "recipe's split; --quick scores it, so point --data at ../shared/data/real (which holds "
                             "it) or run the full benchmark without --quick.")
        inputs = out / "inputs"
        inputs.mkdir(exist_ok=True)
        for image in sorted((folder / "imagesTs").glob("case_*_0000.nii.gz")):
            if case_ids[image.name.removesuffix("_0000.nii.gz")] in held_out and not (inputs / image.name).is_symlink():
                (inputs / image.name).symlink_to(image)
    if not (preprocessed / folder.name / "nnUNetPlans.json").is_file():
        _child([str(tools / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-np", str(threads),
                "-npfp", str(threads), "--verify_dataset_integrity"], log,
               {**env, "nnUNet_n_proc_DA": str(threads)})  # its planner sets torch's threads to this number
        shutil.copyfile(folder / "splits_final.json", preprocessed / folder.name / "splits_final.json")
    plans = json.loads((preprocessed / folder.name / "nnUNetPlans.json").read_text())["configurations"]["2d"]
    trainer = "nnUNetTrainer_CPUBudget"
    runner = [str(python), "-m", f"nnunetv2.training.nnUNetTrainer.variants.{trainer}"]  # nnU-Net's own commands
    training = _child([*runner, "train", str(DATASET_ID), "2d", "0", "-tr", trainer, "-device", "cpu"], log, env)
    predictions = out / "predictions"
    predicting = _child([*runner, "predict", "-i", str(inputs), "-o", str(predictions),
                         "-d", str(DATASET_ID), "-c", "2d", "-f", "0", "-tr", trainer, "-device", "cpu",
                         "--disable_tta", "-npp", "1", "-nps", "1"], log, env)
    scores = {}
    for pred in sorted(predictions.glob("case_*.nii.gz")):
        case = pred.name.removesuffix(".nii.gz")
        scores[case_ids[case]] = _score(pred, folder / "labelsTs" / pred.name, out / "evaluation" / case)
    epochs = sum(1 for line in next((out / "results").rglob("training_log_*.txt")).read_text().splitlines()
                 if "Epoch " in line and "time" not in line)
    result = {"system": "nnunet", "label": LABELS["nnunet"], "budget_cpu_minutes": budget,
              "training_cpu_minutes": round(training["cpu_minutes"], 1),
              "training_minutes": round(training["seconds"] / 60, 1), "epochs": epochs, "threads": threads,
              "iterations_per_epoch": iterations_per_epoch,
              "plans_2d": {k: plans.get(k) for k in ("patch_size", "batch_size", "spacing")},
              "held_out": scores,
              "inference_seconds_per_scan": round(predicting["seconds"] / max(1, len(scores)), 1),
              "peak_memory_mb": round(max(training["peak_memory_mb"], predicting["peak_memory_mb"])),
              "command": f"nnUNetv2_train {DATASET_ID} 2d 0 -tr {trainer} -device cpu "
                         f"(NNUNET_BUDGET_MINUTES={budget / threads:g}, NNUNET_ITERATIONS_PER_EPOCH="
                         f"{iterations_per_epoch}, nnUNet_n_proc_DA=0)"}
    result_file.write_text(json.dumps(result, indent=1))
    return result


def mean_dice(result: dict, patients: list[str] | None = None) -> float:
    """Held-out mean Dice, liver and tumour averaged (a missing tumour Dice counts 0), over ``patients`` (default:
    every held-out patient of the run)."""
    scores = [(p["liver_dice"] or 0) / 2 + (p["tumour_dice"] or 0) / 2 for pid, p in result["held_out"].items()
              if patients is None or pid in patients]
    return sum(scores) / max(1, len(scores))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/real", help="the real samples (../shared/data/real)")
    parser.add_argument("--output", required=True, help="working folder (one sub-folder per run)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[10, 30], help="training CPU-minutes (10 30)")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--venv", help="nnU-Net's own virtual environment (default DIR/nnunet_venv)")
    parser.add_argument("--quick", action="store_true", help="ours and nnU-Net at 2 CPU-minutes, one held-out patient "
                                                             "(in DIR/quick); ends with ratio=")
    args = parser.parse_args(argv)
    root = out = Path(args.output).resolve()
    nnunet_options, patients = {}, None
    if args.quick:
        args.budgets, args.systems, patients = [QUICK["budget"]], QUICK["systems"], QUICK["held_out"]
        nnunet_options = {"iterations_per_epoch": QUICK["iterations_per_epoch"], "held_out": patients}
        out = out / "quick"
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    if not data.is_dir():
        parser.exit(2, f"error: --data {data}: no such folder (the real samples live in ../shared/data/real).\n")
    slices = next((p / "slices" for p in sorted(out.iterdir()) if (p / "summary.json").is_file()), None)
    results, lists = [], None
    for budget in args.budgets:
        for system in sorted(args.systems, key=lambda s: s == "nnunet"):  # nnU-Net exports a finished run's lists
            run_dir = out / f"{system}_{budget:g}cpumin"
            if system == "nnunet":
                lists = lists or next((Path(r["lists"]) for r in results), None) or next(
                    (p / "lists" for p in sorted(out.iterdir()) if (p / "summary.json").is_file()), None)
                if lists is None:
                    parser.exit(2, "error: nnU-Net trains on a recipe run's split: add a bundle system to --systems "
                                   "(ours) or run one into this --output first.\n")
                python = nnunet_venv(Path(args.venv) if args.venv else root / "nnunet_venv")
                result = run_nnunet(python, lists, run_dir, budget, args.threads, **nnunet_options)
            else:
                result = run_bundle_system(system, data.resolve(), run_dir, budget, args.threads, slices)
                slices = slices or run_dir / "slices"
            results.append(result)
    results = []  # every finished run in DIR, this invocation's and earlier ones'
    for run_dir in sorted(out.glob("*_*cpumin"), key=lambda p: (float(p.name.split("_")[-1][:-6]), p.name)):
        system, budget = run_dir.name.rsplit("_", 1)[0], float(run_dir.name.rsplit("_", 1)[1][:-6])
        if system == "nnunet" and (run_dir / "result.json").is_file():
            results.append(json.loads((run_dir / "result.json").read_text()))
        elif system in ARCHITECTURES and (run_dir / "summary.json").is_file():
            results.append(run_bundle_system(system, data.resolve(), run_dir, budget, args.threads, None))
    for result in results:
        _print_row(result)
    (out / "peers.json").write_text(json.dumps(results, indent=1))
    _plot(results, out / "peers.png")
    cpu = next((r["cpu_model"] for r in results if r.get("cpu_model")), "?")
    print(f"CPU: {cpu}, {args.threads} threads; results {out / 'peers.json'}, picture {out / 'peers.png'}")
    ours = {r["budget_cpu_minutes"]: r for r in results if r["system"] == "ours"}
    nnunet = {r["budget_cpu_minutes"]: r for r in results if r["system"] == "nnunet"}
    both = sorted(set(ours) & set(nnunet) & set(args.budgets))
    if both:  # at the largest budget of this invocation that both ran
        ratio = mean_dice(ours[both[-1]], patients) / max(1e-9, mean_dice(nnunet[both[-1]], patients))
        trained = (f"ours trained {ours[both[-1]]['training_cpu_minutes']}, "
                   f"nnU-Net {nnunet[both[-1]]['training_cpu_minutes']}")
        scored = f", {', '.join(patients)}" if patients else ""
        print(f"ours / nnU-Net held-out mean Dice (liver and tumour averaged{scored}) at a budget of {both[-1]:g} "
              f"training CPU-minutes ({trained}: one epoch is the least either trains):")
        print(f"ratio={ratio:.3f}")
    return 0


def _print_row(r: dict) -> None:
    scores = "; ".join(f"{pid}: liver {p['liver_dice']:.3f} tumour "
                       f"{'n/a' if p['tumour_dice'] is None else format(p['tumour_dice'], '.3f')} lesions found "
                       f"{'n/a' if p.get('lesion_recall') is None else format(p['lesion_recall'], '.2f')}"
                       for pid, p in r["held_out"].items())
    print(f"{r['label']:32s} budget {r['budget_cpu_minutes']:g} CPU-min: trained {r['training_cpu_minutes']} CPU-min "
          f"({r['epochs']} epochs), inference {r['inference_seconds_per_scan']} s/scan, peak {r['peak_memory_mb']} MB; "
          f"{scores}", flush=True)


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workflows.data.pictures import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for ax, key, what in ((axes[0], "liver_dice", "liver"), (axes[1], "tumour_dice", "tumour")):
        for system in SYSTEMS:
            runs = sorted((r for r in results if r["system"] == system), key=lambda r: r["training_cpu_minutes"])
            if runs:
                y = [sum((p[key] or 0) for p in r["held_out"].values()) / len(r["held_out"]) for r in runs]
                ax.plot([r["training_cpu_minutes"] for r in runs], y, marker="o", label=LABELS[system])
        ax.set_title(f"held-out {what} Dice (mean of patients)", fontsize=9)
        ax.set_xlabel("training CPU-minutes")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
