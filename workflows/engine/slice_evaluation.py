"""Slice-level evaluation on ``SupervisedEvaluator``: the bundle's ``evaluating`` id.

It reports the reference project's metric, computed as it did, next to honest ones:

- ``reference``: per-slice Dice and IoU at threshold 0.5 averaged over ``val_balanced.json`` (half the slices
  empty; an empty slice predicted empty scores 1). The reference reported Dice 0.9022 / IoU 0.8706 this way,
  on validation slices from its training patients.
- ``honest`` over every slice of the validation volumes (``val.json``): mean Dice over the slices that contain
  the target, pooled (global) Dice over all pixels, and the share of empty slices given a false positive.

- ``volumes``: the slice predictions stacked back into each validation volume and scored as LiTS does (Dice per
  case and global, VOE, RVD, ASSD, HD95; lesions and tumour burden when the target has tumour), at the training
  size with the spacing scaled to it (``volume_metrics.csv``).

Outputs in ``output_dir``: ``metrics.json``, ``per_slice.csv``, ``volume_metrics.csv`` and
``val_predictions/sample_<n>.png`` (CT | truth | prediction, like the reference's pictures, with overlays).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from ignite.engine import Events  # noqa: E402
from monai.engines import SupervisedEvaluator  # noqa: E402

from networks import load_reference_state_dict  # noqa: E402
from transforms import TARGET_CHANNELS, target_to_lits  # noqa: E402
from workflows.engine import distributed  # noqa: E402
from workflows.machine.atomic import write_csv_atomic, write_json_atomic  # noqa: E402
from workflows.engine.model_file import read_torch_file  # noqa: E402
from workflows.data.pictures import overlay, save_figure  # noqa: E402
from workflows.data.slice_set import MANIFEST_NAME, read_manifest, volume_sort_key  # noqa: E402
from workflows.data.splitting import slices_dirs_of  # noqa: E402
from workflows.engine.training_checks import read_datalist  # noqa: E402
from workflows.engine.volume_metrics import case_metrics, dice_score, flatten_case, iou_score, summarise_cases  # noqa: E402

__all__ = ["REFERENCE_RESULT", "slice_counts", "summarise", "SliceEvaluation"]

logger = logging.getLogger("liver_ct.evaluation")

#: What the reference project reported (liver, balanced validation slices from its training patients).
REFERENCE_RESULT = {"dice": 0.9022, "iou": 0.8706}


def slice_counts(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Pixel counts of one channel of one slice: true positives, predicted and true pixels."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    return {"tp": int((pred & truth).sum()), "pred_pixels": int(pred.sum()), "true_pixels": int(truth.sum())}


def _dice(c: dict) -> float:
    return dice_score(c["tp"], c["pred_pixels"], c["true_pixels"])


def _iou(c: dict) -> float:
    return iou_score(c["tp"], c["pred_pixels"], c["true_pixels"])


def summarise(rows: list[dict], balanced_keys: set[tuple[str, int]] | None = None) -> dict:
    """Metrics of one channel from per-slice counts (``rows`` with ``tp``, ``pred_pixels``, ``true_pixels``,
    ``volume_id``, ``slice_index``)."""
    with_target = [r for r in rows if r["true_pixels"]]
    empty = [r for r in rows if not r["true_pixels"]]
    tp = sum(r["tp"] for r in rows)
    denominator = sum(r["pred_pixels"] + r["true_pixels"] for r in rows)
    honest = {
        "slices": len(rows),
        "slices_with_target": len(with_target),
        "dice_slices_with_target": _mean([_dice(r) for r in with_target]),
        "global_dice": 2 * tp / denominator if denominator else None,
        "empty_slices": len(empty),
        "empty_slices_with_false_positive": _share([r["pred_pixels"] > 0 for r in empty]),
        "dice_all_slices_empty_as_1": _mean([_dice(r) for r in rows]),
    }
    out = {"honest": honest}
    if balanced_keys:
        chosen = [r for r in rows if (r["volume_id"], r["slice_index"]) in balanced_keys]
        out["reference"] = {
            "slices": len(chosen),
            "dice": _mean([_dice(r) for r in chosen]),
            "iou": _mean([_iou(r) for r in chosen]),
            "reported_by_the_reference": REFERENCE_RESULT,
        }
    return out


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _share(flags: list[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


class VolumeAssembler:
    """Stack slice predictions back into whole validation volumes and score each volume as LiTS does.

    Slices arrive at the training size; a volume is scored once all its slices (as the manifest lists them) are in,
    with the in-plane spacing scaled to that size, so memory holds one volume at a time whatever the order."""

    def __init__(self, dataset_dir: Path, target: str, wanted: set[str] | None = None) -> None:
        split = json.loads((dataset_dir / "split.json").read_text())
        wanted = set(split["volumes"]["val"]) if wanted is None else wanted
        self.expected: dict[str, int] = {}
        self.geometry: dict[str, tuple] = {}
        for row in (r for d in slices_dirs_of(dataset_dir, split) for r in read_manifest(d)):
            volume = row["volume_id"]
            if volume in wanted:
                self.expected[volume] = self.expected.get(volume, 0) + 1
                if volume not in self.geometry:
                    height, width = cv2.imread(row["image"], cv2.IMREAD_GRAYSCALE).shape
                    self.geometry[volume] = (row["spacing_row_mm"], row["spacing_col_mm"], row["slice_thickness_mm"],
                                             height, width)
        self.target = target
        self.pending: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        self.rows: list[dict] = []

    def add(self, volume_id: str, slice_index: int, pred: np.ndarray, truth: np.ndarray) -> None:
        if volume_id not in self.expected:
            return
        slices = self.pending.setdefault(volume_id, {})
        slices[slice_index] = (target_to_lits(pred, self.target), target_to_lits(truth, self.target))
        if len(slices) == self.expected[volume_id]:
            self._score(volume_id, self.pending.pop(volume_id))

    def _score(self, volume_id: str, slices: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        order = sorted(slices)
        pred = np.stack([slices[k][0] for k in order], axis=-1)
        truth = np.stack([slices[k][1] for k in order], axis=-1)
        row_mm, col_mm, thickness, height, width = self.geometry[volume_id]
        spacing = [row_mm * height / pred.shape[0], col_mm * width / pred.shape[1], thickness]
        spacing = [s if np.isfinite(s) else 1.0 for s in spacing]  # 2D sets carry no spacing: voxels then
        self.rows.append(flatten_case(volume_id, case_metrics(pred, truth, spacing)))

    def summary(self) -> dict | None:
        if not self.rows:
            return None
        out = summarise_cases(self.rows)
        # a liver-only model says nothing about tumours and vice versa: report what the target holds
        if self.target == "liver":
            for key in ("tumour", "lesions", "tumour_burden"):
                out.pop(key)
        elif self.target == "tumor":
            out.pop("liver")
            out.pop("tumour_burden")
        out["resolution"] = "the training size (slices resized), spacing scaled to it"
        return out


class SliceEvaluation:
    """Evaluate a checkpoint on the validation slices with ``evaluator`` and write the report.

    Args:
        evaluator: a ``SupervisedEvaluator`` over ``val.json`` whose postprocessing thresholds ``pred`` at 0.5.
        ckpt_file: weights to evaluate (``models/model.pt``, or ``best_model.pt``), loaded with ``weights_only``.
        dataset_dir: the lists folder (for ``val_balanced.json``).
        output_dir: where the report goes.
        target: ``liver``, ``tumor`` or ``both``, naming the channels.
        samples: how many ``val_predictions/sample_<n>.png`` pictures.
    """

    def __init__(self, evaluator: SupervisedEvaluator, ckpt_file: str, dataset_dir: str, output_dir: str,
                 target: str, samples: int = 8, balanced_datalist: str = "val_balanced.json",
                 datalist: str = "val.json") -> None:
        self.evaluator = evaluator
        self.ckpt_file, self.dataset_dir, self.output_dir = Path(ckpt_file), Path(dataset_dir), Path(output_dir)
        self.target, self.samples = target, int(samples)
        self.balanced_datalist, self.datalist = balanced_datalist, datalist
        self.channels = TARGET_CHANNELS[target]

    def _balanced_keys(self) -> list[tuple[str, int]]:
        path = self.dataset_dir / self.balanced_datalist
        if not path.exists():
            return []
        return [(str(e["volume_id"]), int(e["slice_index"])) for e in json.loads(path.read_text())["validation"]]

    def run(self) -> dict:
        if not self.ckpt_file.exists():
            raise FileNotFoundError(f"{self.ckpt_file} not found: train first (python -m monai.bundle run training "
                                    "...), or point --ckpt_file at a checkpoint.")
        load_reference_state_dict(self.evaluator.network, read_torch_file(self.ckpt_file))
        balanced = self._balanced_keys()
        balanced_set = set(balanced)
        picture_keys = set(balanced[: self.samples])
        rows: list[dict] = []
        pictures: dict[tuple[str, int], tuple] = {}
        evaluated = {str(e["volume_id"]) for e in read_datalist(self.dataset_dir / self.datalist)}
        # whole volumes need the slice sets' manifests (lists imported from the reference point at bare JPGs)
        with_manifests = (self.dataset_dir / "split.json").exists() and all(
            (d / MANIFEST_NAME).exists() for d in slices_dirs_of(self.dataset_dir))
        volumes = VolumeAssembler(self.dataset_dir, self.target, evaluated) if with_manifests else None

        def collect(engine) -> None:
            for item, out in zip(engine.state.batch, engine.state.output):
                key = (str(item["volume_id"]), int(item["slice_index"]))
                pred = out["pred"].detach().cpu().numpy()
                truth = out["label"].detach().cpu().numpy()
                row = {"volume_id": key[0], "slice_index": key[1], "in_balanced_list": key in balanced_set}
                for c, name in enumerate(self.channels):
                    counts = slice_counts(pred[c] > 0.5, truth[c] > 0.5)
                    row.update({f"{name}_{k}": v for k, v in counts.items()})
                    row[f"{name}_dice"] = round(_dice(counts), 6)
                    row[f"{name}_iou"] = round(_iou(counts), 6)
                rows.append(row)
                if volumes is not None:
                    volumes.add(key[0], key[1], pred, truth)
                if key in picture_keys or (not picture_keys and len(pictures) < self.samples):
                    image = out["image"].detach().cpu().numpy()[0] if "image" in out else item["image"].numpy()[0]
                    pictures[key] = (image, truth, pred)

        handle = self.evaluator.add_event_handler(Events.ITERATION_COMPLETED, collect)
        try:
            if len(self.evaluator.data_loader.dataset) or distributed.world_size() == 1:  # a rank may get no volume
                self.evaluator.run()
        finally:
            handle.remove()
        # several processes (multi_gpu_evaluate.json): each scored whole volumes of its share; all report the whole
        rows = distributed.gather(rows)
        pictures = dict(distributed.gather(list(pictures.items())))
        if volumes is not None:
            volumes.rows = distributed.gather(volumes.rows)
        if not rows:
            raise ValueError(f"{self.dataset_dir / 'val.json'} holds no slices to evaluate.")

        metrics = {"checkpoint": str(self.ckpt_file), "target": self.target, "datalist": self.datalist, "channels": {}}
        for name in self.channels:
            per = [{"volume_id": r["volume_id"], "slice_index": r["slice_index"], "tp": r[f"{name}_tp"],
                    "pred_pixels": r[f"{name}_pred_pixels"], "true_pixels": r[f"{name}_true_pixels"]} for r in rows]
            metrics["channels"][name] = summarise(per, balanced_set)
        if volumes is not None and volumes.rows:
            volumes.rows.sort(key=lambda r: volume_sort_key(str(r["volume_id"])))
            metrics["volumes"] = volumes.summary()
        if not distributed.is_main():  # rank 0 writes the report
            return metrics
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if volumes is not None and volumes.rows:
            write_csv_atomic(self.output_dir / "volume_metrics.csv", volumes.rows)
        write_json_atomic(self.output_dir / "metrics.json", metrics)
        self._write_csv(rows)
        self._write_pictures(pictures, balanced)
        for name, m in metrics["channels"].items():
            h = m["honest"]
            ref = m.get("reference", {})
            logger.info(
                f"{name}: reference-style balanced Dice {_fmt(ref.get('dice'))} / IoU {_fmt(ref.get('iou'))} "
                f"(reference reported {REFERENCE_RESULT['dice']} / {REFERENCE_RESULT['iou']}); honest: Dice over "
                f"{h['slices_with_target']} slices with {name} {_fmt(h['dice_slices_with_target'])}, global Dice "
                f"{_fmt(h['global_dice'])}, false positives on {_fmt(h['empty_slices_with_false_positive'])} of "
                f"{h['empty_slices']} empty slices"
            )
        volume_summary = metrics.get("volumes") or {}
        for name in ("liver", "tumour"):
            if name in volume_summary:
                v = volume_summary[name]
                logger.info(f"{name} per validation volume ({volume_summary['cases']} volumes, at the training size): "
                            f"Dice per case {_fmt(v['dice_per_case']['mean'])}, global Dice {_fmt(v['global_dice'])}, "
                            f"ASSD {_fmt(v['assd_mm']['mean'])} mm, HD95 {_fmt(v['hd95_mm']['mean'])} mm")
        logger.info(f"report: {self.output_dir / 'metrics.json'}, {self.output_dir / 'per_slice.csv'}, "
                    f"{self.output_dir / 'val_predictions'}")
        return metrics

    def _write_csv(self, rows: list[dict]) -> None:
        ordered = sorted(rows, key=lambda r: (volume_sort_key(r["volume_id"]), r["slice_index"]))
        write_csv_atomic(self.output_dir / "per_slice.csv", ordered)

    def _write_pictures(self, pictures: dict, order: list[tuple[str, int]]) -> None:
        folder = self.output_dir / "val_predictions"
        folder.mkdir(parents=True, exist_ok=True)
        keys = [k for k in order if k in pictures] or sorted(pictures)
        for n, key in enumerate(keys[: self.samples]):
            image, truth, pred = pictures[key]
            grey = np.clip(image * 255, 0, 255).astype(np.uint8)
            fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
            panels = (("CT", grey, None), ("truth", grey, target_to_lits(truth, self.target)),
                      ("prediction", grey, target_to_lits(pred, self.target)))
            for ax, (title, img, mask) in zip(axes, panels):
                ax.imshow(overlay(img, mask) if mask is not None else img, cmap=None if mask is not None else "gray")
                ax.set_title(title)
                ax.axis("off")
            fig.suptitle(f"volume {key[0]} slice {key[1]}", fontsize=9)
            save_figure(fig, folder / f"sample_{n}.png", dpi=90)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
