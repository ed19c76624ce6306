"""The weights the bundle ships, made by the project's own recipe from the real sources whose licences allow sharing
weights derived from them.

``python -m workflows.release --data ../shared/data/real --output DIR [--threads N] [--publish]``

1. runs the real-data recipe (:mod:`workflows.realdata`) on :data:`RELEASE` ``["sources"]`` only (HCC-TACE-Seg,
   CHAOS, dcmqi's slices; the 2D set of unknown provenance stays out), for a fixed number of epochs per stage with a
   fixed seed, the held-out HCC patient scored and never trained on, every other patient training (no validation
   patient: the model is the last epoch's in any case); the sources that label the liver only train it, their
   tumour unknown (without them the liver would be learnt from two patients); no synthetic lesions (measured: with
   these sources they bought no tumour and cost liver, also with CHAOS's livers as healthy ones); two networks
   (seeds 0 and 1) averaged in the model file (``--members 2``);
2. stores the model in half precision (``DIR/model.pt``, half the bytes) when every held-out and unseen scan's liver
   and tumour Dice stays within 0.005 of the full-precision model's, else in full precision;
   ``DIR/release.json`` records the sources with their licences and attribution, the command, the CPU, the
   CPU-minutes and the scores;
3. ``--publish`` (asked for: it replaces the bundle's shipped weights) copies the model into the bundle
   (``models/shipped/model.pt``) and records its sha256 in the bundle's ``large_files.yml`` and the release record
   beside it (``models/shipped/release.json``).

Rerunning carries on where it stopped, as the recipe does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from workflows.command_line import USER_ERRORS, add_output, add_threads, error_line, interruptible

__all__ = ["RELEASE", "half_precision", "main"]

#: what the shipped weights are trained on and how: folders of ``--data`` with their licence and attribution
RELEASE = {
    "sources": {
        "hcc_tace_0697": "HCC-TACE-Seg (TCIA, doi:10.7937/TCIA.5FNA-0924), CC BY 4.0",
        "hcc_tace_2022": "HCC-TACE-Seg (TCIA, doi:10.7937/TCIA.5FNA-0924), CC BY 4.0",
        "hcc_tace_2144": "HCC-TACE-Seg (TCIA, doi:10.7937/TCIA.5FNA-0924), CC BY 4.0; held out, scored only",
        "chaos_ct_p1": "CHAOS challenge CT (Kavur et al., Medical Image Analysis 69, 2021; doi:10.5281/zenodo.3431873), "
                       "CC BY-SA 4.0; liver labels only",
        "dcmqi_ct3": "QIICR dcmqi test data, BSD-3-Clause; liver labels only",
    },
    "epochs": 40,
    "seed": 0,
    # no synthetic lesions: with these sources they found no tumour (tumour Dice 0 on every held-out scan, CHAOS's
    # tumour unknown or its livers healthy) and cost the liver 0.003-0.021 Dice (benchmarks page, one seed)
    "synthetic": 0.0,
    # CHAOS's PNGs are in another window (liver grey 240 against the scans' 138): scaled to match (--grey-match liver)
    "grey_match": "liver",
    # CHAOS's tumour channel unknown (as healthy livers: measured only with synthetic lesions, which cost liver here)
    "healthy_sources": [],
    # the tumour stage's crops at the whole-slice size, as the shipped weights were made (the recipe's default is now
    # 192; with these sources the tumour stage found no tumour at 256, 192 unmeasured for the release)
    "tumour_size": 256,
    # networks averaged in the model file (seeds 0, 1): liver Dice 0.895 / 0.885 / 0.942 against 0.890 / 0.882 / 0.928
    # with seed 0 alone (HCC 2144, crlm_1100, TotalSegmentator's example), at twice the training, 1.1-1.4x inference
    "members": 2,
    # half precision is kept when no held-out Dice moves by more than this
    "fp16_tolerance": 0.005,
}

#: where the bundle keeps its shipped weights and their checksum (the model zoo's large_files.yml)
LARGE_FILES_NOTE = ("# The bundle's large files (the model zoo's form). The shipped weights are committed in the repository;\n"
                    "# the sha256 is checked whenever inference loads them. Made by `python -m workflows.release`.\n")


def half_precision(source: Path, target: Path) -> Path:
    """``source`` (a model file of one or both stages) with its floating-point weights stored in half precision."""
    import io

    import torch

    from workflows.machine.atomic import write_bytes_atomic

    state = torch.load(source, map_location="cpu", weights_only=True)
    for key in ("model", "tumour_model"):
        if isinstance(state.get(key), dict):
            state[key] = {k: v.half() if v.is_floating_point() else v for k, v in state[key].items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_bytes_atomic(target, buffer.getvalue())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@interruptible
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.release", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of real sources (../shared/data/real)")
    add_output(parser, "working folder", required=True)
    add_threads(parser)
    parser.add_argument("--publish", action="store_true",
                        help="replace the bundle's shipped weights with this model and record its sha256")
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.output).resolve()
    missing = [name for name in RELEASE["sources"] if not (data / name).is_dir()]
    if missing:
        parser.exit(2, f"error: --data {data}: the release sources {', '.join(missing)} are not in it (the real "
                       "samples live in ../shared/data/real).\n")
    from workflows import realdata

    recipe_args = ["--data", str(data), "--output", str(out / "recipe"), "--sources", *RELEASE["sources"],
                   "--epochs", str(RELEASE["epochs"]), "--seed", str(RELEASE["seed"]), "--validation-fraction", "0",
                   "--liver-only-sources", "train", "--synthetic", str(RELEASE["synthetic"]),
                   "--grey-match", RELEASE["grey_match"], "--healthy-sources", *RELEASE["healthy_sources"],
                   "--members", str(RELEASE["members"]), "--tumour-size", str(RELEASE["tumour_size"]),
                   # the tumour stage as many epochs as the whole-slice stage, as the shipped weights were made (the
                   # recipe's default is now twice as many)
                   "--tumour-epochs", str(RELEASE["epochs"])] + (["--threads", str(args.threads)] if args.threads else [])
    status = realdata.main(recipe_args)
    if status:
        return status
    try:
        return _release(args, argv, out)
    except USER_ERRORS as err:
        parser.exit(2, error_line(err))


def _release(args: argparse.Namespace, argv: list[str] | None, out: Path) -> int:
    from workflows.bundle import SHIPPED_WEIGHTS, bundle_root
    from workflows.machine.atomic import write_bytes_atomic, write_json_atomic
    from workflows.recipe.run import scores_folder
    from workflows.recipe.scoring import segment_and_score

    summary = json.loads((out / "recipe" / "summary.json").read_text())
    full = Path(summary["model"])
    half = half_precision(full, out / "fp16" / "model.pt")
    scored = {**summary["held_out"], **summary["other_collections"]}
    print("\n== release: scoring the half-precision model on the same scans")
    half_dir = scores_folder(out / "fp16", int(summary.get("members") or 1))
    half_scores = {name: segment_and_score(half, summary["threads"], Path(s["scan"]), Path(s["truth"]), half_dir / name)
                   for name, s in scored.items()}
    moved = max(abs((half_scores[n][k] or 0) - (scored[n][k] or 0)) for n in scored for k in ("liver_dice", "tumour_dice"))
    chosen = half if moved <= RELEASE["fp16_tolerance"] else full

    def figures(scores: dict) -> dict:  # without this machine's paths
        return {name: {k: v for k, v in s.items() if k not in ("scan", "truth")} for name, s in scores.items()}

    model = out / "model.pt"
    shutil.copyfile(chosen, model)
    given = " ".join(argv if argv is not None else sys.argv[1:])
    record = {  # the output folder as DIR: the record travels with the bundle, this machine's paths do not
        "command": "python -m workflows.release " + given.replace(args.output, "DIR"),
        "recipe_command": summary["command"].replace(str(out), "DIR"), "sources": RELEASE["sources"], "epochs": RELEASE["epochs"],
        "seed": RELEASE["seed"], "members": RELEASE["members"], "cpu_model": summary["cpu_model"], "threads": summary["threads"],
        "training_cpu_minutes": summary["training_cpu_minutes"], "training_minutes": summary["training_minutes"],
        "stored_precision": "fp16" if chosen == half else "fp32", "fp16_largest_dice_change": round(moved, 4),
        "scores": figures(scored), "scores_fp16": figures(half_scores), "sha256": _sha256(model), "bytes": model.stat().st_size,
        "settings": summary["settings"],
    }
    write_json_atomic(out / "release.json", record)
    print(f"release model {model} ({record['stored_precision']}, {record['bytes'] / 1e6:.1f} MB, largest Dice change "
          f"in half precision {moved:.4f}); record {out / 'release.json'}")
    for name, s in scored.items():
        print(f"  {name}: liver Dice {s['liver_dice']:.3f}, tumour Dice {s['tumour_dice']:.3f}, lesions found "
              f"{s['lesions_found']} of {s['lesions_true']}, false lesions {s['false_lesions']}")
    if args.publish:
        root = Path(bundle_root())
        shipped = root / SHIPPED_WEIGHTS
        write_bytes_atomic(shipped, model.read_bytes())
        write_json_atomic(shipped.parent / "release.json", record)
        entry = (f"large_files:\n  - path: \"{SHIPPED_WEIGHTS.as_posix()}\"\n    hash_val: \"{record['sha256']}\"\n"
                 "    hash_type: \"sha256\"\n")
        write_bytes_atomic(root / "large_files.yml", (LARGE_FILES_NOTE + entry).encode())
        print(f"published into {shipped} (sha256 {record['sha256']} in {root / 'large_files.yml'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
