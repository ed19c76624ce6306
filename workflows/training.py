"""Chunked, resumable training on MONAI's ``SupervisedTrainer``: the logic the bundle's ``training`` id runs.

A split (``workflows.split``) cuts the training slices into chunks; each chunk is trained for
``epochs_per_chunk`` epochs with only that chunk cached. Files in ``ckpt_dir``:

- ``checkpoint_chunk_<k>.pt``: the state chunk k ended with (model, optimizer, scheduler, trainer, chunk state);
  its presence means chunk k is done, and ``--chunk k+1`` starts from it.
- ``checkpoint_progress.pt``: the chunk in progress, saved every ``checkpoint_every`` iterations; rerunning the
  same command carries on from it, data order included, so a killed run ends with the same weights.
- ``model.pt``: the weights of the latest complete chunk; ``best_model.pt``: the best validation Dice so far.
- ``training_log.json``: per chunk loss, time, peak memory and validation Dice.

All are written atomically and hold only tensors and plain values (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import gc
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sized
from pathlib import Path

import torch
from ignite.engine import Events
from monai.data import load_decathlon_datalist
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from torch.utils.data import Sampler

from transforms import TARGET_CHANNELS
from workflows.atomic import write_bytes_atomic, write_json_atomic
from workflows.memory import peak_memory_mib

__all__ = ["read_split", "target_of", "ResumableSampler", "ChunkedTraining", "ChunkRefused"]

logger = logging.getLogger("liver_ct.training")

PROGRESS_NAME = "checkpoint_progress.pt"
LOG_NAME = "training_log.json"


def read_split(dataset_dir: str | os.PathLike) -> dict:
    """``split.json`` of a lists folder made by ``workflows.split``."""
    path = Path(dataset_dir) / "split.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --dataset_dir must be a lists folder made by "
            f"`python -m workflows.split SLICES_DIR --out {dataset_dir}`."
        )
    return json.loads(path.read_text())


def target_of(dataset_dir: str | os.PathLike) -> str:
    """The target the lists in ``dataset_dir`` were built for (``liver``, ``tumor`` or ``both``)."""
    return read_split(dataset_dir)["target"]


def out_channels_of(dataset_dir: str | os.PathLike) -> int:
    return len(TARGET_CHANNELS[target_of(dataset_dir)])


class ResumableSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on ``(seed, chunk, epoch)``, and that can start part-way
    through an epoch, so a run resumed from iteration i sees exactly the batches an uninterrupted run saw.

    The length follows the dataset's current length (datasets are refilled chunk by chunk).
    """

    def __init__(self, data_source: Sized, seed: int = 0, shuffle: bool = True) -> None:
        self.data_source = data_source
        self.seed = int(seed)
        self.shuffle = shuffle
        self.chunk = 0
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, chunk: int, epoch: int) -> None:
        self.chunk, self.epoch = int(chunk), int(epoch)

    def skip_next(self, samples: int) -> None:
        """Leave out the first ``samples`` indices of the next iteration only (resuming mid-epoch)."""
        self._skip = int(samples)

    def __len__(self) -> int:
        return len(self.data_source)

    def __iter__(self) -> Iterator[int]:
        n = len(self.data_source)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.chunk * 1_009 + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        skip, self._skip = self._skip, 0
        return iter(order[skip:])


class ChunkRefused(ValueError):
    """A chunk that cannot be trained (yet); the message names what is missing and the command that makes it.
    The bundle's command line prints it alone (``workflows.bundle.one_line_errors``)."""


def _save(path: Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class ChunkedTraining:
    """Train the chunks of a split one after another, resumably.

    Args:
        trainer: a ``SupervisedTrainer`` whose data loader reads ``dataset`` through ``sampler``.
        dataset: a ``CacheDataset`` refilled with each chunk (``set_data``), so only the current chunk is cached.
        sampler: the loader's :class:`ResumableSampler`.
        dataset_dir: the lists folder (``split.json``, ``chunk_<k>.json``, the validation list).
        ckpt_dir: where checkpoints go.
        chunk: train this chunk only (it needs chunk-1's checkpoint); ``None`` trains every chunk not yet done.
        epochs_per_chunk: epochs over each chunk.
        checkpoint_every: iterations between progress checkpoints (a crash loses at most this many).
        evaluator: validation run after each chunk on ``val_datalist``; its key metric picks ``best_model.pt``.
        val_dataset: the evaluator's dataset, filled from ``val_datalist`` once.
        val_datalist: file name in ``dataset_dir`` (default ``val.json``: all validation slices).
        lr_scheduler: saved and restored with the rest.
        config_summary: plain values recorded in the checkpoints (network widths, size, target) so a mismatching
            resume is refused by name.
        command: how the user runs training, for messages (the bundle's command line).
        progress: show a progress bar per epoch.
    """

    def __init__(
        self,
        trainer: SupervisedTrainer,
        dataset,
        sampler: ResumableSampler,
        dataset_dir: str,
        ckpt_dir: str,
        chunk: int | None = None,
        epochs_per_chunk: int = 2,
        checkpoint_every: int = 100,
        evaluator: SupervisedEvaluator | None = None,
        val_dataset=None,
        val_datalist: str = "val.json",
        lr_scheduler=None,
        config_summary: dict | None = None,
        command: str = "python -m monai.bundle run training --config_file <bundle>/configs/train.json",
        progress: bool | str = True,
    ) -> None:
        if epochs_per_chunk < 1:
            raise ValueError(f"`epochs_per_chunk` must be a positive integer, got {epochs_per_chunk!r}.")
        if checkpoint_every < 1:
            raise ValueError(f"`checkpoint_every` must be a positive integer, got {checkpoint_every!r}.")
        self.trainer, self.dataset, self.sampler = trainer, dataset, sampler
        self.dataset_dir, self.ckpt_dir = Path(dataset_dir), Path(ckpt_dir)
        self.chunk = None if chunk is None else int(chunk)
        self.epochs_per_chunk, self.checkpoint_every = int(epochs_per_chunk), int(checkpoint_every)
        self.evaluator, self.val_dataset, self.val_datalist = evaluator, val_dataset, val_datalist
        self.lr_scheduler = lr_scheduler
        self.config_summary = dict(config_summary or {})
        self.command = command
        # `--progress false` arrives from the command line as a string
        self.progress = progress.strip().lower() not in ("false", "0", "no") if isinstance(progress, str) else bool(progress)
        self.split = read_split(self.dataset_dir)
        self.n_chunks = len(self.split["chunks"])
        self._current_chunk = 0
        self._handlers_attached = False

    # -- file names ---------------------------------------------------------------------------------------------
    def chunk_checkpoint(self, k: int) -> Path:
        return self.ckpt_dir / f"checkpoint_chunk_{k}.pt"

    @property
    def progress_checkpoint(self) -> Path:
        return self.ckpt_dir / PROGRESS_NAME

    def _command_for(self, k: int) -> str:
        return f"{self.command} --dataset_dir {self.dataset_dir} --chunk {k} (with the options you used here)"

    # -- what to train ------------------------------------------------------------------------------------------
    def chunks_to_train(self) -> list[int]:
        done = [k for k in range(self.n_chunks) if self.chunk_checkpoint(k).exists()]
        if self.chunk is None:
            return [k for k in range(self.n_chunks) if k not in done]
        k = self.chunk
        if not 0 <= k < self.n_chunks:
            raise ChunkRefused(f"--chunk {k} does not exist: {self.dataset_dir} holds chunks 0..{self.n_chunks - 1}.")
        if k in done:
            return []
        if k > 0 and not self.chunk_checkpoint(k - 1).exists():
            raise ChunkRefused(
                f"chunk {k} starts from the checkpoint chunk {k - 1} ended with, and "
                f"{self.chunk_checkpoint(k - 1)} is missing. Train chunk {k - 1} first: {self._command_for(k - 1)}"
            )
        return [k]

    def run(self) -> list[dict]:
        """Train what is due; returns the log entries of the chunks trained now."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        todo = self.chunks_to_train()
        if not todo:
            which = f"chunk {self.chunk} is" if self.chunk is not None else f"all {self.n_chunks} chunks are"
            logger.info(f"{which} already done ({self.ckpt_dir}); nothing to train.")
            return []
        self._attach_handlers()
        entries = []
        for k in todo:
            entries.append(self._train_chunk(k))
        return entries

    # -- state ----------------------------------------------------------------------------------------------------
    def _state(self, k: int, chunk_done: bool) -> dict:
        state = {
            "model": self.trainer.network.state_dict(),
            "optimizer": self.trainer.optimizer.state_dict(),
            "trainer": dict(self.trainer.state_dict()),
            "chunk": {"index": k, "done": chunk_done, "n_chunks": self.n_chunks,
                      "epochs_per_chunk": self.epochs_per_chunk, "seed": self.sampler.seed},
            "config": self.config_summary,
            "torch_rng": torch.get_rng_state(),
        }
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        return state

    def _restore(self, state: dict, source: Path) -> None:
        differing = {k: (state.get("config", {}).get(k), v) for k, v in self.config_summary.items()
                     if k in state.get("config", {}) and state["config"][k] != v}
        if differing:
            shown = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differing.items())
            raise ChunkRefused(f"{source} was made with other settings ({shown}); use the same settings or "
                               "another --ckpt_dir.")
        self.trainer.network.load_state_dict(state["model"])
        self.trainer.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and "lr_scheduler" in state:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        torch.set_rng_state(state["torch_rng"])

    # -- engine hooks --------------------------------------------------------------------------------------------
    def _attach_handlers(self) -> None:
        if self._handlers_attached:
            return
        trainer = self.trainer

        @trainer.on(Events.EPOCH_STARTED)
        def _order_this_epoch(engine) -> None:
            self.sampler.set_epoch(self._current_chunk, engine.state.epoch)

        @trainer.on(Events.ITERATION_COMPLETED(every=self.checkpoint_every) | Events.COMPLETED)
        def _save_progress(engine) -> None:
            _save(self.progress_checkpoint, self._state(self._current_chunk, chunk_done=False))

        @trainer.on(Events.ITERATION_COMPLETED)
        def _record_loss(engine) -> None:
            output = engine.state.output
            loss = output[0]["loss"] if isinstance(output, list) else output["loss"]
            self._losses.append(float(loss))

        if self.progress:
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False, desc="chunk").attach(
                trainer, output_transform=lambda out: {"loss": float(out[0]["loss"] if isinstance(out, list) else out["loss"])}
            )
        self._handlers_attached = True

    # -- one chunk -----------------------------------------------------------------------------------------------
    def _train_chunk(self, k: int) -> dict:
        self._current_chunk = k
        self._losses: list[float] = []
        data = load_decathlon_datalist(self.dataset_dir / self.split["chunks"][k], data_list_key="training")
        started = time.time()
        self.dataset.set_data([])  # drop the previous chunk's cache before filling the next one
        gc.collect()
        peak_memory_mib(reset=True)
        self.dataset.set_data(data)
        loader_length = len(self.trainer.data_loader)
        total = loader_length * self.epochs_per_chunk

        iteration = 0
        progress = _load(self.progress_checkpoint) if self.progress_checkpoint.exists() else None
        resumed = progress is not None and progress["chunk"]["index"] == k
        if resumed:
            state = progress
            self._restore(state, self.progress_checkpoint)
            iteration = int(state["trainer"]["iteration"])
            logger.info(f"chunk {k}: resuming at iteration {iteration} of {total} from {self.progress_checkpoint}")
        elif k > 0:
            self._restore(_load(self.chunk_checkpoint(k - 1)), self.chunk_checkpoint(k - 1))
            logger.info(f"chunk {k}: starting from {self.chunk_checkpoint(k - 1)}")
        logger.info(f"chunk {k}/{self.n_chunks - 1}: {len(data)} slices, {self.epochs_per_chunk} epoch(s), "
                    f"{loader_length} iterations per epoch")

        if iteration < total:
            self.trainer.load_state_dict({"iteration": iteration, "epoch_length": loader_length,
                                          "max_epochs": self.epochs_per_chunk})
            self.sampler.skip_next((iteration % loader_length) * self.trainer.data_loader.batch_size)
            self.trainer.run()
        train_seconds = time.time() - started

        val_metric = None
        if self.evaluator is not None:
            if self.val_dataset is not None and not len(self.val_dataset.data):
                self.val_dataset.set_data(load_decathlon_datalist(self.dataset_dir / self.val_datalist,
                                                                  data_list_key="validation"))
            if len(self.evaluator.data_loader):
                self.evaluator.run()
                val_metric = float(self.evaluator.state.metrics[self.evaluator.state.key_metric_name])

        log = self._read_log()
        best = max([e["val_metric"] for e in log if e.get("val_metric") is not None], default=-math.inf)
        weights = io.BytesIO()
        torch.save(self.trainer.network.state_dict(), weights)
        write_bytes_atomic(self.ckpt_dir / "model.pt", weights.getvalue())
        if val_metric is not None and val_metric > best:
            write_bytes_atomic(self.ckpt_dir / "best_model.pt", weights.getvalue())

        entry = {
            "chunk": k, "slices": len(data), "epochs": self.epochs_per_chunk, "iterations": total,
            "resumed_at_iteration": iteration if resumed else None,
            "mean_loss_last_epoch": _mean(self._losses[-loader_length:]) if self._losses else None,
            "seconds": round(time.time() - started, 1), "train_seconds": round(train_seconds, 1),
            "peak_memory_mib": round(peak_memory_mib(), 1),
            "val_metric_name": self.evaluator.state.key_metric_name if self.evaluator is not None else None,
            "val_metric": val_metric, "best": val_metric is not None and val_metric > best,
        }
        state = self._state(k, chunk_done=True)
        state["log"] = {key: value for key, value in entry.items() if value is not None}
        _save(self.chunk_checkpoint(k), state)  # chunk k is done from here on
        self.progress_checkpoint.unlink(missing_ok=True)
        write_json_atomic(self.ckpt_dir / LOG_NAME, [e for e in log if e["chunk"] != k] + [entry])
        loss = f"{entry['mean_loss_last_epoch']:.4f}" if entry["mean_loss_last_epoch"] is not None else "n/a"
        metric = f", {entry['val_metric_name']} {val_metric:.4f}{' (best)' if entry['best'] else ''}" if val_metric is not None else ""
        logger.info(f"chunk {k} done: loss {loss}, {entry['seconds']} s, peak memory {entry['peak_memory_mib']} MiB"
                    f"{metric}; checkpoint {self.chunk_checkpoint(k)}")
        return entry

    def _read_log(self) -> list[dict]:
        path = self.ckpt_dir / LOG_NAME
        return json.loads(path.read_text()) if path.exists() else []


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
