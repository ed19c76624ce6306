"""The real-data recipe: from real CT that nobody here wrote to a liver + tumour model scored on held-out patients,
in one command on a laptop CPU.

``python -m workflows.realdata --data ../shared/data/real --output DIR [--minutes 30 | --epochs N] [--threads N]
[--stages 2] [--context 1] [--architecture three_level_unet] [--synthetic P] [--liver-only-sources train|leave-out]
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
4. trains through the bundle (a narrow network at 256x256, augmentation on, ``--context`` neighbouring slices on
   each side as channels): liver + tumour on whole slices (``--stage whole``), then, with ``--stages 2`` (the
   default), the tumour on crops around the liver (``--stage liver_crop``, starting from the first stage's weights),
   the two in one model file; for as many epochs as fit in ``--minutes`` on this machine, half the time each stage
   (a short probe measures the training speed), or for exactly ``--epochs N`` per stage (the same plan on any
   machine, however busy; the same weights only on one CPU family and thread count: AMD EPYC and Intel Xeon with
   AMX give other bf16 sums, and the tumour Dice moves with them); in bf16 where the CPU has it natively (``--precision auto``, the default; ``fp32``
   forces full precision); ``--synthetic P`` puts lesions synthesised inside the liver into that share of the
   training samples of both stages (:mod:`transforms.lesion_synthesis`); ``--members N`` trains N networks so
   (seeds S..S+N-1, one split; the others in ``DIR/models/seed_<s>``) and averages them in one model file
   (``DIR/models/ensemble_<N>/model.pt``, as ``python -m workflows.ensemble`` writes it; scored in
   ``DIR/ensemble_<N>/``, beside the first network's scores), at N times the training;
5. scores the test list's slices with the bundle's ``evaluating`` workflow (the reference's slice metrics, whole-slice
   stage), and segments every held-out patient with the bundle's ``inference`` workflow, as a user would: a DICOM
   series as it is (mask on the scan's grid, DICOM SEG, overlay), a 2D patient as the volume its slices stack into
   (``held_out/<id>/input``); each is scored against its labels with the LiTS metrics; so are the scans of
   :data:`OTHER_SCANS` found under DATA, from collections never trained on (``other_collections/<name>``): the
   CRLM metastasis patient, and TotalSegmentator's example, where no tumour is labelled (its predicted lesions are
   false lesions);
6. writes the model file (``DIR/models/tumour_on_liver_crop/model.pt``, both stages; it carries its settings),
   ``DIR/summary.json`` (with the epochs, the CPU model, the threads, the training images/s measured, the seconds of
   inference per held-out patient and the peak memory) and pictures.

Rerunning carries on: converted volumes, trained epochs (progress checkpoints) and finished files are kept.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from workflows.command_line import add_output, add_threads, interruptible, USER_ERRORS, error_line

__all__ = ["RECIPE", "OTHER_SCANS", "find_real_sources", "segment_and_score", "main"]

#: What the recipe trains and holds out. The test list holds a DICOM HCC patient with a real tumour (~4,000 voxels)
#: and a 2D patient; ``original_rgb`` is case 0 of ``liver_png_2d`` as published (512 RGB): one patient.
RECIPE = {
    "test": ["hcc_tace_2144_31_EQP_Ax5.00mm", "liver_png_2d-7"],
    "val": ["liver_png_2d-6"],
    "groups": {"original_rgb": "liver_png_2d-0", "liver_png_2d-0": "liver_png_2d-0"},
    "overrides": {
        "context": 1,
        "spatial_size": 256,
        "network_def#channels": [16, 32, 64, 128],
        "batch_size": 4,
        "learning_rate": 0.001,
        "lr_scheduler#gamma": 0.92,
        "checkpoint_every": 50,
        "augment": True,
        # bf16 where the CPU has it natively (fp32 elsewhere): 1.56x faster here, tumour Dice within two seeds' spread
        "precision": "auto",
    },
    "max_epochs": 40,
    # the chance a training sample gets lesions synthesised in its liver (transforms.lesion_synthesis): on HCC 2144 and
    # crlm_1100 together, mean tumour Dice 0.325 against 0.218 with real lesions only (2 seeds, Intel Xeon AMX), at
    # three times the false lesions (benchmarks page)
    "synthetic": 0.5,
    # sources that label the liver only (CHAOS, dcmqi's slices): "train" (synthetic lesions put in; the tumour of a
    # healthy source below a known 0, of the others unknown) or "leave-out". Trained so, 2 seeds (Intel Xeon AMX): tumour
    # Dice on HCC 2144 + crlm_1100 0.427 against 0.333 left out, the liver of case 7, crlm_1100 and TotalSegmentator's
    # example higher, fewer false lesions (benchmarks page)
    "liver_only_sources": "train",
    # liver-only sources whose livers hold no tumour by design, trained (with --liver-only-sources train) as tumour-free:
    # a known 0 in the tumour channel, a synthetic lesion a known 1 (the set-up of Hu et al., CVPR 2023)
    "healthy_sources": {"chaos_ct_p1": "CHAOS CT: potential liver donors, livers without tumours or lesions (Kavur et "
                                       "al., Medical Image Analysis 69, 2021)"},
    # the tumour stage: the same network on crops around the liver, jittered (shift and scale) in training
    "tumour_stage": {"stage": "liver_crop", "crop_margin_mm": 15.0},
}


#: the folder suffix of a 2D set converted again with its grey levels scaled (``--grey-match liver``)
GREY_SCALED = "_grey_x"


def _mask_values(masks_dir: Path, probe: int = 40) -> set[int]:
    values: set[int] = set()
    files = sorted(p for p in masks_dir.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    for path in files[:: max(1, len(files) // probe)]:
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is not None:
            values |= set(np.unique(mask).tolist())
    return values


def find_real_sources(data: Path, only: list[str] | None = None) -> tuple[list[dict], dict[str, str]]:
    """The labelled sources directly under ``data`` (``{"name", "path", "kind", "label_map"}``; only the folders
    named in ``only`` when given) and, per folder left out, the reason."""
    from workflows.data.discovery import find_volume_sources

    sources, notes = [], {}
    folders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    missing = sorted(set(only or ()) - {p.name for p in folders})
    if missing:
        raise ValueError(f"--sources {' '.join(missing)}: no such folder in {data} (it holds "
                         f"{', '.join(p.name for p in folders) or 'none'}).")
    for folder in folders:
        if only is not None and folder.name not in only:
            notes[folder.name] = "not among --sources"
            continue
        found, _ = find_volume_sources(folder)
        studies = [s for s in found if s.kind == "dicom" and s.segs]
        sets = [s for s in found if s.kind == "2d" and s.labelled]
        if studies:
            sources.append({"name": folder.name, "path": folder, "kind": "DICOM study with SEG", "label_map": None})
        elif sets:
            values = _mask_values(sets[0].slices[0].mask.parent)
            label_map = {127: 1, 255: 2} if {127, 255} <= values else None
            sources.append({"name": folder.name, "path": folder, "kind": "2D set", "label_map": label_map})
        else:
            notes[folder.name] = "no DICOM SEG or 2D masks (labels made by a model, or none)"
    return sources, notes


def _training_speed(overrides: dict, out_channels: int = 2, iterations: int = 12) -> float:
    """Images per second of one training step at the recipe's network size on this machine (a short probe), in the
    precision the training will use."""
    import torch

    from networks import BCEDiceLoss, build_network
    from workflows.machine.precision import AutocastInferer

    size, batch = overrides["spatial_size"], overrides["batch_size"]
    in_channels = 2 * int(overrides.get("context", 0)) + 1
    network = build_network(overrides.get("architecture", "three_level_unet"), spatial_dims=2, in_channels=in_channels,
                            out_channels=out_channels, channels=overrides["network_def#channels"], spatial_size=size)
    optimizer, loss = torch.optim.Adam(network.parameters(), 1e-3), BCEDiceLoss()
    x, y = torch.rand(batch, in_channels, size, size), (torch.rand(batch, out_channels, size, size) > 0.5).float()
    inferer = AutocastInferer(overrides["precision"])
    for step in range(iterations + 1):
        if step == 1:
            started = time.perf_counter()
        optimizer.zero_grad()
        loss(inferer(x, network), y).backward()
        optimizer.step()
    return iterations * batch / (time.perf_counter() - started)


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@interruptible
def main(argv: list[str] | None = None) -> int:
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
    if args.epochs is not None and args.epochs < 1:
        parser.exit(2, f"error: --epochs must be a whole number >= 1, got {args.epochs}.\n")
    from networks import NETWORKS  # after --help, which answers without torch

    if args.architecture not in NETWORKS:
        parser.exit(2, f"error: --architecture must be one of {', '.join(NETWORKS)}, got {args.architecture!r}.\n")
    if not 0 <= args.synthetic <= 1:  # nan fails too
        parser.exit(2, f"error: --synthetic must be a chance from 0 to 1, got {args.synthetic}.\n")
    if not 0 <= args.validation_fraction < 1:  # nan fails too
        parser.exit(2, f"error: --validation-fraction must be from 0 to below 1, got {args.validation_fraction}.\n")
    if not 1 <= args.members <= 16:
        parser.exit(2, f"error: --members must be 1..16 networks, got {args.members}.\n")
    if not 0 <= args.context <= 8:
        parser.exit(2, f"error: --context must be 0..8 neighbouring slices on each side, got {args.context}.\n")
    plan_file = Path(args.output) / "models" / "recipe.json"
    if plan_file.is_file():  # a rerun carries on with the plan it started with
        planned = json.loads(plan_file.read_text())
        given = {"--epochs": args.epochs, "--stages": args.stages, "--context": args.context,
                 "--precision": args.precision, "--architecture": args.architecture, "--synthetic": args.synthetic,
                 "--liver-only-sources": args.liver_only_sources,
                 "--sources": " ".join(sorted(args.sources)) if args.sources else "(all)",
                 "--validation-fraction": args.validation_fraction, "--grey-match": args.grey_match,
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
                   "--healthy-sources": " ".join(planned.get("healthy_sources") or []) or "(none)"}
        for name, value in given.items():
            if value is not None and value != started[name]:
                parser.exit(2, f"error: {name} {value}: {args.output} was started with {name} {started[name]} "
                               f"({plan_file}); rerun with {name} {started[name]} to carry on, or choose another "
                               "--output.\n")
    if args.minutes is None and args.epochs is None:
        args.minutes = 30.0
    try:
        return _recipe(args, argv, data, Path(args.output).resolve())
    except USER_ERRORS as err:  # a user's data or folder: one line, no traceback
        parser.exit(2, error_line(err))


@dataclass
class RecipeRun:
    """What the recipe's steps hand on: the run's folder, its settings and what each step found or made."""

    args: argparse.Namespace
    out: Path
    threads: int = 0
    started: float = field(default_factory=time.time)
    cpu_started: float = field(default_factory=time.process_time)
    sources: list = field(default_factory=list)
    notes_by_folder: dict = field(default_factory=dict)
    kept: list = field(default_factory=list)
    liver_only: set = field(default_factory=set)
    healthy: set = field(default_factory=set)
    left_out: dict = field(default_factory=dict)
    grey_scaled: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    plan: object = None
    settings: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    model: Path | None = None
    member_models: list = field(default_factory=list)

    @property
    def scored(self) -> Path:
        """Where the held-out scans are segmented and scored: for several networks, beside the first one's scores."""
        return self.out / f"ensemble_{len(self.member_models)}" if len(self.member_models) > 1 else self.out


def _recipe(args: argparse.Namespace, argv: list[str] | None, data: Path, out: Path) -> int:
    from workflows.machine.threads import set_threads

    run = RecipeRun(args, out)
    run.threads = set_threads(args.threads)
    print(f"real-data recipe in {out} ({run.threads} torch thread(s))")
    _convert_sources(run, data)
    _split_patients(run)
    _train_stages(run)
    slice_level, patients, other_scans = _score_held_out(run, data)
    _write_summary(run, argv, slice_level, patients, other_scans)
    return 0


def _convert_sources(run: RecipeRun, data: Path) -> None:
    """Steps 1 and 2: the labelled sources under ``data``, each converted into its own slice set (the volumes of a
    source that labels the liver only noted, or the source left out), and the sources' liver grey levels compared."""
    from workflows.data.conversion import ConvertSettings, convert
    from workflows.data.grey_levels import disagreeing_sources, read_grey_levels, source_groups
    from workflows.data.slice_set import read_slice_sets

    print("\n== 1/6 finding labelled sources")
    run.sources, run.notes_by_folder = find_real_sources(data, run.args.sources)
    for folder, reason in run.notes_by_folder.items():
        print(f"left out {folder}: {reason}")
    for source in run.sources:
        shown = ",".join(f"{k}:{v}" for k, v in (source["label_map"] or {}).items()) or "as found"
        print(f"{source['name']}: {source['kind']} (label map {shown})")
    if not run.sources:
        raise ValueError(f"--data {data}: no labelled source in it (DICOM studies with SEG objects beside their "
                         "series, or 2D sets with images/ and masks/); point --data at ../shared/data/real or such.")

    print("\n== 2/6 converting each source into its own slice set")
    tumour_sources = 0
    for source in run.sources:
        target = run.out / "slices" / source["name"]
        summary = convert(source["path"], target, ConvertSettings(label_map=source["label_map"]), progress=False)
        if summary.failed:
            print(f"{source['name']}: {len(summary.failed)} volume(s) failed: {summary.failed}")
        rows = read_slice_sets([str(target)])
        tumour = [r["tumor_pixels"] for r in rows if r["mask"]]
        volumes = {r["volume_id"] for r in rows}
        if not tumour or all(t is None for t in tumour) or not any(tumour):
            if run.args.liver_only_sources == "leave-out":
                run.left_out[source["name"]] = ("labels the liver only (--liver-only-sources leave-out)")
                print(f"left out {source['name']}: {run.left_out[source['name']]}")
                continue
            run.kept.append(target)
            if source["name"] in run.args.healthy_sources:
                run.healthy |= volumes
                print(f"{source['name']}: {len(volumes)} volume(s), {len(rows)} slices; labels the liver only, and its "
                      "livers hold no tumour (--healthy-sources): trains the liver and a tumour-free liver"
                      + (" (with synthetic lesions put in)" if run.args.synthetic else ""))
                continue
            run.liver_only |= volumes
            print(f"{source['name']}: {len(volumes)} volume(s), {len(rows)} slices; labels the liver only: trains the "
                  "liver, its tumour unknown (left out of the loss" + (", except where a synthetic lesion is put)"
                                                                        if run.args.synthetic else ")"))
            continue
        run.kept.append(target)
        tumour_sources += 1
        if source["name"] in run.args.healthy_sources:
            print(f"--healthy-sources {source['name']}: it labels tumours itself, so its own labels are used")
        print(f"{source['name']}: {len(volumes)} volume(s), {len(rows)} slices, {sum(bool(t) for t in tumour)} with tumour")
    converted = [run.out / "slices" / s["name"] for s in run.sources]
    if run.args.grey_match == "liver":
        _match_liver_grey(run)
        converted = [d.with_name(f"{d.name}{GREY_SCALED}{run.grey_scaled[d.name]:g}") if d.name in run.grey_scaled
                     else d for d in converted]
    records = {v: r for d in converted if d.is_dir() for v, r in read_grey_levels(d).items()}
    groups = source_groups(records)
    for name, group in groups.items():
        print(f"liver grey level {_f(group['liver_median'], 0)} in {name} ({group['window']})")
    everything = disagreeing_sources(groups)
    kept_groups = source_groups({v: r for d in run.kept for v, r in read_grey_levels(d).items()})
    if everything:
        print(f"WARNING (all sources): {everything}")
    if disagreeing_sources(kept_groups):
        print(f"WARNING (sources trained on): {disagreeing_sources(kept_groups)}")
    elif everything:
        print("the sources trained on agree; the disagreeing ones are among those left out")
    if not tumour_sources:
        raise ValueError(f"--data {data}: no source labels liver and tumour (DICOM studies with SEG objects, or 2D "
                         "sets whose masks mark lesions); the recipe trains both, so it needs at least one.")


def _match_liver_grey(run: RecipeRun) -> None:
    """2D sets trained on whose liver grey disagrees with the scans' (another window) converted again, their grey
    levels scaled so that their liver's median matches (``DIR/slices/<source>_grey_x<F>``, trained on in their place;
    the set as found stays beside it)."""
    from workflows.data.conversion import ConvertSettings, convert
    from workflows.data.grey_levels import liver_grey_scale, read_grey_levels, source_groups

    # the held-out patients' grey levels are not looked at: the factor is the training data's alone
    groups = source_groups({v: r for d in run.kept for v, r in read_grey_levels(d).items() if v not in RECIPE["test"]})
    for index, folder in enumerate(list(run.kept)):
        names = set(source_groups(read_grey_levels(folder)))
        factor = liver_grey_scale(groups, next(iter(names))) if len(names) == 1 else None
        if not factor:
            continue
        source = next(s for s in run.sources if s["name"] == folder.name)
        scaled = folder.with_name(f"{folder.name}{GREY_SCALED}{factor:g}")
        convert(source["path"], scaled, ConvertSettings(label_map=source["label_map"], grey_scale=factor),
                progress=False)
        run.kept[index] = scaled
        run.grey_scaled[folder.name] = factor
        print(f"{folder.name}: liver grey {groups[next(iter(names))]['liver_median']:.0f} against the scans' "
              f"(another window): converted again with its grey levels x{factor:g} into {scaled}")


def _split_patients(run: RecipeRun) -> None:
    """Step 3: the patient-level split, the held-out patients of :data:`RECIPE` in the test list."""
    from workflows.data.slice_set import read_slice_sets
    from workflows.data.splitting import plan_split, write_split

    print("\n== 3/6 splitting by patient")
    # a healthy source's 0/255 masks say "no tumour" for certain: its slices count as labelled tumour-free
    run.rows = [{**r, "tumor_pixels": 0} if r["volume_id"] in run.healthy and r["mask"] else r
                for r in read_slice_sets([str(d) for d in run.kept])]
    present = {r["volume_id"] for r in run.rows}
    test, val = [v for v in RECIPE["test"] if v in present], [v for v in RECIPE["val"] if v in present]
    groups_present = {k: v for k, v in RECIPE["groups"].items() if k in present}
    run.plan = plan = plan_split(run.rows, target="both", positives=10**9, negatives=10**9, seed=run.args.seed,
                                 val_volumes=val or None, test_volumes=test or None,
                                 val_fraction=run.args.validation_fraction,
                                 test_fraction=0.15, chunk_size=10**9, val_balanced=400, groups=groups_present,
                                 liver_only=run.liver_only)
    write_split(plan, run.out / "lists", run.kept)
    for message in plan.messages:
        print(message)
    used = plan.counts["train_used"]
    print(f"train {plan.volumes['train']}; validation {plan.volumes['val']}; test {plan.volumes['test']}")
    print(f"training on {used['positive']} slices with liver ({used['with_tumour']} with tumour) and "
          f"{used['negative']} without")


def _train_stages(run: RecipeRun) -> None:
    """Step 4: each stage of each network (``--members``) through the bundle's ``training`` workflow, for the epochs
    planned; several networks are then averaged in one model file."""
    from monai.bundle import run as run_bundle

    from workflows.bundle import config_file
    from workflows.data.liver_boxes import LiverBoxes
    from workflows.engine.model_file import combine_model_files
    from workflows.engine.training_checks import read_datalist
    from workflows.machine.atomic import write_json_atomic

    args, out = run.args, run.out
    print("\n== 4/6 training through the bundle")
    run.settings = settings = {**RECIPE["overrides"], "context": args.context, "precision": args.precision,
                               "architecture": args.architecture, "synthetic_lesions": args.synthetic}
    common = {"dataset_dir": str(out / "lists"), "threads": run.threads, **settings}
    members = [_member_stages(out / "models" if k == 0 else out / "models" / f"seed_{args.seed + k}", args.stages)
               for k in range(args.members)]
    chunk = read_datalist(out / "lists" / "chunk_0.json")
    slices = {"whole": len(chunk), "liver_crop": len(LiverBoxes(out / "lists", "liver_crop").rows(chunk))}
    epochs, speed = _plan_epochs(run, settings, len(members[0]), slices)
    for stage, _ in members[0]:
        what = "liver + tumour on whole slices" if stage == "whole" else "the tumour on crops around the liver"
        print(f"{stage}: {what}, {epochs} epoch(s) of {slices[stage]} slices"
              + (f" ({speed:.1f} training images/s measured at {settings['spatial_size']}x{settings['spatial_size']}, "
                 f"{args.minutes:g} minutes)" if speed else " (--epochs)")
              + (f", synthetic lesions in {args.synthetic:.0%} of the samples" if args.synthetic else ""))
    train_started, train_cpu = time.time(), time.process_time()
    for k, stages in enumerate(members):
        if len(members) > 1:
            print(f"network {k + 1} of {len(members)}: seed {args.seed + k}")
        for stage, where in stages:
            run_bundle("training", config_file=config_file("train"), progress=False,
                       **{**common, "seed": args.seed + k, **where, "stage": stage, "epochs_per_chunk": epochs})
    run.member_models = [Path(stages[-1][1]["ckpt_dir"]) / "model.pt" for stages in members]
    run.model = run.member_models[0]
    if len(members) > 1:  # their networks averaged in one model file, as python -m workflows.ensemble writes it
        run.model = combine_model_files(run.member_models, out / "models" / f"ensemble_{len(members)}" / "model.pt")
        print(f"{run.model}: the {len(members)} networks averaged per stage")
    # the time of every run that trained into this folder: a rerun that carries on (or finds every epoch done) adds
    # its own, so the summary and the release record keep the first run's training time
    time_file = out / "models" / "training_time.json"
    spent = json.loads(time_file.read_text()) if time_file.is_file() else {"minutes": 0.0, "cpu_minutes": 0.0}
    spent = {"minutes": spent["minutes"] + (time.time() - train_started) / 60,
             "cpu_minutes": spent["cpu_minutes"] + (time.process_time() - train_cpu) / 60}
    write_json_atomic(time_file, spent)
    run.training = {"epochs": epochs, "speed": speed, "slices": {stage: slices[stage] for stage, _ in members[0]},
                    "minutes": spent["minutes"], "cpu_minutes": spent["cpu_minutes"],
                    "images": len(members) * sum(epochs * slices[stage] for stage, _ in members[0]),
                    "whole": {**common, "seed": args.seed, **members[0][0][1]}}


def _member_stages(base: Path, stages: int) -> list[tuple[str, dict]]:
    """The bundle's training runs of one network of the set-up, its folders under ``base``: whole slices, then
    (``--stages 2``) the tumour on crops around the liver, starting from the first stage's weights."""
    planned = [("whole", {"ckpt_dir": str(base / "whole_slices")})]
    if stages == 2:
        planned.append(("liver_crop", {"ckpt_dir": str(base / "tumour_on_liver_crop"),
                                       "liver_model": str(base / "whole_slices" / "model.pt"), **RECIPE["tumour_stage"]}))
    return planned


def _plan_epochs(run: RecipeRun, settings: dict, stages: int, slices: dict) -> tuple[int, float | None]:
    """The epochs per stage (and the training speed probed, for ``--minutes``), recorded in ``models/recipe.json``
    with the set-up, so a rerun carries on with the plan it started with (checkpoints record the epochs)."""
    from workflows.machine.atomic import write_json_atomic

    args = run.args
    plan_file = run.out / "models" / "recipe.json"
    if plan_file.exists():
        recorded = json.loads(plan_file.read_text())
        return int(recorded["epochs"]), recorded.get("images_per_second")
    if args.epochs is not None:
        speed, epochs = None, args.epochs
    else:
        speed = _training_speed(settings)
        # the budget split evenly between the stages and the networks; 0.85 for loading, augmentation and
        # validation: a probe of 4 steps once read 13.2 images/s where training ran 8.6 (30 minutes became 40)
        share = args.minutes * 60 * 0.85 / (stages * args.members)
        epochs = int(max(1, min(RECIPE["max_epochs"], share * speed // max(1, max(slices.values())))))
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_file, {"epochs": epochs, "images_per_second": speed, "stages": args.stages,
                                  "context": args.context, "precision": args.precision,
                                  "architecture": args.architecture, "synthetic": args.synthetic,
                                  "liver_only_sources": args.liver_only_sources,
                                  "sources": sorted(args.sources) if args.sources else None,
                                  "validation_fraction": args.validation_fraction, "grey_match": args.grey_match,
                                  "healthy_sources": sorted(args.healthy_sources)})
    return epochs, speed


def _score_held_out(run: RecipeRun, data: Path) -> tuple[dict, dict, dict]:
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


#: scans from collections the recipe never trains on, segmented and scored after training: ``name: (scan, label,
#: label map to LiTS or None, what it is)``, paths under ``--data``
OTHER_SCANS = {
    "crlm_1100": ("crlm_1100/ct.nii.gz", "crlm_1100/label.nii.gz", None,
                  "another collection (colorectal metastasis, portal venous), never trained on"),
    "totalseg_example": ("totalseg_example/ct_3mm.nii.gz", "totalseg_example/seg_3mm.nii.gz", {5: 1},
                         "no tumour labelled (its liver label is a model's): predicted lesions count as false"),
}


def segment_and_score(model: Path, threads: int, scan: Path, truth: Path, pred_dir: Path) -> dict:
    """One scan through the bundle's ``inference`` workflow with ``model`` into ``pred_dir``, scored against
    ``truth``; the figures carry the scan and truth they came from."""
    from monai.bundle import run as run_bundle

    from workflows.bundle import config_file
    from workflows.engine.volume_evaluation import evaluate_volumes, held_out_scores

    started = time.perf_counter()
    run_bundle("inference", config_file=config_file("inference"), input=str(scan), output_dir=str(pred_dir),
               ckpt_file=str(model), threads=threads)
    seconds = time.perf_counter() - started
    scored = evaluate_volumes(next(pred_dir.glob("*_seg.nii.gz")), truth, pred_dir / "evaluation", progress=False)
    return {**held_out_scores(scored), "inference_seconds": round(seconds, 1), "scan": str(scan), "truth": str(truth)}


def _write_summary(run: RecipeRun, argv, slice_level: dict, patients: dict, other_scans: dict) -> None:
    """Step 6: ``summary.json``, the held-out picture, and the figures printed."""
    from workflows.data.pictures import save_figure
    from workflows.machine.atomic import write_json_atomic
    from workflows.machine.precision import cpu_model

    args, out, training = run.args, run.out, run.training
    print("\n== 6/6 summary")
    for kind, scores_of in (("held-out", patients), ("other collection", other_scans)):
        for volume_id, scores in scores_of.items():
            print(f"{kind} {volume_id}: liver Dice {_f(scores['liver_dice'])}, tumour Dice {_f(scores['tumour_dice'])}, "
                  f"lesions found {_f(scores.get('lesion_recall'))}, false lesions {scores.get('false_lesions')} "
                  f"({scores['where']})")
    summary = {
        "command": "python -m workflows.realdata " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": run.threads, "cpu_model": cpu_model(), "plan": "--epochs" if args.epochs is not None else "--minutes",
        "stages": args.stages, "context": args.context, "precision": args.precision, "architecture": args.architecture,
        "members": args.members, "member_models": [str(m) for m in run.member_models],
        "synthetic": args.synthetic, "liver_only_sources": args.liver_only_sources,
        "liver_only_volumes": sorted(run.liver_only), "healthy_volumes": sorted(run.healthy),
        "grey_match": args.grey_match, "grey_scaled": run.grey_scaled,
        "probe_images_per_second": round(training["speed"], 2) if training["speed"] is not None else None,
        "epochs": training["epochs"], "slices_per_epoch": training["slices"],
        "training_images_per_second": round(training["images"] / max(1e-9, training["minutes"] * 60), 2),
        "training_minutes": round(training["minutes"], 1), "training_cpu_minutes": round(training["cpu_minutes"], 1),
        "wall_minutes": round((time.time() - run.started) / 60, 1),
        "cpu_minutes": round((time.process_time() - run.cpu_started) / 60, 1),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "sources": [s["name"] for s in run.sources], "left_out": {**run.left_out, **run.notes_by_folder},
        "split": run.plan.volumes, "held_out": patients, "other_collections": other_scans,
        "slice_level_test": slice_level["channels"], "model": str(run.model), "settings": run.settings,
    }
    write_json_atomic(out / "summary.json", json.loads(json.dumps(summary, default=str)))
    _picture({**patients, **other_scans}, run.scored / "held_out_dice.png", save_figure)
    print(f"training {training['minutes']:.1f} min, whole recipe {summary['wall_minutes']} min wall, "
          f"{summary['cpu_minutes']} CPU-min; model {run.model}; summary {out / 'summary.json'}; "
          f"pictures {run.scored / 'held_out'} (overlays) and {run.scored / 'held_out_dice.png'}")


def _picture(patients: dict, path: Path, save_figure) -> None:
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


if __name__ == "__main__":
    sys.exit(main())
