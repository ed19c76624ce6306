"""Step 4 of the recipe: each stage of each network (``--members``) trained through the bundle's ``training``
workflow for the epochs planned (``--epochs``, or as many as ``--minutes`` fit on this machine), several networks
averaged in one model file."""

from __future__ import annotations

import json
import time
from pathlib import Path

from workflows.recipe.run import RECIPE, RecipeRun

__all__ = ["member_stages", "plan_epochs", "planned_tumour_epochs", "train_stages", "training_speed",
           "tumour_stage_warning"]


def train_stages(run: RecipeRun) -> None:
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
    members = [member_stages(out / "models" if k == 0 else out / "models" / f"seed_{args.seed + k}", args.stages,
                             args.tumour_size)
               for k in range(args.members)]
    chunk = read_datalist(out / "lists" / "chunk_0.json")
    slices = {"whole": len(chunk), "liver_crop": len(LiverBoxes(out / "lists", "liver_crop").rows(chunk))}
    epochs, speed = plan_epochs(run, settings, len(members[0]), slices)
    for stage, _ in members[0]:
        what = "liver + tumour on whole slices" if stage == "whole" else \
            f"the tumour on crops around the liver at {args.tumour_size}x{args.tumour_size}"
        print(f"{stage}: {what}, {epochs[stage]} epoch(s) of {slices[stage]} slices"
              + (f" ({speed:.1f} training images/s measured at {settings['spatial_size']}x{settings['spatial_size']}, "
                 f"{args.minutes:g} minutes)" if speed else " (--epochs)")
              + (f", synthetic lesions in {args.synthetic:.0%} of the samples" if args.synthetic else ""))
    train_started, train_cpu = time.time(), time.process_time()
    for k, stages in enumerate(members):
        if len(members) > 1:
            print(f"network {k + 1} of {len(members)}: seed {args.seed + k}")
        for stage, where in stages:
            run_bundle("training", config_file=config_file("train"), progress=False,
                       **{**common, "seed": args.seed + k, **where, "stage": stage, "epochs_per_chunk": epochs[stage]})
    run.member_models = [Path(stages[-1][1]["ckpt_dir"]) / "model.pt" for stages in members]
    run.warnings = [w for w in (tumour_stage_warning(Path(stages[-1][1]["ckpt_dir"])) for stages in members
                                if len(stages) == 2) if w]
    for warning in run.warnings:
        print(f"WARNING: {warning}")
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
    run.training = {"epochs": epochs["whole"], "tumour_epochs": epochs["liver_crop"] if len(members[0]) == 2 else None,
                    "speed": speed, "slices": {stage: slices[stage] for stage, _ in members[0]},
                    "minutes": spent["minutes"], "cpu_minutes": spent["cpu_minutes"],
                    "images": len(members) * sum(epochs[stage] * slices[stage] for stage, _ in members[0]),
                    "whole": {**common, "seed": args.seed, **members[0][0][1]}}


def tumour_stage_warning(ckpt_dir: Path) -> str | None:
    """A line when the tumour stage trained into ``ckpt_dir`` learned almost no tumour: its validation tumour Dice
    (the last chunk's, where the validation slices hold tumour) under :data:`RECIPE` ``["least_tumour_val_dice"]``."""
    log_file = ckpt_dir / "training_log.json"
    log = json.loads(log_file.read_text()) if log_file.is_file() else []
    value = log[-1].get("val_metric") if log else None
    if value is None or not value < RECIPE["least_tumour_val_dice"]:  # none measured (no validation, no tumour in it)
        return None
    return (f"{ckpt_dir / 'model.pt'}: the tumour stage learned almost no tumour (validation tumour Dice {value:.3f}, "
            f"under {RECIPE['least_tumour_val_dice']}); its tumours will be missed: train it longer (--tumour-epochs) "
            "or with another --seed into a new --output")


def member_stages(base: Path, stages: int, tumour_size: int) -> list[tuple[str, dict]]:
    """The bundle's training runs of one network of the set-up, its folders under ``base``: whole slices, then
    (``--stages 2``) the tumour on crops around the liver resized to ``tumour_size``, starting from the first stage's
    weights."""
    planned = [("whole", {"ckpt_dir": str(base / "whole_slices")})]
    if stages == 2:
        planned.append(("liver_crop", {"ckpt_dir": str(base / "tumour_on_liver_crop"), "spatial_size": tumour_size,
                                       "liver_model": str(base / "whole_slices" / "model.pt"), **RECIPE["tumour_stage"]}))
    return planned


def plan_epochs(run: RecipeRun, settings: dict, stages: int, slices: dict) -> tuple[dict, float | None]:
    """The epochs of each stage (``{"whole": E, "liver_crop": T}``; and the training speed probed, for
    ``--minutes``), recorded in ``models/recipe.json`` with the set-up, so a rerun carries on with the plan it started
    with (checkpoints record the epochs). The tumour stage trains ``--tumour-epochs``, by default
    :data:`RECIPE` ``["tumour_epochs_factor"]`` times the whole-slice stage's epochs."""
    from workflows.machine.atomic import write_json_atomic

    args = run.args
    plan_file = run.out / "models" / "recipe.json"
    if plan_file.exists():
        recorded = json.loads(plan_file.read_text())
        return {"whole": int(recorded["epochs"]), "liver_crop": planned_tumour_epochs(recorded)}, \
            recorded.get("images_per_second")
    tumour = args.tumour_epochs
    if args.epochs is not None:
        speed, epochs = None, args.epochs
    else:
        speed = training_speed(settings)
        # seconds of one epoch per stage: the tumour stage's crops cost the pixels of their size (192: 0.56 of a
        # whole slice's at 256; measured 0.57); 0.85 of the budget for training, the rest for loading, augmentation
        # and validation (a probe of 4 steps once read 13.2 images/s where training ran 8.6: 30 minutes became 40)
        whole = slices["whole"] / speed
        crop = slices["liver_crop"] / speed * (args.tumour_size / settings["spatial_size"]) ** 2 if stages == 2 else 0.0
        share = args.minutes * 60 * 0.85 / args.members
        if tumour is None:
            epochs = share / (whole + RECIPE["tumour_epochs_factor"] * crop)
        else:
            epochs = (share - tumour * crop) / whole
        epochs = int(max(1, min(RECIPE["max_epochs"], epochs)))
    if tumour is None:
        tumour = RECIPE["tumour_epochs_factor"] * epochs
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_file, {"epochs": epochs, "tumour_epochs": tumour if stages == 2 else None,
                                  "images_per_second": speed, "stages": args.stages,
                                  "context": args.context, "precision": args.precision,
                                  "architecture": args.architecture, "synthetic": args.synthetic,
                                  "liver_only_sources": args.liver_only_sources,
                                  "sources": sorted(args.sources) if args.sources else None,
                                  "validation_fraction": args.validation_fraction, "grey_match": args.grey_match,
                                  "healthy_sources": sorted(args.healthy_sources), "tumour_size": args.tumour_size})
    return {"whole": epochs, "liver_crop": tumour}, speed


def planned_tumour_epochs(plan: dict) -> int:
    """The tumour stage's epochs a recorded plan (``models/recipe.json``) trains: a plan from before
    ``--tumour-epochs`` trained it as many epochs as its whole-slice stage."""
    return int(plan.get("tumour_epochs") or plan["epochs"])


def training_speed(overrides: dict, out_channels: int = 2, iterations: int = 12) -> float:
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
