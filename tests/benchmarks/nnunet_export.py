"""The recipe's converted data and split in nnU-Net v2's raw dataset format, for the peer benchmark.

``export_nnunet(lists_dir, raw_root)`` writes ``raw_root/Dataset<id>_LiverCT/``: ``imagesTr/case_NNN_0000.nii.gz``
and ``labelsTr/case_NNN.nii.gz`` for the training and validation patients, ``imagesTs/`` and ``labelsTs/`` for the
held-out ones, ``dataset.json`` (one CT channel; labels background 0, liver 1, tumour 2, as LiTS), and
``splits_final.json`` (one fold: our training patients train, our validation patient validates), with
``case_ids.json`` mapping nnU-Net's case names to our volume ids. Each patient is its slices stacked into a volume
(:func:`workflows.data.held_out_volumes.stack_2d_patient`: the grey levels as the HU the abdomen window turns back into them, the
spacing the slice set records), so nnU-Net sees the very pixels our network sees.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from workflows.data.slice_set import read_slice_sets
from workflows.data.splitting import slices_dirs_of
from workflows.engine.training_checks import read_split
from workflows.data.held_out_volumes import stack_2d_patient

__all__ = ["export_nnunet"]


def export_nnunet(lists_dir: str | os.PathLike, raw_root: str | os.PathLike, dataset_id: int = 501,
                  window_hu: tuple[float, float] = (-160.0, 240.0)) -> Path:
    """Write the dataset (see the module) and return its folder."""
    lists_dir = Path(lists_dir)
    split = read_split(lists_dir)
    rows = read_slice_sets([str(d) for d in slices_dirs_of(lists_dir, split)])
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_LiverCT"
    volumes = split["volumes"]
    ids, cases = {}, {"train": [], "val": [], "test": []}
    for part in ("train", "val", "test"):
        for volume_id in volumes[part]:
            case = f"case_{len(ids):03d}"
            ids[case] = volume_id
            cases[part].append(case)
            patient = sorted((r for r in rows if r["volume_id"] == volume_id), key=lambda r: r["slice_index"])
            images, labels = ("imagesTs", "labelsTs") if part == "test" else ("imagesTr", "labelsTr")
            scan, truth = stack_2d_patient(patient, folder / "tmp", list(window_hu))
            (folder / images).mkdir(parents=True, exist_ok=True)
            (folder / labels).mkdir(parents=True, exist_ok=True)
            scan.replace(folder / images / f"{case}_0000.nii.gz")
            truth.replace(folder / labels / f"{case}.nii.gz")
    (folder / "tmp").rmdir()
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
               "numTraining": len(cases["train"]) + len(cases["val"]), "file_ending": ".nii.gz",
               "name": "LiverCT: the real-data recipe's patients"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    (folder / "splits_final.json").write_text(json.dumps([{"train": cases["train"], "val": cases["val"]}], indent=1))
    (folder / "case_ids.json").write_text(json.dumps(ids, indent=1))
    return folder
