"""The recipe's training plan: how many epochs each stage gets from ``--epochs`` or a ``--minutes`` budget, recorded so
a rerun carries on with the plan it started with."""

import argparse
import json

import pytest

from workflows.recipe import training
from workflows.recipe.run import RECIPE, RecipeRun

SLICES = {"whole": 1000, "liver_crop": 900}


def _run(tmp_path, **given) -> RecipeRun:
    args = {"minutes": None, "epochs": None, "tumour_epochs": None, "members": 1, "tumour_size": 192, "stages": 2,
            "context": 1, "precision": "auto", "architecture": "three_level_unet", "synthetic": 0.5,
            "liver_only_sources": "train", "sources": None, "validation_fraction": 0.15, "grey_match": "liver",
            "healthy_sources": []}
    return RecipeRun(argparse.Namespace(**{**args, **given}), tmp_path)


@pytest.fixture
def ten_images_per_second(monkeypatch):
    monkeypatch.setattr(training, "training_speed", lambda settings: 10.0)


def test_a_minutes_budget_gives_the_tumour_stage_its_share_of_epochs_within_the_budget(tmp_path, ten_images_per_second):
    """30 minutes at 10 images/s: a whole-slice epoch of 1,000 slices takes 100 s, a tumour epoch of 900 crops at 192
    (0.5625 of the pixels of 256) 50.6 s; the tumour stage gets twice the epochs and both fit in the budget."""
    epochs, speed = training.plan_epochs(_run(tmp_path / "a", minutes=30.0), {"spatial_size": 256}, 2, SLICES)
    factor = RECIPE["tumour_epochs_factor"]
    assert speed == 10.0 and epochs["liver_crop"] == factor * epochs["whole"]
    seconds = epochs["whole"] * 100 + epochs["liver_crop"] * 900 / 10 * (192 / 256) ** 2
    assert seconds <= 30 * 60 * 0.85 < seconds + 100 + factor * 50.7  # one more whole epoch would not fit
    # --tumour-epochs fixed: the whole-slice stage gets the rest of the budget
    epochs, _ = training.plan_epochs(_run(tmp_path / "b", minutes=30.0, tumour_epochs=4), {"spatial_size": 256}, 2,
                                     SLICES)
    assert epochs == {"whole": int((30 * 60 * 0.85 - 4 * 50.625) / 100), "liver_crop": 4}


def test_the_plan_is_recorded_and_a_plan_from_before_trains_its_tumour_stage_as_long_as_its_whole_slices(tmp_path):
    run = _run(tmp_path, epochs=3)
    assert training.plan_epochs(run, {"spatial_size": 256}, 2, SLICES) == ({"whole": 3, "liver_crop": 6}, None)
    plan = tmp_path / "models" / "recipe.json"
    assert json.loads(plan.read_text())["tumour_epochs"] == 6
    # a rerun reads the plan back, whatever it is given
    assert training.plan_epochs(_run(tmp_path, epochs=9), {"spatial_size": 256}, 2, SLICES)[0] == \
        {"whole": 3, "liver_crop": 6}
    recorded = json.loads(plan.read_text())
    del recorded["tumour_epochs"]  # written before --tumour-epochs
    plan.write_text(json.dumps(recorded))
    assert training.plan_epochs(run, {"spatial_size": 256}, 2, SLICES)[0] == {"whole": 3, "liver_crop": 3}


def test_a_tumour_stage_that_learned_almost_no_tumour_is_said_so(tmp_path):
    """One seed in five trained a tumour stage to validation tumour Dice 0.059 at 6 epochs (its tumours all missed):
    such a stage gets a warning naming its model file and the way out; a healthy one, or one with no validation
    figure, gets none."""
    stage = tmp_path / "tumour_on_liver_crop"
    stage.mkdir()
    assert training.tumour_stage_warning(stage) is None  # not trained
    for value, warned in ((0.059, True), (0.52, False), (None, False), (float("nan"), False)):
        (stage / "training_log.json").write_text(json.dumps([{"chunk": 0, "val_metric": 0.6},
                                                             {"chunk": 1, "val_metric": value}]))
        warning = training.tumour_stage_warning(stage)
        assert (warning is not None) == warned
    (stage / "training_log.json").write_text(json.dumps([{"chunk": 0, "val_metric": 0.059}]))
    assert training.tumour_stage_warning(stage) == (
        f"{stage / 'model.pt'}: the tumour stage learned almost no tumour (validation tumour Dice 0.059, under "
        f"{RECIPE['least_tumour_val_dice']}); its tumours will be missed: train it longer (--tumour-epochs) or with "
        "another --seed into a new --output")
