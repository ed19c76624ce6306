"""Augmentation listed in train.json: switchable, no left-right flip, the same draw for a sample whatever the order
(so a resumed run augments as the uninterrupted one did); the thread budget."""

import json

import pytest
import torch
from monai.bundle import ConfigParser

from workflows.machine.threads import available_cores, set_threads
from workflows.engine.training_data import AugmentedDataset

from .conftest import TRAIN


def _augmentation():
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser["target"] = "liver"  # what lists split for the liver give (no lists here)
    return parser.get_parsed_content("train#augmentation")


def _samples(n=4):
    torch.manual_seed(0)
    return [{"image": torch.rand(1, 32, 32), "label": (torch.rand(1, 32, 32) > 0.5).float()} for _ in range(n)]


def test_train_json_augments_without_flipping_left_and_right():
    config = json.loads(open(TRAIN).read())
    names = [t["_target_"] for t in config["train"]["augmentation"]["transforms"]]
    assert "RandAffined" in names and not any("Flip" in n for n in names)
    assert config["augment"] is True and config["train"]["dataloader"]["dataset"] == "@train#augmented"


def test_a_sample_is_augmented_the_same_way_in_any_order_and_differently_each_epoch():
    data = _samples()
    augmented = AugmentedDataset(data, _augmentation(), seed=3)
    augmented.set_epoch(1, 2)
    forward = [augmented[i] for i in range(4)]
    backward = {i: augmented[i] for i in reversed(range(4))}
    assert all(torch.equal(forward[i]["image"], backward[i]["image"]) for i in range(4))
    assert any(not torch.equal(forward[i]["image"], data[i]["image"]) for i in range(4))  # something was drawn
    augmented.set_epoch(1, 3)
    assert any(not torch.equal(augmented[i]["image"], forward[i]["image"]) for i in range(4))
    labels = torch.cat([forward[i]["label"] for i in range(4)]).unique().tolist()
    assert set(labels) <= {0.0, 1.0}  # labels resampled with nearest: still binary


def test_augment_false_passes_samples_through():
    data = _samples()
    plain = AugmentedDataset(data, _augmentation(), seed=3, enabled="false")
    assert all(plain[i] is data[i] for i in range(4))


def test_the_thread_budget_divides_the_cores_and_takes_an_explicit_count(monkeypatch):
    from workflows.machine import threads

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)  # an idle machine (a busy one: test_fault_corpus_three)
    try:
        assert set_threads(0, processes=available_cores()) == 1 == torch.get_num_threads()
        assert set_threads(0, processes=1) == available_cores()
        assert set_threads(1) == 1 == torch.get_num_threads()
        with pytest.raises(ValueError, match="--threads must be"):
            set_threads("many")
    finally:
        torch.set_num_threads(before)


def test_a_resume_with_another_thread_count_says_the_weights_will_differ(lists, tmp_path):
    import logging

    from monai.bundle import ConfigWorkflow

    from .conftest import TINY

    class Lines(logging.Handler):  # the bundle's logging.conf replaces handlers: listen on the logger itself
        def __init__(self):
            super().__init__(logging.WARNING)
            self.text = ""

        def emit(self, record):
            self.text += record.getMessage() + "\n"

    lines = Lines()
    before = torch.get_num_threads()
    try:
        for chunk, threads in ((0, 1), (1, 2)):
            workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", run_id="training",
                                      **{**TINY, "dataset_dir": str(lists), "ckpt_dir": str(tmp_path),
                                         "chunk": chunk, "threads": threads})
            workflow.initialize()
            logging.getLogger("liver_ct.training").addHandler(lines)  # after the bundle's logging.conf is applied
            log = workflow.run()[-1]
            workflow.finalize()
            assert log[0]["threads"] == threads
    finally:
        torch.set_num_threads(before)
        logging.getLogger("liver_ct.training").removeHandler(lines)
    assert "was trained with 1 thread(s), this run uses 2" in lines.text and "--threads 1" in lines.text


def test_bf16_training_keeps_plain_fp32_checkpoints(lists, tmp_path):
    from monai.bundle import ConfigWorkflow

    from .conftest import TINY
    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", run_id="training",
                              **{**TINY, "dataset_dir": str(lists), "ckpt_dir": str(tmp_path), "chunk": 0,
                                 "precision": "bf16"})
    workflow.initialize()
    assert workflow.parser.get_parsed_content("train#inferer").precision == "bf16"
    log = workflow.run()[-1]
    workflow.finalize()
    state = torch.load(tmp_path / "checkpoint_chunk_0.pt", weights_only=True)
    assert log[0]["mean_loss_last_epoch"] > 0
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    assert not any(k.startswith(("_orig_mod.", "module.", "network.")) for k in state["model"])


def test_the_autocast_inferer_in_fp32_is_the_plain_forward():
    from networks import ThreeLevelUNet
    from workflows.machine.precision import AutocastInferer
    torch.manual_seed(0)
    network = ThreeLevelUNet(channels=[4, 8, 16, 32]).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(AutocastInferer("fp32")(x, network), network(x))
        fast = AutocastInferer("bf16")(x, network)
    assert fast.dtype == torch.float32 and torch.allclose(fast, network(x), atol=0.1)
