"""User errors at the bundle's entry points end in one line that names the setting or file, never a traceback."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from monai.bundle import ConfigWorkflow

from workflows.bundle import BundleCommandError

from .conftest import TINY, TRAIN


def _initialize(lists, ckpt_dir, **overrides):
    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", run_id="training", logging_file=False,
                              **{**TINY, "dataset_dir": str(lists), "ckpt_dir": str(ckpt_dir), **overrides})
    workflow.initialize()
    return workflow


@pytest.mark.parametrize("overrides, message", [
    ({"chunk": "abc"}, r"--chunk must be a whole number >= 0, got 'abc'"),
    ({"chunk": 0.5}, r"--chunk must be a whole number >= 0, got 0.5"),
    ({"chunk": -1}, r"--chunk must be a whole number >= 0, got -1"),
    ({"spatial_size": -5}, r"--spatial_size must be a whole number from 8 to 1024, got -5"),
    ({"spatial_size": 60}, r"--spatial_size must be a multiple of 8"),
    ({"batch_size": 0}, r"--batch_size must be a whole number from 1 to 4096, got 0"),
    ({"epochs_per_chunk": 0}, r"--epochs_per_chunk must be a whole number from 1"),
    ({"checkpoint_every": "often"}, r"--checkpoint_every must be a whole number >= 1, got 'often'"),
    ({"augment": "maybe"}, r"--augment must be true or false \(or 1 or 0\), got 'maybe'"),
    ({"precision": "fp16"}, r"--precision must be one of auto, fp32, bf16, got 'fp16'"),
    ({"compile": "maybe"}, r"--compile must be true, false or auto, got 'maybe'"),
    ({"pin_memory": "maybe"}, r"--pin_memory must be true or false \(or 1 or 0\), got 'maybe'"),
    ({"learning_rate": -0.1}, r"--learning_rate must be a number > 0"),
    ({"val_datalist": "nope.json"}, r"nope.json: listed in .*split.json \(or named by a setting\) but missing; make the lists again[^;]*$"),
])
def test_bad_overrides_are_one_line(lists, tmp_path, overrides, message):
    with pytest.raises(BundleCommandError, match=message) as error:
        _initialize(lists, tmp_path / "models", **overrides)
    assert "\n" not in str(error.value)


def _copy_lists(lists, tmp_path):
    """A lists folder and its slices, copied so that they can be damaged."""
    root = tmp_path / "copy"
    shutil.copytree(lists.parent, root)
    return root / "lists"


@pytest.mark.parametrize("damage, message", [
    ("split.json garbage", r"split.json: not a split made by workflows.split"),
    ("split.json gone", r"split.json not found: --dataset_dir must be a lists folder"),
    ("chunk list gone", r"chunk_1.json: listed in .*split.json \(or named by a setting\) but missing"),
    ("chunk list garbage", r"chunk_0.json: not a datalist made by workflows.split"),
    ("slice deleted", r"named in .*chunk_0.json but is missing \(slices moved or deleted after the split\?\)"),
    ("slice is a pipe", r"named in .*chunk_0.json but is not a regular file"),
])
def test_damaged_lists_are_one_line(lists, tmp_path, damage, message):
    copied = _copy_lists(lists, tmp_path)
    first = json.loads((copied / "chunk_0.json").read_text())["training"][0]
    if damage == "split.json garbage":
        (copied / "split.json").write_text("{not json")
    elif damage == "split.json gone":
        (copied / "split.json").unlink()
    elif damage == "chunk list gone":
        (copied / "chunk_1.json").unlink()
    elif damage == "chunk list garbage":
        (copied / "chunk_0.json").write_text("[1, 2")
    elif damage == "slice deleted":
        (copied / first["image"]).unlink()
    elif damage == "slice is a pipe":
        (copied / first["image"]).unlink()
        os.mkfifo(copied / first["image"])
    with pytest.raises(BundleCommandError, match=message) as error:
        _initialize(copied, tmp_path / "models")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a checkpoint", None])
def test_a_truncated_or_foreign_checkpoint_is_refused_by_name(lists, tmp_path, content):
    import torch

    models = tmp_path / "models"
    models.mkdir()
    if content is None:
        torch.save({"weights": torch.zeros(2)}, models / "checkpoint_chunk_0.pt")  # a foreign, loadable file
    else:
        (models / "checkpoint_chunk_0.pt").write_bytes(content)
    workflow = _initialize(lists, models, chunk=1)
    with pytest.raises(BundleCommandError, match=r"checkpoint_chunk_0.pt: (cannot be read as a checkpoint|not a "
                                                 r"checkpoint of this chunked training).*move it out of --ckpt_dir"):
        workflow.run()


def test_the_command_line_prints_one_line_and_exits_1(lists, tmp_path):
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--dataset_dir",
            str(lists), "--ckpt_dir", str(tmp_path), "--chunk", "abc"]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: --chunk must be a whole number >= 0, got 'abc'."


def test_a_full_disk_mid_chunk_is_one_line_and_keeps_what_was_written(lists, tmp_path, monkeypatch):
    import errno

    import workflows.engine.chunk_run as training  # where checkpoints are written

    written = []

    def full_after_first(path, data):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        return original(path, data)

    original = training.write_bytes_atomic
    monkeypatch.setattr(training, "write_bytes_atomic", full_after_first)
    workflow = _initialize(lists, tmp_path / "models", chunk=0, checkpoint_every=1)
    with pytest.raises(BundleCommandError, match=r"\.pt: no space left on device; every file written before is "
                                                 r"whole and kept: free some space, then rerun the same command") as error:
        workflow.run()
    assert "\n" not in str(error.value)
    assert [p.name for p in written] == ["checkpoint_progress.pt"] and written[0].stat().st_size > 0
    assert not list((tmp_path / "models").glob(".tmp-*"))
