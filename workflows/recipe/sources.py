"""Steps 1-3 of the recipe: the labelled sources under ``--data`` found, each converted into its own slice set (a 2D
set in another window converted again with its grey levels matched; sources that label the liver only kept as such,
or left out), and the patient-level split with the recipe's held-out patients in the test list."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from workflows.recipe.run import RECIPE, RecipeRun, shown

__all__ = ["GREY_SCALED", "convert_sources", "find_real_sources", "match_liver_grey", "split_patients"]


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


def convert_sources(run: RecipeRun, data: Path) -> None:
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
        label_map = ",".join(f"{k}:{v}" for k, v in (source["label_map"] or {}).items()) or "as found"
        print(f"{source['name']}: {source['kind']} (label map {label_map})")
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
        match_liver_grey(run)
        converted = [d.with_name(f"{d.name}{GREY_SCALED}{run.grey_scaled[d.name]:g}") if d.name in run.grey_scaled
                     else d for d in converted]
    records = {v: r for d in converted if d.is_dir() for v, r in read_grey_levels(d).items()}
    groups = source_groups(records)
    for name, group in groups.items():
        print(f"liver grey level {shown(group['liver_median'], 0)} in {name} ({group['window']})")
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


def match_liver_grey(run: RecipeRun) -> None:
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


def split_patients(run: RecipeRun) -> None:
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
