import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from workflows.bundle import BundleCommandError
from workflows.engine.training_data import ResumableSampler

from .conftest import BUNDLE, EVALUATE, TINY, TRAIN, make_lists

REPO = BUNDLE.parents[1]


def _workflow(lists, ckpt_dir, run_id="training", config=TRAIN, **overrides):
    settings = {**TINY, "dataset_dir": str(lists), "ckpt_dir": str(ckpt_dir), **overrides}
    return ConfigWorkflow(config_file=config, workflow_type="train", run_id=run_id,
                          logging_file=str(BUNDLE / "configs" / "logging.conf"), **settings)


def _weights(path):
    """A checkpoint as saved; a model file (``model.pt``: weights and settings) as its weights."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"] if "settings" in state else state


def test_train_json_names_the_overrides_users_rely_on():
    parser = ConfigParser()
    parser.read_config(TRAIN)
    assert parser["epochs_per_chunk"] == 2 and parser["spatial_size"] == 256 and parser["batch_size"] == 2
    assert parser["network_def#channels"] == [64, 128, 256, 512]
    # the reference's network by default; --architecture dynunet / segresnet swaps in MONAI's stock networks
    assert parser["network_def#_target_"] == "networks.build_network" and parser["architecture"] == "three_level_unet"
    assert parser["learning_rate"] == 1e-4 and parser["loss#lambda_bce"] == parser["loss#lambda_dice"] == 0.5
    evaluate = ConfigParser.load_config_file(EVALUATE)
    assert "network_def" not in evaluate and "train" not in evaluate  # an overlay: only its differences


def test_config_workflow_trains_every_chunk_with_checkpoints_and_log(lists, tmp_path):
    workflow = _workflow(lists, tmp_path)
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    n_chunks = len(json.loads((lists / "split.json").read_text())["chunks"])
    assert n_chunks == 3
    for k in range(n_chunks):
        state = _weights(tmp_path / f"checkpoint_chunk_{k}.pt")  # plain tensors and values: weights_only loads it
        assert state["chunk"] == {"index": k, "done": True, "n_chunks": 3, "epochs_per_chunk": 1, "seed": 0,
                                  "data": state["chunk"]["data"]} and len(state["chunk"]["data"]) == 16
        assert state["optimizer_settings"]["lr"] == 1e-4 and state["lr_scheduler_settings"]["gamma"] == 1.0
        assert {"model", "optimizer", "trainer", "lr_scheduler"} <= set(state)
    assert not (tmp_path / "checkpoint_progress.pt").exists()
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert [e["chunk"] for e in log] == [0, 1, 2]
    assert all(e["peak_memory_mib"] > 0 and e["mean_loss_last_epoch"] > 0 and e["val_metric"] is not None for e in log)
    latest = _weights(tmp_path / "model.pt")
    assert all(torch.equal(latest[k], v) for k, v in _weights(tmp_path / "checkpoint_chunk_2.pt")["model"].items())
    best_chunk = max(log, key=lambda e: e["val_metric"])["chunk"]
    best = _weights(tmp_path / "best_model.pt")
    assert all(torch.equal(best[k], v) for k, v in _weights(tmp_path / f"checkpoint_chunk_{best_chunk}.pt")["model"].items())


def test_chunk_by_chunk_and_refusals(lists, tmp_path, capsys):
    with pytest.raises(BundleCommandError, match=r"chunk 2 starts from the checkpoint chunk 1 ended with.*"
                                           r"checkpoint_chunk_1.pt is missing.*--chunk 1"):
        _run(lists, tmp_path, chunk=2)
    _run(lists, tmp_path, chunk=0)
    first = _weights(tmp_path / "model.pt")
    _run(lists, tmp_path, chunk=1)
    assert (tmp_path / "checkpoint_chunk_1.pt").exists() and not (tmp_path / "checkpoint_chunk_2.pt").exists()
    assert not all(torch.equal(first[k], v) for k, v in _weights(tmp_path / "model.pt").items())
    chunk_1 = (tmp_path / "checkpoint_chunk_1.pt").read_bytes()
    capsys.readouterr()
    assert _run(lists, tmp_path, chunk=1)[-1] == []  # done already: says so, trains nothing
    assert "chunk 1 is already done" in capsys.readouterr().out
    assert (tmp_path / "checkpoint_chunk_1.pt").read_bytes() == chunk_1
    with pytest.raises(BundleCommandError, match=r"--chunk 5 does not exist.*chunks 0..2"):
        _run(lists, tmp_path, chunk=5)


def test_resuming_with_other_settings_is_refused_by_name(lists, tmp_path):
    _run(lists, tmp_path, chunk=0)
    with pytest.raises(BundleCommandError, match=r"spatial_size: checkpoint 32, now 64"):
        _run(lists, tmp_path, chunk=1, spatial_size=64)


def _run(lists, ckpt_dir, **overrides):
    workflow = _workflow(lists, ckpt_dir, **overrides)
    workflow.initialize()
    try:
        return workflow.run()
    finally:
        workflow.finalize()


def test_sampler_resumes_mid_epoch_with_the_same_order():
    data = list(range(10))
    sampler = ResumableSampler(data, seed=3)
    sampler.set_epoch(chunk=1, epoch=2)
    full = list(sampler)
    sampler.skip_next(4)
    assert list(sampler) == full[4:]
    assert list(sampler) == full  # the skip applies once
    sampler.set_epoch(chunk=1, epoch=3)
    assert sorted(sampler) == data and list(sampler) != full


def _command(lists, ckpt_dir):
    overrides = {**TINY, "spatial_size": 64, "network_def#channels": "[8,16,32,64]", "epochs_per_chunk": 2,
                 "checkpoint_every": 3, "dataset_dir": str(lists), "ckpt_dir": str(ckpt_dir)}
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return args


def test_sigkill_mid_chunk_then_rerun_gives_the_same_weights(tmp_path):
    lists = make_lists(tmp_path / "data", chunk_size=12, positives=12, negatives=12)
    subprocess.run(_command(lists, tmp_path / "clean"), cwd=REPO, check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(lists, killed), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint_progress.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed / "checkpoint_progress.pt").exists() and not (killed / "checkpoint_chunk_1.pt").exists()
    interrupted_at = _weights(killed / "checkpoint_progress.pt")["trainer"]["iteration"]

    result = subprocess.run(_command(lists, killed), cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "resuming at iteration" in result.stdout
    log = json.loads((killed / "training_log.json").read_text())
    assert any(e["resumed_at_iteration"] == interrupted_at for e in log)
    clean, resumed = _weights(tmp_path / "clean" / "model.pt"), _weights(killed / "model.pt")
    assert clean.keys() == resumed.keys()
    assert all(torch.equal(clean[k], resumed[k]) for k in clean)


def _scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in sorted(folder.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            steps += [(e.step, e.value) for e in accumulator.Scalars(tag)]
    return sorted(steps)


def test_tensorboard_counts_steps_across_chunks_and_a_lost_log_is_rebuilt(lists, tmp_path):
    for k in range(3):  # one process per chunk, as a user runs --chunk k
        _run(lists, tmp_path, chunk=k, checkpoint_every=1)
    log = json.loads((tmp_path / "training_log.json").read_text())
    iterations = [e["iterations"] for e in log]
    losses = _scalars(tmp_path / "tensorboard", "train_loss")
    assert [step for step, _ in losses] == list(range(1, sum(iterations) + 1))  # no step twice, none missing
    dice = _scalars(tmp_path / "tensorboard", "val_mean_dice")
    assert [step for step, _ in dice] == [1, 2, 3]  # one epoch per chunk: global epochs
    assert [value for _, value in dice] == pytest.approx([e["val_metric"] for e in log])

    # a kill between chunk 2's checkpoint and its log entry (and before model.pt / best_model.pt were written):
    # the log and both models are rebuilt from the checkpoints
    (tmp_path / "training_log.json").write_text(json.dumps(log[:1]))
    (tmp_path / "best_model.pt").unlink()
    torch.save(_weights(tmp_path / "checkpoint_chunk_0.pt")["model"], tmp_path / "model.pt")  # a stale model.pt
    assert _run(lists, tmp_path)[-1] == []
    rebuilt = json.loads((tmp_path / "training_log.json").read_text())
    assert [e["chunk"] for e in rebuilt] == [0, 1, 2]
    assert [e["val_metric"] for e in rebuilt] == pytest.approx([e["val_metric"] for e in log])
    best_chunk = max(rebuilt, key=lambda e: e["val_metric"])["chunk"]
    assert [e["best"] for e in rebuilt] == [e["chunk"] == best_chunk for e in rebuilt]
    for name, chunk in (("model.pt", 2), ("best_model.pt", best_chunk)):
        expected = _weights(tmp_path / f"checkpoint_chunk_{chunk}.pt")["model"]
        assert all(torch.equal(v, expected[k]) for k, v in _weights(tmp_path / name).items())


def test_training_runs_from_the_bundle_folder_with_relative_configs(lists, tmp_path):
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
            "--dataset_dir", str(lists), "--ckpt_dir", str(tmp_path)]
    for key, value in TINY.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    args += ["--chunk", "0"]
    result = subprocess.run(args, cwd=BUNDLE, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "checkpoint_chunk_0.pt").exists() and list((tmp_path / "tensorboard").glob("events.*"))
    refused = subprocess.run(args[:-1] + ["2"], cwd=BUNDLE, capture_output=True, text=True)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr  # one line, no traceback
    assert refused.stderr.strip().splitlines()[-1].startswith("error: chunk 2 starts from the checkpoint chunk 1")


def test_mlflow_keeps_one_run_across_chunks_with_global_steps(lists, tmp_path):
    from mlflow import MlflowClient

    for k in range(3):  # one process per chunk
        _run(lists, tmp_path, chunk=k, mlflow=True)
    log = json.loads((tmp_path / "training_log.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("liver_ct")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name.startswith(tmp_path.name)
    run_id = runs[0].info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2, 3]  # one epoch per chunk
    dice = sorted(client.get_metric_history(run_id, "val_mean_dice"), key=lambda m: m.step)
    assert [m.step for m in dice] == [1, 2, 3]
    assert [m.value for m in dice] == pytest.approx([e["val_metric"] for e in log])


def test_continuing_on_another_split_is_refused_with_the_way_out(tmp_path):
    lists = make_lists(tmp_path / "data", chunk_size=8, positives=12, negatives=12, seed=0)
    _run(lists, tmp_path / "models", chunk=0)
    from workflows.data.slice_set import read_manifest
    from workflows.data.splitting import plan_split, write_split

    rows = read_manifest(tmp_path / "data" / "slices")  # a re-split into the same lists folder, another seed
    write_split(plan_split(rows, target="liver", positives=12, negatives=12, chunk_size=8, val_fraction=0.2, seed=5,
                           val_balanced=8), lists, tmp_path / "data" / "slices")
    with pytest.raises(BundleCommandError, match=r"split: checkpoint '[0-9a-f]{12}', now '[0-9a-f]{12}'.*another --ckpt_dir"):
        _run(lists, tmp_path / "models", chunk=1)


def test_a_second_training_on_one_ckpt_dir_is_refused_naming_the_first(lists, tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tmp_path.mkdir(exist_ok=True)
        (tmp_path / ".liver-ct.lock").write_text(f"{sleeper.pid}\n")
        with pytest.raises(BundleCommandError, match=rf"in use by a training running as PID {sleeper.pid}"):
            _run(lists, tmp_path, chunk=0)
        assert not (tmp_path / "checkpoint_chunk_0.pt").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_chunks_validate_on_the_balanced_list_and_the_full_list_once_at_the_end(lists, tmp_path):
    balanced = json.loads((lists / "val_balanced.json").read_text())["validation"]
    full = json.loads((lists / "val.json").read_text())["validation"]
    assert 0 < len(balanced) < len(full)
    workflow = _workflow(lists, tmp_path / "a")
    workflow.initialize()
    assert len(workflow.parser.get_parsed_content("validate#dataset")) == len(balanced)
    log = workflow.run()[-1]
    workflow.finalize()
    assert all("full_val_metric" not in e for e in log[:-1]) and log[-1]["full_val_datalist"] == "val.json"
    # the same training validated on the full list after every chunk ends with the same Dice (same weights)
    on_full = _run(lists, tmp_path / "b", val_datalist="val.json")[-1]
    assert "full_val_metric" not in on_full[-1]
    assert log[-1]["full_val_metric"] == pytest.approx(on_full[-1]["val_metric"], abs=1e-6)
