"""A resume sees what the interrupted run saw, or is refused naming what changed; a setting given for the next chunk
is applied and said, never echoed and ignored."""

import shutil

import pytest
import torch
from monai.bundle import ConfigWorkflow

import workflows.engine.training as training
from workflows.bundle import BundleCommandError

from .conftest import BUNDLE, TINY, TRAIN


def _run(lists, ckpt_dir, **overrides):
    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", run_id="training",
                              logging_file=str(BUNDLE / "configs" / "logging.conf"),
                              **{**TINY, "dataset_dir": str(lists), "ckpt_dir": str(ckpt_dir), **overrides})
    workflow.initialize()
    try:
        return workflow.run()
    finally:
        workflow.finalize()


@pytest.fixture
def interrupted(lists, tmp_path, monkeypatch):
    """A copy of the lists and a ckpt_dir where chunk 0 was interrupted after its first iteration."""
    shutil.copytree(lists.parent, tmp_path / "copy")
    copied, models = tmp_path / "copy" / "lists", tmp_path / "models"
    saved = training.ProgressCheckpointHandler.__call__

    def save_then_stop(self, engine):
        saved(self, engine)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(training.ProgressCheckpointHandler, "__call__", save_then_stop)
        with pytest.raises(SystemExit):
            _run(copied, models, chunk=0, checkpoint_every=1)
    assert (models / "checkpoint_progress.pt").exists() and not (models / "checkpoint_chunk_0.pt").exists()
    return copied, models


@pytest.mark.parametrize("change, named", [
    ({"seed": 1}, r"--seed 0 then, 1 now"),
    ({"learning_rate": 5e-5}, r"--learning_rate 0.0001 then, 5e-05 now"),
    ({"epochs_per_chunk": 2}, r"--epochs_per_chunk 1 then, 2 now"),
    ({"lr_scheduler#gamma": 0.5}, r"--lr_scheduler#gamma 1.0 then, 0.5 now"),
])
def test_a_resume_with_another_setting_is_refused_naming_it(interrupted, change, named):
    lists, models = interrupted
    before = (models / "checkpoint_progress.pt").read_bytes()
    with pytest.raises(BundleCommandError, match=rf"checkpoint_progress.pt: chunk 0 was started with other settings "
                                                 rf"or data \({named}\).*move checkpoint_progress.pt out") as error:
        _run(lists, models, chunk=0, **change)
    assert "\n" not in str(error.value)
    assert (models / "checkpoint_progress.pt").read_bytes() == before  # nothing of the user's changed


def test_a_resume_after_the_chunks_slices_changed_is_refused(interrupted):
    import json

    lists, models = interrupted
    first = json.loads((lists / "chunk_0.json").read_text())["training"][0]["image"]
    shutil.copy(lists / json.loads((lists / "chunk_0.json").read_text())["training"][1]["image"], lists / first)
    with pytest.raises(BundleCommandError, match=r"the chunk's slices \(their bytes\) changed"):
        _run(lists, models, chunk=0)


def test_the_same_resume_carries_on(interrupted):
    lists, models = interrupted
    _run(lists, models, chunk=0)
    assert (models / "checkpoint_chunk_0.pt").exists() and not (models / "checkpoint_progress.pt").exists()


def test_a_new_learning_rate_for_the_next_chunk_is_applied_and_said(lists, tmp_path, capsys):
    _run(lists, tmp_path, chunk=0)
    capsys.readouterr()
    _run(lists, tmp_path, chunk=1, learning_rate=5e-5, seed=3)
    state = torch.load(tmp_path / "checkpoint_chunk_1.pt", weights_only=True)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [5e-5]
    assert state["lr_scheduler"]["base_lrs"] == [5e-5] and state["chunk"]["seed"] == 3
    said = capsys.readouterr().out
    assert "--learning_rate 0.0001 in the checkpoint, 5e-05 now: applied from this chunk on" in said
    assert "--seed 0 in the checkpoint, 3 now: applied from this chunk on" in said
