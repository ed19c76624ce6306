import csv
import json

import cv2
import pytest
from monai.bundle import ConfigWorkflow

from workflows.bundle import BundleCommandError
from workflows.engine.slice_evaluation import REFERENCE_RESULT, slice_counts, summarise

from .conftest import EVALUATE, TINY, TRAIN, make_lists

import numpy as np


def _row(volume, k, tp, pred, true):
    return {"volume_id": volume, "slice_index": k, "tp": tp, "pred_pixels": pred, "true_pixels": true}


def test_metrics_on_hand_made_slices():
    rows = [
        _row("1", 0, 10, 10, 10),  # perfect: Dice 1
        _row("1", 1, 5, 10, 10),  # half overlap: Dice 0.5, IoU 1/3
        _row("1", 2, 0, 0, 0),  # empty, predicted empty: 1 in the reference's metric, ignored by the honest one
        _row("1", 3, 0, 4, 0),  # empty with a false positive: Dice 0
    ]
    m = summarise(rows, balanced_keys={("1", 0), ("1", 1), ("1", 2), ("1", 3)})
    honest, reference = m["honest"], m["reference"]
    assert honest["dice_slices_with_target"] == pytest.approx(0.75)
    assert honest["global_dice"] == pytest.approx(2 * 15 / (24 + 20))
    assert honest["empty_slices_with_false_positive"] == pytest.approx(0.5)
    assert reference["dice"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert reference["iou"] == pytest.approx((1 + 1 / 3 + 1 + 0) / 4)
    assert reference["reported_by_the_reference"] == REFERENCE_RESULT
    only_balanced = summarise(rows, balanced_keys={("1", 2)})["reference"]
    assert only_balanced["slices"] == 1 and only_balanced["dice"] == 1.0


def test_slice_counts():
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    truth = np.array([[0, 1, 1], [0, 0, 1]])
    assert slice_counts(pred, truth) == {"tp": 1, "pred_pixels": 2, "true_pixels": 3}


def _train(lists, ckpt):
    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", run_id="training",
                              **{**TINY, "epochs_per_chunk": 2, "dataset_dir": str(lists), "ckpt_dir": str(ckpt)})
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def test_evaluating_workflow_writes_reference_and_honest_metrics(lists, tmp_path):
    _train(lists, tmp_path / "models")
    workflow = ConfigWorkflow(config_file=[TRAIN, EVALUATE], workflow_type="train", run_id="evaluating",
                              **{**TINY, "dataset_dir": str(lists), "ckpt_dir": str(tmp_path / "models"),
                                 "output_dir": str(tmp_path / "eval"), "evaluation_samples": 3})
    workflow.initialize()
    assert workflow.check_properties() == []
    metrics = workflow.run()[0]
    evaluator_dice = float(workflow.parser.get_parsed_content("validate#evaluator").state.metrics["val_mean_dice"])
    workflow.finalize()

    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    liver = written["channels"]["liver"]
    val = json.loads((lists / "val.json").read_text())["validation"]
    balanced = json.loads((lists / "val_balanced.json").read_text())["validation"]
    assert liver["honest"]["slices"] == len(val) and liver["reference"]["slices"] == len(balanced)
    # MONAI's MeanDice ignores empty ground truth: it is the honest Dice over slices with liver
    assert liver["honest"]["dice_slices_with_target"] == pytest.approx(evaluator_dice, abs=1e-5)

    with open(tmp_path / "eval" / "per_slice.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(val)
    assert sum(r["in_balanced_list"] == "True" for r in rows) == len(balanced)
    with_liver = [float(r["liver_dice"]) for r in rows if int(r["liver_true_pixels"])]
    assert np.mean(with_liver) == pytest.approx(liver["honest"]["dice_slices_with_target"], abs=1e-5)
    # the slices stacked back into volumes: the pooled volume Dice is the pooled slice Dice, the same pixels
    volumes = written["volumes"]
    split = json.loads((lists / "split.json").read_text())
    assert volumes["cases"] == len(split["volumes"]["val"]) and "tumour" not in volumes  # a liver-only model
    assert volumes["liver"]["global_dice"] == pytest.approx(liver["honest"]["global_dice"])
    assert volumes["liver"]["hd95_mm"]["cases"] <= volumes["cases"]
    assert len((tmp_path / "eval" / "volume_metrics.csv").read_text().splitlines()) == volumes["cases"] + 1
    pictures = sorted((tmp_path / "eval" / "val_predictions").glob("sample_*.png"))
    assert [p.name for p in pictures] == ["sample_0.png", "sample_1.png", "sample_2.png"]
    assert cv2.imread(str(pictures[0])).shape[1] > 2 * cv2.imread(str(pictures[0])).shape[0]  # three panels


def test_evaluating_without_a_checkpoint_says_what_to_do(lists, tmp_path):
    workflow = ConfigWorkflow(config_file=[TRAIN, EVALUATE], workflow_type="train", run_id="evaluating",
                              **{**TINY, "dataset_dir": str(lists), "ckpt_dir": str(tmp_path)})
    workflow.initialize()
    with pytest.raises(BundleCommandError, match="model.pt not found: train first"):
        workflow.run()


def test_the_test_list_is_scored_on_its_own_volumes(tmp_path):
    lists = make_lists(tmp_path / "data", test_fraction=0.2)
    split = json.loads((lists / "split.json").read_text())
    assert split["volumes"]["test"] and (lists / "test.json").exists()
    _train(lists, tmp_path / "models")
    workflow = ConfigWorkflow(config_file=[TRAIN, EVALUATE], workflow_type="train", run_id="evaluating",
                              **{"dataset_dir": str(lists), "ckpt_dir": str(tmp_path / "models"), "progress": False,
                                 "output_dir": str(tmp_path / "eval_test"), "val_datalist": "test.json",
                                 "evaluation_samples": 1})
    workflow.initialize()
    metrics = workflow.run()[0]
    workflow.finalize()
    test = json.loads((lists / "test.json").read_text())["testing"]
    assert metrics["datalist"] == "test.json" and metrics["channels"]["liver"]["honest"]["slices"] == len(test)
    assert metrics["volumes"]["cases"] == len(split["volumes"]["test"])
