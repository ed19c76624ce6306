"""The whole job end to end on generated data, in minutes on a laptop CPU.

``python -m workflows.quickstart [--output DIR]`` generates LiTS-like volumes, converts them to slices, writes the
exploration report, splits by patient into small chunks, trains every chunk through the bundle (a narrow network
at a small size, stated below), evaluates, segments a held-out scan stored in another orientation through the
bundle's inference workflow, evaluates that per volume, and prints where the report and pictures are. Rerunning it carries on
where it stopped: finished volumes, chunks and files are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

from workflows.command_line import add_output, add_threads, interruptible

__all__ = ["QUICK_SETTINGS", "main"]


#: Orientation the held-out scan is stored in: axes permuted and flipped, unlike any training volume.
HELD_OUT_AXCODES = "SAR"

#: The small model and data the quickstart uses (the bundle's defaults are the reference's: full width, 256).
QUICK_SETTINGS = {
    "cases": 20,
    "size": 96,
    "slices": 40,
    "chunk_size": 320,
    "overrides": {
        "spatial_size": 96,
        "network_def#channels": [16, 32, 64, 128],
        "epochs_per_chunk": 12,
        "batch_size": 4,
        "learning_rate": 0.002,
        "lr_scheduler#gamma": 0.93,
        "checkpoint_every": 40,
    },
}


def _f(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def _command(run_id: str, configs: list[str], overrides: dict) -> str:
    config = configs[0] if len(configs) == 1 else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    parts = ["python -m monai.bundle run", run_id, "--config_file", shlex.quote(config)]
    for key, value in overrides.items():
        text = json.dumps(value).replace(" ", "") if isinstance(value, list) else str(value)
        parts += [f"--{key}", shlex.quote(text)]
    return " ".join(parts)


@interruptible
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.quickstart", description=__doc__.split("\n\n")[0])
    add_output(parser, "working folder (default ./quickstart)", default="quickstart")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data and the training (0)")
    add_threads(parser)
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                        help="training's forward passes: fp32 (default), bf16 autocast, or auto (bf16 where the CPU "
                             "computes it natively: 2.3x faster, but it cost tumour Dice on real data)")
    args = parser.parse_args(argv)
    # the library (torch, MONAI: seconds of imports) only after --help and argument errors
    import nibabel as nib
    from monai.bundle import run as run_bundle

    from workflows.bundle import config_file
    from workflows.data.conversion import convert
    from workflows.data.exploration import explore
    from workflows.data.slice_set import read_manifest
    from workflows.data.splitting import plan_split, write_split
    from workflows.data.synthetic_cases import generate_case, generate_dataset
    from workflows.machine.threads import set_threads
    from workflows.engine.volume_evaluation import evaluate_volumes

    threads = set_threads(args.threads)
    out = Path(args.output).resolve()
    s = QUICK_SETTINGS
    started = time.time()
    train_config, evaluate_config = config_file("train"), config_file("evaluate")
    print(f"quickstart in {out}: {s['cases']} generated volumes of {s['size']}x{s['size']}x{s['slices']}, "
          f"ThreeLevelUNet with channels {s['overrides']['network_def#channels']} at "
          f"{s['overrides']['spatial_size']}x{s['overrides']['spatial_size']} (the bundle's defaults are the "
          "reference's: channels [64,128,256,512] at 256x256)")

    _step("1/7 generating LiTS-like volumes")
    generate_dataset(out / "raw", cases=s["cases"], seed=args.seed, size=s["size"], slices=s["slices"],
                     skip_existing=True)

    _step("2/7 converting volumes to windowed slices")
    summary = convert(out / "raw", out / "slices")
    if summary.failed:
        print(f"conversion failed for {sorted(summary.failed)}", file=sys.stderr)
        return 1

    _step("3/7 exploring the slices")
    explored = explore(out / "slices", out / "report", max_images=200, seed=args.seed)
    print(f"{explored['volumes']} volumes, {explored['slices']} slices, {explored['slices_with_liver']} with liver, "
          f"{explored['slices_with_tumour']} with tumour; report {out / 'report' / 'report.md'}")

    _step("4/7 splitting by patient into chunks")
    rows = read_manifest(out / "slices")
    probe = plan_split(rows, target="liver", positives=10**9, negatives=10**9, seed=args.seed)
    available = probe.counts["train_available"]  # the quickstart trains on every training slice
    plan = plan_split(rows, target="liver", positives=available["positive"], negatives=available["negative"],
                      chunk_size=s["chunk_size"], seed=args.seed)
    write_split(plan, out / "lists", out / "slices")
    print(f"volumes {plan.volumes['train']} train, {plan.volumes['val']} validation; "
          f"{len(plan.chunks)} chunks of {plan.counts['chunk_sizes']} slices")

    overrides = {"dataset_dir": str(out / "lists"), "ckpt_dir": str(out / "models"), "seed": args.seed,
                 "threads": threads, "precision": args.precision, **s["overrides"]}
    _step("5/7 training every chunk through the bundle")
    print("same as: " + _command("training", [train_config], overrides))
    run_bundle("training", config_file=train_config, progress=False, **overrides)

    _step("6/7 evaluating on the validation volumes")
    evaluate_overrides = {**overrides, "output_dir": str(out / "eval")}
    print("same as: " + _command("evaluating", [train_config, evaluate_config], evaluate_overrides))
    run_bundle("evaluating", config_file=[train_config, evaluate_config], **evaluate_overrides)

    _step("7/7 segmenting a held-out scan on its own grid and evaluating it per volume")
    held_out = generate_case(s["cases"], seed=args.seed, size=s["size"], slices=s["slices"])
    held_out = dataclasses.replace(held_out, stored_axcodes=HELD_OUT_AXCODES)
    for folder, array in ((out / "held_out" / "scan", held_out.hu), (out / "held_out" / "truth", held_out.label)):
        folder.mkdir(parents=True, exist_ok=True)
        name = "volume" if array is held_out.hu else "segmentation"
        nib.save(held_out.stored_image(array), folder / f"{name}-{held_out.index}.nii.gz")
    inference_config = config_file("inference")
    inference_overrides = {"input": str(out / "held_out" / "scan"), "output_dir": str(out / "held_out" / "pred"),
                           "ckpt_file": str(out / "models" / "model.pt"), "threads": threads}  # the model file carries its settings
    print("same as: " + _command("inference", [inference_config], inference_overrides))
    run_bundle("inference", config_file=inference_config, **inference_overrides)
    volume = evaluate_volumes(out / "held_out" / "pred", out / "held_out" / "truth", out / "held_out" / "evaluation",
                              slice_metrics=out / "eval" / "metrics.json", progress=False)

    metrics = json.loads((out / "eval" / "metrics.json").read_text())["channels"]["liver"]
    honest, reference = metrics["honest"], metrics["reference"]
    log = json.loads((out / "models" / "training_log.json").read_text())
    print("\n== summary")
    print(f"liver Dice over the {honest['slices_with_target']} validation slices that contain liver (honest): "
          f"{honest['dice_slices_with_target']:.4f}")
    print(f"liver global Dice over all {honest['slices']} validation slices: {honest['global_dice']:.4f}; "
          f"false positives on {honest['empty_slices_with_false_positive']:.1%} of {honest['empty_slices']} empty slices")
    print(f"reference-style balanced slice Dice / IoU: {reference['dice']:.4f} / {reference['iou']:.4f} "
          f"(the reference reported {reference['reported_by_the_reference']['dice']} / "
          f"{reference['reported_by_the_reference']['iou']} on its own data)")
    liver, tumour = volume["liver"], volume["tumour"]
    print(f"held-out scan volume-{held_out.index} (stored {HELD_OUT_AXCODES}, mask written on its own grid): liver "
          f"Dice per case {_f(liver['dice_per_case']['mean'])}, ASSD {_f(liver['assd_mm']['mean'], 2)} mm, HD95 "
          f"{_f(liver['hd95_mm']['mean'], 2)} mm; tumour Dice per case {_f(tumour['dice_per_case']['mean'])} (this "
          "model is trained for the liver target only; a tumour model: split --target tumor or both)")
    print(f"chunks trained: {len(log)}, peak memory per chunk (MiB): {[e['peak_memory_mib'] for e in log]}")
    print(f"report: {out / 'report' / 'report.md'}; metrics: {out / 'eval' / 'metrics.json'}; "
          f"pictures: {out / 'eval' / 'val_predictions'}; model: {out / 'models' / 'model.pt'}; held-out scan: "
          f"{out / 'held_out' / 'pred'} (overlay PNG, summary.csv) and {out / 'held_out' / 'evaluation'}")
    print(f"finished in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
