"""Training in several processes through configs/multi_gpu_train.json, run by torchrun on CPUs (gloo): the ranks
share each epoch, one set of files is written, the model loads in single-process inference, and a killed rank's
run resumes to the weights of an uninterrupted one."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest
import torch

from workflows.engine import distributed
from workflows.bundle import run_workflow
from workflows.data.synthetic_cases import generate_case
from workflows.engine.training_data import ResumableSampler

from .conftest import BUNDLE, EVALUATE, TINY, TRAIN, make_lists

REPO = BUNDLE.parents[1]
MULTI = str(BUNDLE / "configs" / "multi_gpu_train.json")
EVALUATE_MULTI = [TRAIN, EVALUATE, str(BUNDLE / "configs" / "multi_gpu_evaluate.json")]


def test_each_rank_takes_its_own_share_of_every_epoch(monkeypatch):
    data = list(range(11))
    sampler = ResumableSampler(data, seed=5)
    sampler.set_epoch(chunk=2, epoch=1)
    whole = list(sampler)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        shares.append(list(sampler))
        assert len(shares[-1]) == len(sampler) == 6
    assert shares[0] == whole[0::2] and shares[1] == whole[1::2] + whole[:1]  # padded from the start, as PyTorch's
    assert set(shares[0]).isdisjoint(whole[1::2]) and set(shares[0]) | set(shares[1]) == set(data)
    sampler.skip_next(2)  # a resume skips within this rank's share
    assert list(sampler) == shares[1][2:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(lists, ckpt_dir, run_id="training", configs=(TRAIN, MULTI), **extra):
    overrides = {**TINY, "spatial_size": 48, "network_def#channels": "[4,8,16,32]", "epochs_per_chunk": 2,
                 "checkpoint_every": 2, "dataset_dir": str(lists), "ckpt_dir": str(ckpt_dir), "threads": 1,
                 "tensorboard": True, **extra}
    if run_id == "evaluating":  # the network's settings come from the model file
        overrides = {k: v for k, v in overrides.items() if k not in ("spatial_size", "network_def#channels")}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "-m", "monai.bundle", "run", run_id,
            "--config_file", json.dumps(list(configs))]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return args


def _weights(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"] if "settings" in state else state


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the rank processes through /proc (Linux)")
def test_torchrun_two_ranks_share_the_epochs_write_once_and_resume_after_a_killed_rank(tmp_path):
    lists = make_lists(tmp_path / "data", chunk_size=12, positives=12, negatives=12, val_fraction=0.4)
    split = json.loads((lists / "split.json").read_text())
    clean = tmp_path / "clean"
    result = subprocess.run(_torchrun(lists, clean), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # one writer: one checkpoint per chunk, one log entry per chunk, one TensorBoard writer per engine
    assert sorted(p.name for p in clean.glob("checkpoint_chunk_*.pt")) == \
        [f"checkpoint_chunk_{k}.pt" for k in range(len(split["chunks"]))]
    log = json.loads((clean / "training_log.json").read_text())
    assert [e["chunk"] for e in log] == list(range(len(split["chunks"])))
    assert len(list((clean / "tensorboard").glob("events.out.tfevents.*"))) <= 2
    # each rank ran half of every epoch: ceil(ceil(slices / 2 ranks) / batch 2) iterations per epoch
    for entry in log:
        assert entry["iterations"] == -(-(-(-entry["slices"] // 2)) // 2) * 2
    weights = _weights(clean / "model.pt")
    assert not any(key.startswith("module.") for key in weights)

    # the model loads in single-process inference
    case = generate_case(0, seed=4, size=32, slices=6)
    nib.save(case.stored_image(case.hu), tmp_path / "scan.nii.gz")
    run_workflow("inference", ["inference"], "infer", input=str(tmp_path / "scan.nii.gz"),
                 output_dir=str(tmp_path / "pred"), ckpt_file=str(clean / "model.pt"))
    assert (tmp_path / "pred" / "scan_seg.nii.gz").is_file()

    # evaluation in two processes: each scores whole volumes of its share, rank 0 writes what one process writes
    run_workflow("evaluating", ["train", "evaluate"], "eval", dataset_dir=str(lists), ckpt_dir=str(clean),
                 output_dir=str(tmp_path / "eval_one"), progress=False)
    result = subprocess.run(_torchrun(lists, clean, "evaluating", EVALUATE_MULTI, output_dir=tmp_path / "eval_two"),
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("eval_one", "eval_two"))
    assert two["volumes"]["cases"] == one["volumes"]["cases"] == 2  # one volume per rank
    assert two["channels"] == one["channels"] and two["volumes"] == one["volumes"]
    assert (tmp_path / "eval_two" / "per_slice.csv").read_text() == (tmp_path / "eval_one" / "per_slice.csv").read_text()

    # a rank killed mid-chunk: torchrun stops the other; the rerun resumes to the uninterrupted run's weights
    killed = tmp_path / "killed"
    process = subprocess.Popen(_torchrun(lists, killed), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint_progress.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.005)
    ranks = _children(process.pid)
    assert ranks, "torchrun started no rank"
    import os

    os.kill(ranks[-1], signal.SIGKILL)
    assert process.wait(timeout=120) != 0
    assert (killed / "checkpoint_progress.pt").exists()
    result = subprocess.run(_torchrun(lists, killed), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resuming at iteration" in result.stdout + result.stderr
    resumed = _weights(killed / "model.pt")
    assert resumed.keys() == weights.keys()
    assert all(torch.equal(resumed[k], weights[k]) for k in weights)


def test_multi_gpu_training_outside_torchrun_says_how_to_start_it(tmp_path):
    lists = make_lists(tmp_path / "data")
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                             json.dumps([TRAIN, MULTI]), "--dataset_dir", str(lists), "--ckpt_dir", str(tmp_path / "c")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "torchrun --nproc_per_node=N" in result.stderr and "Traceback" not in result.stderr
