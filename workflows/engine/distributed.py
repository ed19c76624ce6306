"""Training in several processes, one per GPU (or CPU processes), on PyTorch's own engine: ``torch.distributed``
started by ``torchrun``, as the MONAI model zoo's ``multi_gpu_train.json`` does.

``configs/multi_gpu_train.json`` lays this over ``train.json`` (``multi_gpu_evaluate.json`` over ``evaluate.json``:
each rank scores whole volumes of its share, rank 0 gathers and writes the report): :func:`start` joins the process group ``torchrun``
describes in the environment (nccl on GPUs, gloo on CPUs) and gives this process its device, :func:`wrap` puts the
network in ``DistributedDataParallel``. The training itself is rank-aware everywhere and needs nothing else: the
sampler gives each rank its share of every epoch (:class:`workflows.engine.training_data.ResumableSampler`), only rank 0 writes
(checkpoints, model files, the log, TensorBoard, MLflow), all ranks meet at each chunk's end, and checkpoints hold
the plain network's keys (no ``module.``), so single-process inference loads them. In one process every function
here is a no-op: rank 0 of 1.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

__all__ = ["TORCHRUN_COMMAND", "rank", "world_size", "is_main", "barrier", "gather", "rank_share", "start", "wrap",
           "plain", "stop"]

logger = logging.getLogger("liver_ct.distributed")

TORCHRUN_COMMAND = ("torchrun --nproc_per_node=N -m monai.bundle run training --config_file "
                    "\"['configs/train.json','configs/multi_gpu_train.json']\" --dataset_dir LISTS --ckpt_dir RUNS")


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """How many processes train together (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes the files (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if world_size() > 1:
        dist.barrier()


def gather(items: list) -> list:
    """Every rank's ``items`` (picklable), concatenated in rank order, on every rank (``items`` in one process)."""
    if world_size() == 1:
        return list(items)
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def rank_share(items: list[dict], key: str = "volume_id") -> list[dict]:
    """This rank's share of a datalist, whole volumes each (every world-size-th ``key`` value in sorted order from
    the rank), so a volume's slices are stacked and scored by one rank; all of it in one process."""
    from workflows.data.slice_set import volume_sort_key

    if world_size() == 1:
        return list(items)
    values = sorted({str(item[key]) for item in items}, key=volume_sort_key)
    mine = set(values[rank()::world_size()])
    return [item for item in items if str(item[key]) in mine]


def start() -> torch.device:
    """Join the process group ``torchrun`` set up (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` in the
    environment): nccl with one GPU per process where CUDA is present, gloo on CPUs. Returns this process's device.

    Raises:
        ValueError: not started by ``torchrun``; the message gives the command.
    """
    if "LOCAL_RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError(f"multi_gpu_train.json trains in several processes started by torchrun: {TORCHRUN_COMMAND} "
                         "(for one process, leave multi_gpu_train.json out).")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"torchrun started local rank {local_rank}, but this machine has "
                             f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node={torch.cuda.device_count()}.")
        device, backend = torch.device(f"cuda:{local_rank}"), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    logger.info(f"rank {rank()} of {world_size()} ({backend}) on {device}")
    return device


def wrap(network: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``network`` in ``DistributedDataParallel`` (batch norm synchronised across GPUs; on CPUs, where
    ``SyncBatchNorm`` does not run, each rank keeps its own batch statistics). Without a process group it is
    returned as it is."""
    if world_size() == 1 and not dist.is_initialized():
        return network
    device = torch.device(device)
    if device.type == "cuda":
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
        return torch.nn.parallel.DistributedDataParallel(network, device_ids=[device.index], output_device=device.index)
    return torch.nn.parallel.DistributedDataParallel(network)


def plain(network: torch.nn.Module) -> torch.nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper (the network itself otherwise): its state_dict has
    no ``module.`` prefix."""
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


def stop() -> None:
    """Leave the process group (at the end of a distributed run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
