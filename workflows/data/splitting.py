"""Patient-level split and balanced training chunks, as MONAI datalists: the library behind
``python -m workflows.split`` (see there for the files written)."""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transforms import TARGET_CHANNELS

from workflows.machine.atomic import write_json_atomic

__all__ = ["SPLITS", "TARGETS", "SplitPlan", "patient_groups", "read_groups", "split_volumes", "check_disjoint",
           "plan_split", "write_split", "slices_dirs_of"]

SPLITS = ("train", "val", "test")
TARGETS = tuple(TARGET_CHANNELS)


def _is_positive(row: dict, target: str) -> bool:
    """A slice is positive when it holds the target; for ``both``, when it holds liver (tumour lies in liver)."""
    return bool(row["tumor_pixels"] if target == "tumor" else row["liver_pixels"])  # manifest counts (LiTS labels)


def check_disjoint(volumes: dict[str, list[str]]) -> None:
    """Raise ``ValueError`` naming the volumes that sit in more than one split."""
    where: dict[str, list[str]] = defaultdict(list)
    for split, ids in volumes.items():
        for volume_id in ids:
            where[volume_id].append(split)
    shared = {v: s for v, s in where.items() if len(s) > 1}
    if shared:
        shown = "; ".join(f"volume {v} in {' and '.join(s)}" for v, s in sorted(shared.items()))
        raise ValueError(f"refusing to write a split whose volumes overlap: {shown}.")


def patient_groups(rows: list[dict], groups: dict[str, str] | None = None) -> dict[str, str]:
    """The patient of each volume: ``groups`` (volume id -> patient id, from ``--groups FILE``) first, then the
    DICOM PatientID conversion recorded, else the volume is its own patient."""
    groups = groups or {}
    patient: dict[str, str] = {}
    for row in rows:
        volume = row["volume_id"]
        if volume not in patient:
            recorded = row.get("patient_id") or ""
            patient[volume] = groups.get(volume) or (f"PatientID {recorded}" if recorded else f"volume {volume}")
    unknown = sorted(set(groups) - set(patient))
    if unknown:
        raise ValueError(f"--groups names volume(s) {', '.join(unknown[:5])} that are not in the slice set(s).")
    return patient


def read_groups(path: str | os.PathLike) -> dict[str, str]:
    """``--groups FILE``: a CSV with columns ``volume_id,patient_id`` or a JSON object {volume id: patient id}."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a pipe would block the read forever
        raise ValueError(f"--groups {path}: not a regular file (a folder, pipe or device); give a CSV or JSON file.")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--groups {path}: cannot be read ({getattr(err, 'strerror', None) or 'not text'}).") from None
    if path.suffix.lower() == ".json":
        try:
            groups = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--groups {path}: not valid JSON ({err.msg}, line {err.lineno}).") from None
        if not isinstance(groups, dict):
            raise ValueError(f"--groups {path}: expected an object {{volume id: patient id}}.")
        return {str(k): str(v) for k, v in groups.items()}
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"volume_id", "patient_id"} <= set(reader.fieldnames):
        raise ValueError(f"--groups {path}: a CSV needs the columns volume_id,patient_id (found "
                         f"{','.join(reader.fieldnames or [])}).")
    groups: dict[str, str] = {}
    for row in reader:
        volume, patient = (row.get("volume_id") or "").strip(), (row.get("patient_id") or "").strip()
        if not volume or not patient:
            raise ValueError(f"--groups {path}: line {reader.line_num} has no {'volume_id' if not volume else 'patient_id'}"
                             " (a short or empty row); give both on every line.")
        if groups.setdefault(volume, patient) != patient:
            raise ValueError(f"--groups {path}: volume {volume} is given two patients ({groups[volume]} and {patient}, "
                             f"line {reader.line_num}); keep one.")
        groups[volume] = patient
    return groups


def split_volumes(
    rows: list[dict], val_fraction: float, test_fraction: float, seed: int, val_volumes: list[str] | None = None, test_volumes: list[str] | None = None,
    groups: dict[str, str] | None = None,
) -> dict[str, list[str]]:
    """Assign each volume to train / val / test by patient: the volumes of one patient (``groups``, else the
    recorded DICOM PatientID) move together. Patients are stratified by whether they hold tumour, shuffled with
    ``seed``, and dealt to the splits in proportion; ``val_volumes`` / ``test_volumes`` fix them by id (with the
    other volumes of their patients)."""
    patient = patient_groups(rows, groups)
    members: dict[str, list[str]] = defaultdict(list)
    for volume in patient:
        members[patient[volume]].append(volume)
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_patient[patient[row["volume_id"]]].append(row)
    check_disjoint({"val": list(val_volumes or []), "test": list(test_volumes or [])})
    fixed_patients = {split: sorted({patient[v] for v in ids if v in patient})
                      for split, ids in (("val", val_volumes or []), ("test", test_volumes or []))}
    unknown = sorted(set((val_volumes or []) + (test_volumes or [])) - set(patient))
    if unknown:
        raise ValueError(f"volume(s) {', '.join(unknown)} named for a split are not in the manifest.")
    clash = set(fixed_patients["val"]) & set(fixed_patients["test"])
    if clash:
        raise ValueError(f"--val-volumes and --test-volumes name volumes of one patient ({', '.join(sorted(clash))}); "
                         "a patient sits in one split.")
    by_split = _split_units(by_patient, val_fraction, test_fraction, seed, fixed_patients["val"] or None,
                            fixed_patients["test"] or None)
    out = {split: sorted((v for p in ids for v in members[p]), key=lambda v: (len(v), v))
           for split, ids in by_split.items()}
    check_disjoint(out)
    return out


def _split_units(
    by_volume: dict[str, list[dict]], val_fraction: float, test_fraction: float, seed: int,
    val_volumes: list[str] | None = None, test_volumes: list[str] | None = None,
) -> dict[str, list[str]]:
    """Deal units (patients) to the splits, stratified by tumour, in a seeded order."""
    ids = sorted(by_volume, key=lambda v: (len(v), v))
    fixed = {"val": list(val_volumes or []), "test": list(test_volumes or [])}
    free = [v for v in ids if v not in fixed["val"] and v not in fixed["test"]]

    def stratum(volume_id: str) -> int:  # with or without tumour, so validation sees both kinds of patient
        return int(any(r["tumor_pixels"] for r in by_volume[volume_id]))

    rng = np.random.default_rng(seed)
    splits = {"train": [], "val": list(fixed["val"]), "test": list(fixed["test"])}
    n_free = len(free)
    want = {
        "val": 0 if val_volumes else _share(n_free, val_fraction),
        "test": 0 if test_volumes else _share(n_free, test_fraction),
    }
    if want["val"] + want["test"] >= n_free and n_free:
        raise ValueError(f"{n_free} patient(s) cannot give {want['val']} validation and {want['test']} test patients "
                         "and keep any for training; lower --val-fraction / --test-fraction.")
    for group in (0, 1):
        members = [v for v in free if stratum(v) == group]
        members = [members[i] for i in rng.permutation(len(members))]
        share = len(members) / n_free if n_free else 0
        for split in ("val", "test"):
            take = round(want[split] * share)
            splits[split] += members[:take]
            members = members[take:]
        splits["train"] += members
    # rounding per stratum can miss the total by one: move volumes from train to reach it, in a seeded order
    for split in ("val", "test"):
        current = len(splits[split]) - len(fixed[split])
        while current < want[split] and len(splits["train"]) > 1:
            splits[split].append(splits["train"].pop(int(rng.integers(len(splits["train"])))))
            current += 1
        while current > want[split]:
            splits["train"].append(splits[split].pop())
            current -= 1
    return {split: sorted(splits[split], key=lambda v: (len(v), v)) for split in SPLITS}


def _share(n: int, fraction: float) -> int:
    if not 0 <= fraction < 1:
        raise ValueError(f"split fractions must be in [0, 1), got {fraction!r}.")
    return max(1, round(n * fraction)) if fraction > 0 and n > 1 else 0


@dataclass
class SplitPlan:
    target: str
    seed: int
    volumes: dict[str, list[str]]
    chunks: list[list[dict]]
    val: list[dict]
    val_balanced: list[dict]
    test: list[dict]
    counts: dict = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


def plan_split(
    rows: list[dict], target: str = "liver", positives: int = 10_000, negatives: int = 10_000,
    val_fraction: float = 0.2, test_fraction: float = 0.0, chunk_size: int = 2_000, seed: int = 0,
    val_balanced: int = 2_000, val_volumes: list[str] | None = None, test_volumes: list[str] | None = None,
    conversion: dict | list[dict] | None = None, groups: dict[str, str] | None = None,
    liver_only: set[str] | None = None,
) -> SplitPlan:
    """Everything ``write_split`` writes, decided from the manifest rows; deterministic for a seed.
    ``conversion`` is the slice sets' ``convert.json`` (what their masks hold); ``groups`` maps volume ids to
    patients. ``liver_only``: volumes whose source labels the liver but not tumours (their masks' tumour count as
    unknown, as a 0/255 set's). With ``target="both"``, volumes whose tumour is unknown train only (they cannot
    validate or test a tumour), and their datalist entries say ``"tumour_labelled": false``, so the loss leaves their
    tumour channel out inside the liver."""
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}.")
    if chunk_size < 1 or positives < 0 or negatives < 0 or positives + negatives < 1:
        raise ValueError(f"need --chunk-size >= 1 and some slices to sample, got chunk size {chunk_size}, "
                         f"{positives} positives, {negatives} negatives.")
    labelled = [{**r, "tumor_pixels": None} if r["volume_id"] in (liver_only or ()) else r for r in rows if r["mask"]]
    if not labelled:
        raise ValueError("the slice set has no masks; a split for training needs labelled slices.")
    if target != "liver" and all(r["tumor_pixels"] is None for r in labelled):
        raise ValueError("the slice set's masks do not tell tumour apart (a Kaggle-style 0/255 set): use --target liver.")
    unknown = sorted({r["volume_id"] for r in labelled if r["tumor_pixels"] is None}) if target == "both" else []
    named = sorted(set(unknown) & set((val_volumes or []) + (test_volumes or [])))
    if named:
        raise ValueError(f"volume(s) {', '.join(named)} label the liver but not tumours: they cannot validate or test a "
                         "liver + tumour model; name volumes whose masks mark tumours, or split with --target liver.")
    for settings in (conversion if isinstance(conversion, list) else [conversion or {}]):
        converted_target = settings.get("target", "both")
        if converted_target != "both" and converted_target != target:
            raise ValueError(f"the slice set's masks were converted with --target {converted_target}; they cannot "
                             f"train --target {target}. Convert again with --target both (the default) or {target}.")
    volumes = split_volumes([r for r in labelled if r["volume_id"] not in unknown], val_fraction, test_fraction, seed,
                            val_volumes, test_volumes, groups)
    volumes["train"] = sorted(volumes["train"] + unknown, key=lambda v: (len(v), v))
    rng = np.random.default_rng(seed)
    by_split = {split: [r for r in labelled if r["volume_id"] in set(ids)] for split, ids in volumes.items()}
    messages = []

    train = by_split["train"]
    pos = [r for r in train if _is_positive(r, target)]
    neg = [r for r in train if not _is_positive(r, target)]
    # a scarce class is used whole and said so; the other class is not shrunk to match (that threw data away)
    n_pos, n_neg = min(positives, len(pos)), min(negatives, len(neg))
    if (n_pos, n_neg) != (positives, negatives):
        messages.append(
            f"asked for {positives} positive + {negatives} negative training slices; the training volumes hold "
            f"{len(pos)} positive and {len(neg)} negative: using {n_pos} + {n_neg} (all there is of the scarcer kind)."
        )
    if n_pos + n_neg == 0:
        raise ValueError(
            f"the training volumes hold {len(pos)} positive and {len(neg)} negative slices: a sample of "
            f"{positives} positive + {negatives} negative is empty. Ask for the kind they hold, or add volumes.")
    if target == "both":  # tumour-aware: slices with tumour first, up to half the positives, then liver-only ones
        with_tumour = [r for r in pos if r["tumor_pixels"]]
        liver_only = [r for r in pos if not r["tumor_pixels"]]
        take = min(len(with_tumour), max(n_pos // 2, n_pos - len(liver_only)))
        pos_pick = [with_tumour[i] for i in rng.permutation(len(with_tumour))[:take]]
        pos_pick += [liver_only[i] for i in rng.permutation(len(liver_only))[:n_pos - take]]
        pos_pick = [pos_pick[i] for i in rng.permutation(len(pos_pick))]
    else:
        pos_pick = [pos[i] for i in rng.permutation(len(pos))[:n_pos]]
    neg_pick = [neg[i] for i in rng.permutation(len(neg))[:n_neg]]
    # interleave positives and negatives evenly, cut into chunks of exactly chunk_size (the last may be short),
    # so every chunk holds its share of both; then shuffle within each chunk
    slots = sorted([((i + 0.5) / n_pos, 0, i) for i in range(n_pos)] + [((j + 0.5) / n_neg, 1, j) for j in range(n_neg)])
    ordered = [pos_pick[i] if kind == 0 else neg_pick[i] for _, kind, i in slots]
    chunks = []
    for start in range(0, len(ordered), chunk_size):
        part = ordered[start:start + chunk_size]
        chunks.append([part[i] for i in rng.permutation(len(part))])

    val = by_split["val"]
    val_pos = [r for r in val if _is_positive(r, target)]
    val_neg = [r for r in val if not _is_positive(r, target)]
    per_class = min(len(val_pos), len(val_neg), val_balanced // 2)
    balanced = [val_pos[i] for i in rng.permutation(len(val_pos))[:per_class]]
    balanced += [val_neg[i] for i in rng.permutation(len(val_neg))[:per_class]]
    balanced = [balanced[i] for i in rng.permutation(len(balanced))]
    if not val:
        messages.append("no validation volumes (too few volumes or --val-fraction 0): val.json is empty.")
    elif per_class * 2 < val_balanced:
        messages.append(f"val_balanced.json holds {per_class} positive + {per_class} negative slices "
                        f"(asked for {val_balanced} in all).")

    counts = {
        "volumes": {s: len(v) for s, v in volumes.items()},
        "train_available": {"positive": len(pos), "negative": len(neg)},
        "train_requested": {"positive": positives, "negative": negatives},
        "train_used": {"positive": n_pos, "negative": n_neg,
                       "with_tumour": sum(bool(r["tumor_pixels"]) for r in pos_pick)},
        "chunk_sizes": [len(c) for c in chunks],
        "val_slices": len(val), "val_positive": len(val_pos),
        "val_balanced": {"positive": per_class, "negative": per_class},
        "test_slices": len(by_split["test"]),
    }
    return SplitPlan(target, seed, volumes, chunks, val, balanced, by_split["test"], counts, messages)


def _entries(rows: list[dict], target: str, lists_dir: Path) -> list[dict]:
    def rel(path: str) -> str:
        return os.path.relpath(path, lists_dir)

    unknown = {"tumour_labelled": False}  # only where it is so: lists of fully labelled sources stay as they were
    return [{"image": rel(r["image"]), "label": rel(r["mask"]), "volume_id": r["volume_id"],
             "slice_index": r["slice_index"], "positive": _is_positive(r, target),
             **(unknown if target == "both" and r["tumor_pixels"] is None else {})} for r in rows]


def write_split(plan: SplitPlan, lists_dir: str | os.PathLike,
                slices_dir: str | os.PathLike | list[str | os.PathLike]) -> list[Path]:
    """Write the datalists of ``plan`` into ``lists_dir``; stale chunk files of an earlier split are removed.
    ``slices_dir``: the slice set the rows came from, or several."""
    slices_dirs = slices_dir if isinstance(slices_dir, list) else [slices_dir]
    lists_dir = Path(lists_dir)
    lists_dir.mkdir(parents=True, exist_ok=True)
    check_disjoint(plan.volumes)
    written = []
    for stale in lists_dir.glob("chunk_*.json"):
        stale.unlink()
    for k, chunk in enumerate(plan.chunks):
        written.append(write_json_atomic(lists_dir / f"chunk_{k}.json", {"training": _entries(chunk, plan.target, lists_dir)}))
    written.append(write_json_atomic(lists_dir / "val.json", {"validation": _entries(plan.val, plan.target, lists_dir)}))
    written.append(write_json_atomic(lists_dir / "val_balanced.json",
                                     {"validation": _entries(plan.val_balanced, plan.target, lists_dir)}))
    if plan.volumes["test"]:
        written.append(write_json_atomic(lists_dir / "test.json", {"testing": _entries(plan.test, plan.target, lists_dir)}))
    elif (lists_dir / "test.json").exists():
        (lists_dir / "test.json").unlink()
    written.append(write_json_atomic(lists_dir / "split.json", {
        "slices_dirs": [os.path.relpath(Path(d).resolve(), lists_dir.resolve()) for d in slices_dirs],
        "target": plan.target, "seed": plan.seed, "volumes": plan.volumes, "counts": plan.counts,
        "chunks": [f"chunk_{k}.json" for k in range(len(plan.chunks))],
    }))
    return written


def slices_dirs_of(lists_dir: str | os.PathLike, split: dict | None = None) -> list[Path]:
    """The slice sets a split was made from, absolute (``split.json`` of ``lists_dir``; an older split's single
    ``slices_dir`` too)."""
    lists_dir = Path(lists_dir)
    split = split if split is not None else json.loads((lists_dir / "split.json").read_text())
    names = split.get("slices_dirs") or [split["slices_dir"]]
    return [(lists_dir / name).resolve() for name in names]
