"""The real-data recipe: from real CT that nobody here wrote to a liver + tumour model scored on held-out patients,
in one command on a laptop CPU.

``python -m workflows.realdata --data ../shared/data/real --output DIR [--minutes 30 | --epochs N] [--threads N]
[--stages 2] [--context 1] [--tumour-size 192] [--tumour-epochs N] [--architecture three_level_unet] [--synthetic P] [--liver-only-sources train|leave-out]
[--healthy-sources FOLDER ...] [--grey-match liver|off] [--seed S] [--members N]``

1. finds the labelled sources under DATA: DICOM studies whose series carry DICOM SEG objects made by another tool
   (liver and tumour), and 2D slice sets (``images/`` + ``masks/``), reading each 2D set's mask values to choose its
   label map (0/127/255: liver 127, lesion 255; 0/255: liver only);
2. converts each into its own slice set (``DIR/slices/<source>``), compares the sources' liver grey levels and says
   when they disagree; a 2D set in another window than the scans' is converted again with its grey levels scaled so
   that its liver matches the training scans' (``--grey-match liver``, the default); sources that label the liver
   only (no tumour) train the liver with their tumour unknown (the loss leaves it out inside their liver, except
   where a synthetic lesion was put: ``--liver-only-sources train``), or are left out (``leave-out``); those whose
   livers hold no tumour by design (``--healthy-sources``, default CHAOS's potential liver donors) train as
   tumour-free livers instead;
3. splits by patient (``DIR/lists``): the held-out patients (:data:`RECIPE["test"]`, one of them a DICOM HCC
   patient) are the test list, one 2D patient validates, the rest train (every slice, tumour slices first);
4. trains through the bundle (a narrow network, augmentation on, ``--context`` neighbouring slices on each side as
   channels): liver + tumour on whole slices at 256x256 (``--stage whole``), then, with ``--stages 2`` (the
   default), the tumour on crops around the liver (``--stage liver_crop``, starting from the first stage's weights;
   each crop resized to ``--tumour-size`` pixels a side, default 192), the two in one model file; for as many epochs
   as fit in ``--minutes`` on this machine (a short probe measures the training speed; a crop costs the pixels of
   its size), or for exactly ``--epochs N`` (the same plan on any machine, however busy; the same weights only on one CPU
   family and thread count: AMD EPYC and Intel Xeon with AMX give other bf16 sums, and the tumour Dice moves with
   them); the tumour stage trains twice the whole-slice stage's epochs (``--tumour-epochs`` sets its own), and a
   tumour stage that learned almost no tumour (validation tumour Dice under 0.2) is warned of; in bf16 where the CPU
   has it natively (``--precision auto``, the default; ``fp32`` forces full precision); ``--synthetic P`` puts
   lesions synthesised inside the liver into that share of the training samples of both stages
   (:mod:`transforms.lesion_synthesis`); ``--members N`` trains N networks so (seeds S..S+N-1, one split; the
   others in ``DIR/models/seed_<s>``) and averages them in one model file (``DIR/models/ensemble_<N>/model.pt``, as
   ``python -m workflows.ensemble`` writes it; scored in ``DIR/ensemble_<N>/``, beside the first network's scores),
   at N times the training;
5. scores the test list's slices with the bundle's ``evaluating`` workflow (the reference's slice metrics, whole-slice
   stage), and segments every held-out patient with the bundle's ``inference`` workflow, as a user would: a DICOM
   series as it is (mask on the scan's grid, DICOM SEG, overlay), a 2D patient as the volume its slices stack into
   (``held_out/<id>/input``); each is scored against its labels with the LiTS metrics; so are the scans of
   :data:`OTHER_SCANS` found under DATA, from collections never trained on (``other_collections/<name>``): the
   CRLM metastasis patient, and TotalSegmentator's example, where no tumour is labelled (its predicted lesions are
   false lesions);
6. writes the model file (``DIR/models/tumour_on_liver_crop/model.pt``, both stages; it carries its settings),
   ``DIR/summary.json`` (with the epochs, the CPU model, the threads, the training images/s measured, the seconds of
   inference per held-out patient, the inference settings the scores were made with, and the peak memory) and
   pictures.

Rerunning carries on: converted volumes, trained epochs (progress checkpoints) and finished files are kept.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from workflows.command_line import add_output, add_threads, interruptible, USER_ERRORS, error_line
from workflows.recipe.run import RECIPE, RecipeRun
from workflows.recipe.training import planned_tumour_epochs

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workflows.realdata", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of real sources (../shared/data/real)")
    add_output(parser, "working folder", required=True)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="training budget in minutes, planned on this machine (default 30)")
    budget.add_argument("--epochs", type=int, help="train exactly this many epochs (a plan that does not depend on "
                                                   "the machine's speed or load)")
    add_threads(parser)
    parser.add_argument("--stages", type=int, choices=(1, 2), default=2,
                        help="2 (default): whole slices, then the tumour on crops around the liver; 1: whole slices only "
                             "(the reference's set-up)")
    parser.add_argument("--context", type=int, default=RECIPE["overrides"]["context"],
                        help="neighbouring slices on each side given to the network as channels (default "
                             f"{RECIPE['overrides']['context']}; 0: one slice, as the reference)")
    parser.add_argument("--tumour-size", type=int, default=RECIPE["tumour_size"],
                        help="the tumour stage's crop around the liver is resized to this many pixels a side (default "
                             f"{RECIPE['tumour_size']}; the whole-slice stage's is {RECIPE['overrides']['spatial_size']}; "
                             "a multiple of 8: smaller gives the network's field more of the liver, at less CPU)")
    parser.add_argument("--tumour-epochs", type=int,
                        help="epochs of the tumour stage (default: "
                             f"{RECIPE['tumour_epochs_factor']} times the whole-slice stage's, --epochs or as --minutes "
                             "plan it; with --minutes, the whole-slice stage gets the rest of the budget)")
    parser.add_argument("--precision", choices=("fp32", "auto"), default=RECIPE["overrides"]["precision"],
                        help="training precision: auto (default: bf16 where the CPU has it natively, else fp32; the "
                             "probe times it) or fp32")
    parser.add_argument("--architecture", default="three_level_unet",
                        help="the network: three_level_unet (default, the reference's), dynunet or segresnet (MONAI's "
                             "stock networks, networks.build_network); the model file records it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the training (0)")
    parser.add_argument("--members", type=int, default=1,
                        help="networks of the set-up to train and average (1..16; default 1): member k trains with "
                             "seed S+k on the same split, the model file holds them all (python -m workflows.ensemble); "
                             "a rerun with more members trains the missing ones")
    parser.add_argument("--synthetic", type=float, default=RECIPE["synthetic"],
                        help="the chance that a training sample gets lesions synthesised inside its liver "
                             f"(transforms.lesion_synthesis; default {RECIPE['synthetic']:g}; 0: real lesions only)")
    parser.add_argument("--sources", nargs="+", metavar="FOLDER",
                        help="train and score on these folders of --data only (default: every labelled source)")
    parser.add_argument("--validation-fraction", type=float, default=0.15,
                        help="share of the patients that validate when the recipe's validation patient is not among "
                             "the sources (default 0.15; 0: none, every patient trains; the model is the last "
                             "epoch's either way)")
    parser.add_argument("--liver-only-sources", choices=("train", "leave-out"), default=RECIPE["liver_only_sources"],
                        help="sources that label the liver but not tumours: train (default "
                             f"{RECIPE['liver_only_sources']}; the liver, with their tumour left out of the loss except "
                             "where a synthetic lesion was put) or leave-out")
    parser.add_argument("--healthy-sources", nargs="*", metavar="FOLDER",
                        help="with --liver-only-sources train: those of them whose livers hold no tumour by design, "
                             "trained as tumour-free (a known 0 in the tumour channel) instead of tumour unknown "
                             f"(default {' '.join(sorted(RECIPE['healthy_sources']))}: CHAOS's potential liver donors; "
                             "the flag alone: none)")
    parser.add_argument("--grey-match", choices=("liver", "off"), default="liver",
                        help="2D sets in another window than the scans' (liver grey more than 40 of 255 apart): liver "
                             "(default; converted again with their grey levels scaled so their liver matches the "
                             "scans', python -m workflows.convert --grey-scale) or off (as found)")
    return parser


@interruptible
def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        parser.exit(2, f"error: --data {data}: no such folder (the real samples live in ../shared/data/real).\n")
    missing = [name for name in args.healthy_sources or () if not (data / name).is_dir()]
    if args.healthy_sources is None:  # the recipe's own, where --data holds them
        args.healthy_sources = sorted(RECIPE["healthy_sources"])
    elif missing:
        parser.exit(2, f"error: --healthy-sources {' '.join(missing)}: no such folder in {data}; name folders of "
                       "--data whose livers hold no tumour.\n")
    if args.minutes is not None and not 0 < args.minutes < math.inf:  # nan fails both comparisons
        parser.exit(2, f"error: --minutes must be a positive, finite number of minutes, got {args.minutes}.\n")
    for flag, value in (("--epochs", args.epochs), ("--tumour-epochs", args.tumour_epochs)):
        if value is not None and value < 1:
            parser.exit(2, f"error: {flag} must be a whole number >= 1, got {value}.\n")
    from networks import NETWORKS  # after --help, which answers without torch

    if args.architecture not in NETWORKS:
        parser.exit(2, f"error: --architecture must be one of {', '.join(NETWORKS)}, got {args.architecture!r}.\n")
    if not 0 <= args.synthetic <= 1:  # nan fails too
        parser.exit(2, f"error: --synthetic must be a chance from 0 to 1, got {args.synthetic}.\n")
    if not 0 <= args.validation_fraction < 1:  # nan fails too
        parser.exit(2, f"error: --validation-fraction must be from 0 to below 1, got {args.validation_fraction}.\n")
    if not 1 <= args.members <= 16:
        parser.exit(2, f"error: --members must be 1..16 networks, got {args.members}.\n")
    if not (32 <= args.tumour_size <= 1024 and args.tumour_size % 8 == 0):
        parser.exit(2, f"error: --tumour-size must be a multiple of 8 from 32 to 1024 pixels, got {args.tumour_size}.\n")
    if not 0 <= args.context <= 8:
        parser.exit(2, f"error: --context must be 0..8 neighbouring slices on each side, got {args.context}.\n")
    _check_rerun(parser, args)
    if args.minutes is None and args.epochs is None:
        args.minutes = 30.0
    try:
        return _recipe(args, argv, data, Path(args.output).resolve())
    except USER_ERRORS as err:  # a user's data or folder: one line, no traceback
        parser.exit(2, error_line(err))


def _check_rerun(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A rerun into a started folder carries on with the plan it started with (``models/recipe.json``): another
    set-up given is refused, naming the flag and the value to rerun with."""
    plan_file = Path(args.output) / "models" / "recipe.json"
    if plan_file.is_file():  # a rerun carries on with the plan it started with
        planned = json.loads(plan_file.read_text())
        given = {"--epochs": args.epochs, "--stages": args.stages, "--context": args.context,
                 "--precision": args.precision, "--architecture": args.architecture, "--synthetic": args.synthetic,
                 "--liver-only-sources": args.liver_only_sources,
                 "--sources": " ".join(sorted(args.sources)) if args.sources else "(all)",
                 "--validation-fraction": args.validation_fraction, "--grey-match": args.grey_match,
                 "--tumour-size": args.tumour_size if args.stages == 2 else None,
                 "--tumour-epochs": args.tumour_epochs if args.stages == 2 else None,
                 # which liver-only sources are healthy matters only where they train
                 "--healthy-sources": (" ".join(sorted(args.healthy_sources)) or "(none)")
                 if args.liver_only_sources == "train" else None}
        started = {"--epochs": planned.get("epochs"), "--stages": planned.get("stages", 1),
                   "--context": planned.get("context", 0), "--precision": planned.get("precision", "fp32"),
                   "--architecture": planned.get("architecture", "three_level_unet"),
                   "--synthetic": planned.get("synthetic", 0.0),
                   "--liver-only-sources": planned.get("liver_only_sources", "leave-out"),
                   "--sources": " ".join(planned.get("sources") or []) or "(all)",
                   "--validation-fraction": planned.get("validation_fraction", 0.15),
                   "--grey-match": planned.get("grey_match", "off"),
                   # a plan from before --tumour-size trained its crops at the whole-slice size
                   "--tumour-size": planned.get("tumour_size", RECIPE["overrides"]["spatial_size"]),
                   "--tumour-epochs": planned_tumour_epochs(planned),
                   "--healthy-sources": " ".join(planned.get("healthy_sources") or []) or "(none)"}
        for name, value in given.items():
            if value is not None and value != started[name]:
                parser.exit(2, f"error: {name} {value}: {args.output} was started with {name} {started[name]} "
                               f"({plan_file}); rerun with {name} {started[name]} to carry on, or choose another "
                               "--output.\n")


def _recipe(args: argparse.Namespace, argv: list[str] | None, data: Path, out: Path) -> int:
    from workflows.machine.threads import set_threads
    from workflows.recipe.scoring import score_held_out, write_summary
    from workflows.recipe.sources import convert_sources, split_patients
    from workflows.recipe.training import train_stages

    run = RecipeRun(args, out)
    run.threads = set_threads(args.threads)
    print(f"real-data recipe in {out} ({run.threads} torch thread(s))")
    convert_sources(run, data)
    split_patients(run)
    train_stages(run)
    slice_level, patients, other_scans = score_held_out(run, data)
    write_summary(run, argv, slice_level, patients, other_scans)
    return 0


if __name__ == "__main__":
    sys.exit(main())
