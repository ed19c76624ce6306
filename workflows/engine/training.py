"""Chunked, resumable training on MONAI's ``SupervisedTrainer``: what the bundle's ``training`` id runs.

A split (``workflows.split``) cuts the training slices into chunks; each chunk is trained for
``epochs_per_chunk`` epochs with only that chunk cached. The engine's behaviour comes from handlers listed in
``train.json`` (MONAI's ``ValidationHandler``, ``StatsHandler``, ``TensorBoardStatsHandler``,
``LrScheduleHandler`` and the ones here); :class:`ChunkedTraining` only orchestrates the chunks. Where the pieces
live: what is checked before anything is built in :mod:`workflows.engine.training_checks`, what is read (sampler,
cache, augmentation) in :mod:`workflows.engine.training_data`, the files of a training and their restoring in
:mod:`workflows.engine.chunk_run`. :class:`ProgressCheckpointHandler` saves the chunk in progress, so rerunning the
same command carries on from it, data order included, and a killed run ends with the same weights;
:class:`ChunkCheckpointHandler` ends each chunk (its checkpoint, ``model.pt``, ``best_model.pt``, the log). TensorBoard
(``ckpt_dir/tensorboard/``) gets the loss per iteration and the validation Dice per chunk, with steps counted across
chunks.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time

import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset, decollate_batch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.metrics import DiceMetric

from workflows.engine import distributed
from workflows.engine.chunk_run import ChunkRun, load_checkpoint, loss_of, save_checkpoint
from workflows.engine.model_file import read_torch_file
from workflows.engine.training_checks import ChunkRefused, read_datalist
from workflows.engine.training_data import AugmentedDataset, ResumableSampler
from workflows.machine.atomic import write_json_atomic
from workflows.machine.locking import folder_lock
from workflows.machine.memory import peak_memory_mib
from workflows.machine.settings import flag

__all__ = ["warm_start", "SamplerEpochHandler", "ProgressCheckpointHandler", "ChunkCheckpointHandler", "EndsInOneLine",
           "LossProgressBar", "ChunkedTraining"]

logger = logging.getLogger("liver_ct.training")


def warm_start(network: torch.nn.Module, liver_model: str | os.PathLike) -> int:
    """Start the tumour stage from the liver stage's weights (both see the same slices, zoomed or not): every tensor
    of the same name and shape, and for the output layer (two outputs there, one here: ``final.*`` of the
    ThreeLevelUNet, the last convolution of any network) the liver stage's tumour channel, its second output.
    Returns how many tensors were copied."""
    state = read_torch_file(liver_model, "liver stage model file")
    source = state["model"] if isinstance(state.get("model"), dict) else state
    for wrapper in ("_orig_mod", "module"):  # torch.compile, DistributedDataParallel
        network = getattr(network, wrapper, network)
    own = network.state_dict()
    copied = {}
    for key, value in own.items():
        theirs = source.get(key)
        if theirs is None:
            continue
        if tuple(theirs.shape) == tuple(value.shape):
            copied[key] = theirs
        elif theirs.shape[0] == 2 and value.shape[0] == 1 and tuple(theirs.shape[1:]) == tuple(value.shape[1:]):
            copied[key] = theirs[1:2]
    own.update(copied)
    network.load_state_dict(own)
    return len(copied)

class SamplerEpochHandler:
    """Give the :class:`ResumableSampler` (and the :class:`AugmentedDataset`) the chunk and epoch at each epoch's
    start, so the order and the augmentation are reproducible."""

    def __init__(self, sampler: ResumableSampler, run: ChunkRun, augmented: AugmentedDataset | None = None) -> None:
        self.sampler, self.run, self.augmented = sampler, run, augmented

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.sampler.set_epoch(self.run.chunk, engine.state.epoch)
        if self.augmented is not None:
            self.augmented.set_epoch(self.run.chunk, engine.state.epoch)

class ProgressCheckpointHandler:
    """Save ``checkpoint_progress.pt`` every ``every`` iterations of a chunk (a crash loses at most that many).
    Not at the chunk's last iteration: a resumed run always has an iteration left, so the chunk's end (validation,
    chunk checkpoint) runs through the engine's events."""

    def __init__(self, run: ChunkRun, every: int = 100) -> None:
        if int(every) < 1:
            raise ValueError(f"`checkpoint_every` must be a positive integer, got {every!r}.")
        self.run, self.every = run, int(every)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration < engine.state.epoch_length * engine.state.max_epochs and distributed.is_main():
            save_checkpoint(self.run.progress_checkpoint, self.run.state(engine, chunk_done=False))

class ChunkCheckpointHandler:
    """At a chunk's end (after ``ValidationHandler`` ran ``validator``): ``model.pt``, ``best_model.pt`` when the
    validation Dice beats every earlier chunk's, ``checkpoint_chunk_<k>.pt`` with the chunk's log entry, and
    ``training_log.json``. Records the loss of every iteration for the log."""

    def __init__(self, run: ChunkRun, validator: SupervisedEvaluator | None = None,
                 full_datalist: str | None = None, postprocessing=None) -> None:
        self.run, self.validator, self.postprocessing = run, validator, postprocessing
        self.full_datalist = full_datalist  # validated once, after the last chunk, when chunks validate on another
        self.losses: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.losses.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self.losses.append(loss_of(e.state.output)))
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        run, k = self.run, self.run.chunk
        val_metric, metric_name = None, None
        if self.validator is not None and self.validator.state.metrics:
            metric_name = self.validator.state.key_metric_name
            val_metric = float(self.validator.state.metrics[metric_name])
        log = [e for e in run.read_log() if e["chunk"] != k]
        best = max([e["val_metric"] for e in log if e.get("val_metric") is not None], default=-math.inf)
        per_epoch = engine.state.epoch_length
        entry = {
            "chunk": k, "slices": len(engine.data_loader.dataset), "epochs": run.epochs_per_chunk,
            "iterations": per_epoch * engine.state.max_epochs, "resumed_at_iteration": run.resumed_at,
            "mean_loss_last_epoch": sum(self.losses[-per_epoch:]) / len(self.losses[-per_epoch:]) if self.losses else None,
            "seconds": round(time.time() - run.chunk_started, 1), "peak_memory_mib": round(peak_memory_mib(), 1),
            "val_metric_name": metric_name, "val_metric": val_metric, "threads": torch.get_num_threads(),
            "best": val_metric is not None and val_metric > best,
        }
        if k == run.n_chunks - 1:
            entry.update(self._validate_full_list())
        if distributed.is_main():  # one writer; every rank holds the same weights
            state = run.state(engine, chunk_done=True)
            state["log"] = {key: value for key, value in entry.items() if value is not None}
            save_checkpoint(run.chunk_checkpoint(k), state)  # chunk k is done from here on
            run.save_model(run.ckpt_dir / "model.pt", state["model"])
            if entry["best"]:
                run.save_model(run.ckpt_dir / "best_model.pt", state["model"])
            run.progress_checkpoint.unlink(missing_ok=True)
            write_json_atomic(run.log_path, log + [entry])
        distributed.barrier()  # no rank starts the next chunk before its checkpoint is on disk
        loss = f"{entry['mean_loss_last_epoch']:.4f}" if entry["mean_loss_last_epoch"] is not None else "n/a"
        metric = f", {metric_name} {val_metric:.4f}{' (best)' if entry['best'] else ''}" if val_metric is not None else ""
        logger.info(f"chunk {k} done: loss {loss}, {entry['seconds']} s, peak memory {entry['peak_memory_mib']} MiB"
                    f"{metric}; checkpoint {run.chunk_checkpoint(k)}")


    def _validate_full_list(self) -> dict:
        """After the last chunk: the mean Dice over every slice of the validation patients, when the chunks were
        validated on another list (the balanced sample). Computed apart from the validator's engine, so its
        handlers (TensorBoard, MLflow, best model) see only the per-chunk validations."""
        if self.validator is None or not self.full_datalist:
            return {}
        dataset = self.validator.data_loader.dataset
        full = self.run.rows(read_datalist(self.run.dataset_dir / self.full_datalist))
        if not hasattr(dataset, "data") or [e["image"] for e in full] == [e["image"] for e in dataset.data]:
            return {}
        loader = DataLoader(Dataset(full, transform=dataset.transform), batch_size=self.validator.data_loader.batch_size)
        metric, network = DiceMetric(include_background=True), self.validator.network
        device = next(network.parameters()).device
        network.eval()
        with torch.no_grad():
            for batch in loader:
                batch["pred"] = self.validator.inferer(batch["image"].to(device), network)
                items = [self.postprocessing(item) if self.postprocessing is not None else item
                         for item in decollate_batch({"pred": batch["pred"], "label": batch["label"].to(device)})]
                metric(y_pred=[i["pred"] for i in items], y=[i["label"] for i in items])
        value = float(metric.aggregate().item())
        logger.info(f"after the last chunk, mean Dice over {self.full_datalist} ({len(full)} slices): {value:.4f}")
        return {"full_val_datalist": self.full_datalist, "full_val_metric": value}

class EndsInOneLine:
    """The first handler of an engine's ``EXCEPTION_RAISED`` event (Ignite calls only the first): the error goes on
    to the bundle's one-line report (a full disk, Ctrl-C) instead of MONAI's ``StatsHandler`` logging its
    traceback first. A bug still ends in its traceback, from Python itself."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def __call__(self, engine: Engine, error: BaseException) -> None:
        raise error

class LossProgressBar:
    """Ignite's progress bar with the loss, per epoch; ``enabled=false`` (or ``"false"`` from the command line)
    leaves it out."""

    def __init__(self, enabled: bool | str = True) -> None:
        self.enabled = flag(enabled, "progress")

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False, desc="chunk").attach(engine, output_transform=lambda out: {"loss": loss_of(out)})

class ChunkedTraining:
    """Train the chunks of a split one after another, resumably: the orchestration; everything the engine does
    during a chunk comes from the trainer's handlers.

    Args:
        trainer: a ``SupervisedTrainer`` whose data loader reads ``dataset`` through ``sampler``, with the
            handlers above (:class:`ChunkCheckpointHandler` ends each chunk).
        dataset: a ``CacheDataset`` refilled with each chunk (``set_data``), so only the current chunk is cached.
        sampler: the loader's :class:`ResumableSampler`.
        run: the :class:`ChunkRun` the handlers share.
        chunk: train this chunk only (it needs chunk-1's checkpoint); ``None`` trains every chunk not yet done.
        command: how the user runs training, for messages (the bundle's command line).
    """

    def __init__(self, trainer: SupervisedTrainer, dataset, sampler: ResumableSampler, run: ChunkRun,
                 chunk: int | None = None,
                 command: str = "python -m monai.bundle run training --config_file <bundle>/configs/train.json") -> None:
        self.trainer, self.dataset, self.sampler = trainer, dataset, sampler
        self.chunk_run = run
        self.chunk = None if chunk is None else int(chunk)
        self.command = command

    def _command_for(self, k: int) -> str:
        return f"{self.command} --dataset_dir {self.chunk_run.dataset_dir} --chunk {k} (with the options you used here)"

    def chunks_to_train(self) -> list[int]:
        run = self.chunk_run
        done = [k for k in range(run.n_chunks) if run.chunk_checkpoint(k).exists()]
        if self.chunk is None:
            return [k for k in range(run.n_chunks) if k not in done]
        k = self.chunk
        if not 0 <= k < run.n_chunks:
            raise ChunkRefused(f"--chunk {k} does not exist: {run.dataset_dir} holds chunks 0..{run.n_chunks - 1}.")
        if k in done:
            return []
        if k > 0 and not run.chunk_checkpoint(k - 1).exists():
            raise ChunkRefused(
                f"chunk {k} starts from the checkpoint chunk {k - 1} ended with, and "
                f"{run.chunk_checkpoint(k - 1)} is missing. Train chunk {k - 1} first: {self._command_for(k - 1)}"
            )
        return [k]

    def run(self) -> list[dict]:
        """Train what is due (one training per ``ckpt_dir`` at a time); returns the log entries of the chunks
        trained now."""
        if not distributed.is_main():  # rank 0 holds the folder for all ranks
            return self._run()
        with folder_lock(self.chunk_run.ckpt_dir, "a training"):
            return self._run()

    def _run(self) -> list[dict]:
        self.chunk_run.check_model_files()  # before anything, the log's rebuild included, writes a model file
        self.chunk_run.read_log()  # a log a kill left behind the checkpoints is rebuilt first
        todo = self.chunks_to_train()
        if not todo:
            which = f"chunk {self.chunk} is" if self.chunk is not None else f"all {self.chunk_run.n_chunks} chunks are"
            logger.info(f"{which} already done ({self.chunk_run.ckpt_dir}); nothing to train.")
            return []
        for k in todo:
            self._train_chunk(k)
        trained = set(todo)
        return [e for e in self.chunk_run.read_log() if e["chunk"] in trained]

    def _train_chunk(self, k: int) -> None:
        run = self.chunk_run
        run.chunk, run.chunk_started = k, time.time()
        data = run.chunk_data(k)
        run.data_hash = run.data_identity(k)
        self.dataset.set_data([])  # drop the previous chunk's cache before filling the next one
        gc.collect()
        peak_memory_mib(reset=True)
        self.dataset.set_data(data)
        loader_length = len(self.trainer.data_loader)
        total = loader_length * run.epochs_per_chunk

        iteration, resumed = 0, False
        progress = load_checkpoint(run.progress_checkpoint) if run.progress_checkpoint.exists() else None
        if progress is not None and progress["chunk"]["index"] == k:
            run.restore(self.trainer, progress, run.progress_checkpoint, same_chunk=True)
            iteration, resumed = int(progress["trainer"]["iteration"]), True
            logger.info(f"chunk {k}: resuming at iteration {iteration} of {total} from {run.progress_checkpoint}")
        elif k > 0:
            run.restore(self.trainer, load_checkpoint(run.chunk_checkpoint(k - 1)), run.chunk_checkpoint(k - 1))
            logger.info(f"chunk {k}: starting from {run.chunk_checkpoint(k - 1)}")
        elif run.liver_model is not None:
            copied = warm_start(self.trainer.network, run.liver_model)
            logger.info(f"chunk 0: the tumour stage starts from the liver stage's weights ({copied} tensors of "
                        f"{run.liver_model}, its tumour channel for the last layer)")
        logger.info(f"chunk {k}/{run.n_chunks - 1}: {len(data)} slices, {run.epochs_per_chunk} epoch(s), "
                    f"{loader_length} iterations per epoch")
        run.resumed_at = iteration if resumed else None
        self.trainer.load_state_dict({"iteration": iteration, "epoch_length": loader_length,
                                      "max_epochs": run.epochs_per_chunk})
        self.sampler.skip_next((iteration % loader_length) * self.trainer.data_loader.batch_size)
        self.trainer.run()
