"""Chunked, resumable training on MONAI's ``SupervisedTrainer``: what the bundle's ``training`` id runs.

A split (``workflows.split``) cuts the training slices into chunks; each chunk is trained for
``epochs_per_chunk`` epochs with only that chunk cached. The engine's behaviour comes from handlers listed in
``train.json`` (MONAI's ``ValidationHandler``, ``StatsHandler``, ``TensorBoardStatsHandler``,
``LrScheduleHandler`` and the ones below); :class:`ChunkedTraining` only orchestrates the chunks. Files in
``ckpt_dir``:

- ``checkpoint_chunk_<k>.pt``: the state chunk k ended with (model, optimizer, scheduler, trainer, chunk state,
  its log entry); its presence means chunk k is done, and ``--chunk k+1`` starts from it.
- ``checkpoint_progress.pt``: the chunk in progress, saved every ``checkpoint_every`` iterations
  (:class:`ProgressCheckpointHandler`); rerunning the same command carries on from it, data order included, so a
  killed run ends with the same weights.
- ``model.pt``: the weights of the latest complete chunk; ``best_model.pt``: those of the chunk with the best
  validation Dice (:class:`ChunkCheckpointHandler`).
- ``training_log.json``: per chunk loss, time, peak memory and validation Dice, rebuilt from the chunk checkpoints
  when a kill left it behind them.
- ``tensorboard/``: loss per iteration and validation Dice per chunk, with steps counted across chunks.

All are written atomically and hold only tensors and plain values (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sized
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import CacheDataset, DataLoader, Dataset, decollate_batch, load_decathlon_datalist
from monai.metrics import DiceMetric
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from torch.utils.data import Sampler

from transforms import TARGET_CHANNELS
from workflows.machine.atomic import write_bytes_atomic, write_json_atomic
from workflows.engine import distributed
from workflows.machine.settings import flag
from workflows.machine.locking import folder_lock
from workflows.data.grey_levels import read_grey_levels
from workflows.data.slice_set import MANIFEST_NAME, read_manifest
from workflows.machine.memory import peak_memory_mib
from workflows.engine.model_file import read_torch_file, save_model_file
from workflows.data.splitting import slices_dirs_of

__all__ = [
    "read_split", "check_training_settings", "check_output_folder", "target_of", "ResumableSampler", "ChunkRun", "SamplerEpochHandler", "ProgressCheckpointHandler",
    "ChunkCheckpointHandler", "EndsInOneLine", "LossProgressBar", "ChunkedTraining", "ChunkRefused", "CompactCacheDataset", "AugmentedDataset",
]

logger = logging.getLogger("liver_ct.training")

PROGRESS_NAME = "checkpoint_progress.pt"
LOG_NAME = "training_log.json"


def read_split(dataset_dir: str | os.PathLike) -> dict:
    """``split.json`` of a lists folder made by ``workflows.split``."""
    path = Path(dataset_dir) / "split.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --dataset_dir must be a lists folder made by "
            f"`python -m workflows.split --input SLICES_DIR --output {dataset_dir}`."
        )
    return json.loads(path.read_text())


def check_training_settings(dataset_dir: str | os.PathLike, val_datalist: str = "val.json",
                            full_val_datalist: str | None = "val.json") -> None:
    """Refuse, before anything is built or trained, lists a training cannot use (the settings' types are checked
    by :func:`workflows.machine.settings.check_settings` before): a lists folder without a readable ``split.json``, list
    files that are missing, malformed or empty (a chunk without slices), and slices the lists name that are gone or
    are not regular files. Every file the run reads is checked here, so no chunk trains before a missing one is
    found.

    Raises:
        ValueError / FileNotFoundError: one line naming the file, what is wrong, and the way out.
    """
    dataset_dir = Path(dataset_dir)
    try:
        split = read_split(dataset_dir)
        chunks = [str(name) for name in split["chunks"]]
        split["target"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{dataset_dir / 'split.json'}: not a split made by workflows.split ({type(err).__name__}: "
                         f"{err}); make the lists again with `python -m workflows.split`.") from None
    if not chunks:
        raise ValueError(f"{dataset_dir / 'split.json'}: lists no chunk to train; make the lists again with "
                         "`python -m workflows.split`.")
    may_be_empty = {val_datalist, full_val_datalist} - set(chunks)
    for name in dict.fromkeys([*chunks, val_datalist, *([full_val_datalist] if full_val_datalist else [])]):
        path = dataset_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {dataset_dir / 'split.json'} (or named by a setting) but "
                                    "missing; make the lists again with `python -m workflows.split`.")
        try:
            entries = next(iter(json.loads(path.read_text()).values()))
            files = [dataset_dir / entry[key] for entry in entries for key in ("image", "label")]
        except (json.JSONDecodeError, UnicodeDecodeError, StopIteration, AttributeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a datalist made by workflows.split ({type(err).__name__}); make the lists "
                             "again with `python -m workflows.split`.") from None
        if not entries and name not in may_be_empty:
            raise ValueError(f"{path}: lists no slice, so the chunk has nothing to train; make the lists again with "
                             "`python -m workflows.split`.")
        for file in files:
            if not file.is_file():  # gone since the split, or a pipe or device that would hang the loader
                what = "is missing" if not file.exists() else "is not a regular file"
                raise FileNotFoundError(f"{file}: named in {path} but {what} (slices moved or deleted after the "
                                        "split?); convert and split again, or restore it.")


def check_output_folder(path: str | os.PathLike, name: str) -> None:
    """Refuse, before anything is built, a folder a run cannot write into (``--ckpt_dir``): TensorBoard's writer
    would otherwise fail inside the engine's set-up with a traceback. Nothing is created here: the folder, or the
    nearest folder above it that exists, must be a writable folder."""
    folder = Path(path).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--{name} {folder}: {existing} is a file, not a folder; choose another --{name}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--{name} {folder}: {existing} is not writable (read-only, or another user's); make it "
                         f"writable or choose another --{name}.")


def read_datalist(path: str | os.PathLike) -> list[dict]:
    """The entries of a list ``workflows.split`` wrote, whichever its key (``training``, ``validation`` or
    ``testing``), with paths made absolute as MONAI's ``load_decathlon_datalist`` makes them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: name a list workflows.split wrote (val.json, val_balanced.json, "
                                "test.json with --test-fraction or --test-volumes).")
    keys = [k for k in json.loads(path.read_text()) if k in ("training", "validation", "testing")]
    if len(keys) != 1:
        raise ValueError(f"{path}: expected one list (training, validation or testing), found {keys or 'none'}.")
    return load_decathlon_datalist(path, data_list_key=keys[0])


def chunk_validation_list(dataset_dir: str | os.PathLike) -> str:
    """The list validated after each chunk: ``val_balanced.json`` (the reference's balanced sample: minutes at LiTS
    scale, where every slice of the validation patients takes hours) when it holds slices, else ``val.json``."""
    balanced = Path(dataset_dir) / "val_balanced.json"
    try:
        entries = next(iter(json.loads(balanced.read_text()).values()))
    except (OSError, ValueError, StopIteration, AttributeError):
        entries = []
    return "val_balanced.json" if entries else "val.json"


def target_of(dataset_dir: str | os.PathLike, stage: str = "whole") -> str:
    """The target the lists in ``dataset_dir`` were built for (``liver``, ``tumor`` or ``both``); the tumour stage
    (``stage="liver_crop"``) trains ``tumor`` on lists that label it."""
    target = read_split(dataset_dir)["target"]
    if stage != "liver_crop":
        return target
    if target == "liver":
        raise ValueError(f"--stage liver_crop trains the tumour, and the lists in {dataset_dir} were split for the "
                         "liver only; split again with --target both (`python -m workflows.split ... --target both`).")
    return "tumor"


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


def check_stage(stage: str, liver_model: str | None) -> None:
    """The tumour stage (``liver_crop``) needs the liver stage's model file, so the model it writes holds both and
    inference needs nothing else; a whole-slice stage takes none."""
    if stage == "liver_crop" and liver_model is None:
        raise ValueError("--stage liver_crop needs --liver_model MODEL.pt, the whole-slice model whose liver it crops "
                         "around (train it first with --stage whole, the default).")
    if stage != "liver_crop" and liver_model is not None:
        raise ValueError(f"--liver_model {liver_model} is for --stage liver_crop; leave it out, or add --stage "
                         "liver_crop.")
    if liver_model is not None:
        settings = read_torch_file(liver_model, "liver stage model file").get("settings") or {}
        if settings.get("target") != "both":
            raise ValueError(f"--liver_model {liver_model}: trained for {settings.get('target') or 'the liver'!r}; the "
                             "tumour stage replaces the tumour of a whole-slice model of liver and tumour: give one "
                             "trained on lists split with --target both.")


def out_channels_of(dataset_dir: str | os.PathLike) -> int:
    return len(TARGET_CHANNELS[target_of(dataset_dir)])


class ChunkRefused(ValueError):
    """A chunk that cannot be trained (yet); the message names what is missing and the command that makes it.
    The bundle's command line prints it alone (``workflows.bundle.one_line_errors``)."""


class ResumableSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on ``(seed, chunk, epoch)``, and that can start part-way
    through an epoch, so a run resumed from iteration i sees exactly the batches an uninterrupted run saw.

    The length follows the dataset's current length (datasets are refilled chunk by chunk). Trained by several
    processes (:mod:`workflows.engine.distributed`), each rank takes every world-size-th index of the epoch's order from its
    rank on (the order padded from its start to a multiple of the ranks, as PyTorch's ``DistributedSampler``
    does), so the ranks share each epoch without overlap and a resume skips within each rank's share.
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
        return math.ceil(len(self.data_source) / distributed.world_size())

    def __iter__(self) -> Iterator[int]:
        n = len(self.data_source)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.chunk * 1_009 + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        ranks = distributed.world_size()
        if ranks > 1 and n:
            padded = (order * math.ceil(len(self) * ranks / n))[: len(self) * ranks]
            order = padded[distributed.rank()::ranks]
        skip, self._skip = self._skip, 0
        return iter(order[skip:])


def _save(path: Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _load(path: Path) -> dict:
    """A checkpoint this training wrote; anything else (a truncated or foreign file) is refused by name."""
    try:
        state = read_torch_file(path, "checkpoint")
    except ValueError as err:
        reason = str(err).removeprefix(f"{path}: ").split(";")[0]
        raise ChunkRefused(f"{path}: cannot be read as a checkpoint ({reason}); move it out of --ckpt_dir to train "
                           "that chunk again from the checkpoint before it.") from None
    if not {"model", "optimizer", "chunk"} <= set(state):
        raise ChunkRefused(f"{path}: not a checkpoint of this chunked training (no model, optimizer and chunk "
                           "state); move it out of --ckpt_dir.")
    return state


class ChunkRun:
    """The chunk in progress and the files of a chunked training, shared by :class:`ChunkedTraining` and the
    handlers: which chunk runs, global steps across chunks (for TensorBoard and MLflow), the state a checkpoint
    holds and its restoring.

    Args:
        dataset_dir: the lists folder (``split.json``, ``chunk_<k>.json``).
        ckpt_dir: where checkpoints, the log and ``tensorboard/`` go.
        epochs_per_chunk: epochs over each chunk.
        batch_size: the training batch size (iterations per epoch = ceil(slices / batch_size)).
        seed: the data order's seed, recorded in checkpoints.
        config_summary: plain values recorded in the checkpoints (network widths, size, target) so a mismatching
            resume is refused by name.
        lr_scheduler: saved and restored with the rest.
    """

    def __init__(self, dataset_dir: str, ckpt_dir: str, epochs_per_chunk: int = 2, batch_size: int = 2, seed: int = 0,
                 config_summary: dict | None = None, lr_scheduler=None, liver_boxes=None,
                 liver_model: str | None = None) -> None:
        if int(epochs_per_chunk) < 1:
            raise ValueError(f"`epochs_per_chunk` must be a positive integer, got {epochs_per_chunk!r}.")
        self.dataset_dir, self.ckpt_dir = Path(dataset_dir), Path(ckpt_dir)
        self.epochs_per_chunk, self.batch_size, self.seed = int(epochs_per_chunk), int(batch_size), int(seed)
        self.config_summary = dict(config_summary or {})
        self.lr_scheduler = lr_scheduler
        self.liver_boxes, self.liver_model = liver_boxes, liver_model
        self.split = read_split(self.dataset_dir)
        self.n_chunks = len(self.split["chunks"])
        # the split's identity: resuming on other lists would carry validation patients into training
        self.config_summary["split"] = self.split_identity()
        self.chunk = 0
        self.chunk_started = time.time()
        self.resumed_at: int | None = None  # the iteration the chunk in progress resumed at, if it did
        self.data_hash: str | None = None  # data_identity of the chunk in progress
        self._chunk_lengths: list[int] | None = None

    @property
    def model_settings(self) -> dict:
        """What ``model.pt`` records beside the weights (:mod:`workflows.engine.model_file`): the network's
        architecture and widths, input size and target, and the HU window its slices were converted with (``None`` when they came from 8-bit 2D
        sets only: their window is unknown), and the thread count."""
        window, window_hu, thickness = None, None, []
        for slices_dir in slices_dirs_of(self.dataset_dir, self.split):
            if (slices_dir / MANIFEST_NAME).is_file():  # the thickest slices trained on: inference flags thicker ones
                thickness += [r["slice_thickness_mm"] for r in read_manifest(slices_dir)
                              if math.isfinite(r["slice_thickness_mm"])]
        for slices_dir in slices_dirs_of(self.dataset_dir, self.split):
            settings_file = slices_dir / "convert.json"
            volumes = read_grey_levels(slices_dir)
            if not settings_file.is_file() or (volumes and all(v["window"].startswith("unknown") for v in volumes.values())):
                continue
            converted = json.loads(settings_file.read_text())
            window, window_hu = converted.get("window"), converted.get("window_range_hu")
            break
        summary = self.config_summary
        return {"architecture": summary.get("architecture", "three_level_unet"), "target": summary.get("target"),
                "spatial_size": summary.get("spatial_size"),
                "channels": summary.get("channels"), "context": summary.get("context", 0),
                "stage": summary.get("stage", "whole"), "crop_margin_mm": summary.get("crop_margin_mm"),
                "window": window, "window_hu": window_hu,
                "threads": torch.get_num_threads(), "split": summary.get("split"),
                "slice_thickness_mm": round(max(thickness), 3) if thickness else None}

    # -- files ----------------------------------------------------------------------------------------------------
    def chunk_checkpoint(self, k: int) -> Path:
        return self.ckpt_dir / f"checkpoint_chunk_{k}.pt"

    @property
    def progress_checkpoint(self) -> Path:
        return self.ckpt_dir / PROGRESS_NAME

    @property
    def log_path(self) -> Path:
        return self.ckpt_dir / LOG_NAME

    @property
    def tensorboard_dir(self) -> str:
        return str(self.ckpt_dir / "tensorboard")

    def split_identity(self) -> str:
        """A hash of ``split.json`` and the chunk lists: which patients train, in which chunks."""
        digest = hashlib.sha1()
        for name in ["split.json", *self.split["chunks"]]:
            digest.update((self.dataset_dir / name).read_bytes())
        return digest.hexdigest()[:12]

    def rows(self, datalist: list[dict]) -> list[dict]:
        """A datalist's rows for the stage trained (:class:`workflows.data.liver_boxes.LiverBoxes`: the tumour stage
        keeps the slices in the liver's box, with the box)."""
        return self.liver_boxes.rows(datalist) if self.liver_boxes is not None else datalist

    def chunk_data(self, k: int) -> list[dict]:
        return self.rows(load_decathlon_datalist(self.dataset_dir / self.split["chunks"][k], data_list_key="training"))

    def save_model(self, path: Path, state_dict: dict) -> Path:
        """``model.pt`` (or ``best_model.pt``) with its settings; the tumour stage's holds the liver stage too."""
        return save_model_file(path, state_dict, self.model_settings, self.liver_model)

    def data_identity(self, k: int) -> str:
        """A hash of what chunk ``k`` trains on: its list and the bytes of every slice and mask it names (read
        once more right before they are cached: a resume on slices rewritten since is refused, not drifted)."""
        digest = hashlib.sha1((self.dataset_dir / self.split["chunks"][k]).read_bytes())
        for entry in self.chunk_data(k):
            for key in ("image", "label"):
                with open(entry[key], "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
        return digest.hexdigest()[:16]

    # -- global steps ---------------------------------------------------------------------------------------------
    def iterations_per_epoch(self, k: int) -> int:
        if self._chunk_lengths is None:
            self._chunk_lengths = [len(json.loads((self.dataset_dir / name).read_text())["training"])
                                   for name in self.split["chunks"]]
        return math.ceil(math.ceil(self._chunk_lengths[k] / distributed.world_size()) / self.batch_size)

    def global_iteration(self, iteration: int) -> int:
        """An iteration of the chunk in progress, counted from the first iteration of chunk 0."""
        return sum(self.iterations_per_epoch(k) for k in range(self.chunk)) * self.epochs_per_chunk + int(iteration)

    def global_epoch(self, epoch: int) -> int:
        """An epoch of the chunk in progress, counted from the first epoch of chunk 0."""
        return self.chunk * self.epochs_per_chunk + int(epoch)

    @property
    def tracking_run_name(self) -> str:
        """One MLflow run per checkpoint folder, continued by every ``--chunk`` (its name, not a timestamp)."""
        folder = self.ckpt_dir.resolve()
        return f"{folder.name}-{hashlib.sha1(str(folder).encode()).hexdigest()[:8]}"

    def write_tensorboard_loss(self, engine: Engine, writer) -> None:
        """``TensorBoardStatsHandler``'s iteration writer: the loss at the global iteration."""
        writer.add_scalar("train_loss", _loss_of(engine.state.output), self.global_iteration(engine.state.iteration))
        if engine.state.iteration % engine.state.epoch_length == 0:  # to disk once an epoch, not every iteration
            writer.flush()

    # -- state ----------------------------------------------------------------------------------------------------
    def state(self, engine: SupervisedTrainer, chunk_done: bool) -> dict:
        state = {
            "model": distributed.plain(engine.network).state_dict(),  # no "module." from DistributedDataParallel
            "optimizer": engine.optimizer.state_dict(),
            "trainer": dict(engine.state_dict()),
            "chunk": {"index": self.chunk, "done": chunk_done, "n_chunks": self.n_chunks,
                      "epochs_per_chunk": self.epochs_per_chunk, "seed": self.seed, "data": self.data_hash},
            "optimizer_settings": _configured(engine.optimizer.defaults),
            "config": self.config_summary,
            "threads": torch.get_num_threads(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
            state["lr_scheduler_settings"] = self.scheduler_settings()
        return state

    def scheduler_settings(self) -> dict:
        """The scheduler's settings as configured (``step_size``, ``gamma``, ...), not its progress."""
        if self.lr_scheduler is None:
            return {}
        progress = {"base_lrs", "last_epoch", "verbose", "optimizer"}
        return _configured({k: v for k, v in self.lr_scheduler.state_dict().items()
                            if not k.startswith("_") and k not in progress})

    def restore(self, engine: SupervisedTrainer, state: dict, source: Path, same_chunk: bool = False) -> None:
        """Load ``state`` into the trainer. ``same_chunk``: a resume part-way through the chunk ``state`` was saved
        in, which must see what the interrupted run saw: another seed, other epochs, other optimizer or scheduler
        settings, or slices changed on disk are refused by name. Starting the next chunk, a changed seed, optimizer
        or scheduler setting (``--learning_rate``) is applied from this chunk on, and said."""
        recorded = state.get("config", {})
        differing = {k: (recorded.get(k), v) for k, v in self.config_summary.items() if k in recorded and recorded[k] != v}
        if differing:
            shown = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differing.items())
            raise ChunkRefused(f"{source} was made with other settings ({shown}); use the same settings and lists "
                               "(a new split needs a new training: another --ckpt_dir).")
        chunk = state.get("chunk", {})
        optimizer_now, scheduler_now = _configured(engine.optimizer.defaults), self.scheduler_settings()
        changes = {"--seed": (chunk.get("seed"), self.seed)} if chunk.get("seed") is not None else {}
        changes.update({f"--optimizer#{k}": (v, optimizer_now.get(k))
                        for k, v in state.get("optimizer_settings", {}).items()})
        changes.update({f"--lr_scheduler#{k}": (v, scheduler_now.get(k))
                        for k, v in state.get("lr_scheduler_settings", {}).items()})
        if same_chunk:
            changes["--epochs_per_chunk"] = (chunk.get("epochs_per_chunk", self.epochs_per_chunk), self.epochs_per_chunk)
            changes["the chunk's slices (their bytes)"] = (chunk.get("data", self.data_hash), self.data_hash)
        changes = {name: (old, new) for name, (old, new) in changes.items() if old != new}
        if same_chunk and changes:
            shown = ", ".join(f"{name} {old!r} then, {new!r} now" if name.startswith("--") else f"{name} changed"
                              for name, (old, new) in changes.items())
            raise ChunkRefused(f"{source}: chunk {self.chunk} was started with other settings or data ({shown}); a "
                               "resume must see what the interrupted run saw. Rerun with the settings it was started "
                               f"with, or move {source.name} out of --ckpt_dir to train chunk {self.chunk} again from "
                               "its start with the new ones.")
        threads = state.get("threads")
        if threads is not None and threads != torch.get_num_threads():
            logger.warning(f"{source} was trained with {threads} thread(s), this run uses {torch.get_num_threads()}: "
                           "float sums are ordered differently, so the weights will differ slightly from a run that "
                           f"kept {threads} (pass --threads {threads} to match it).")
        distributed.plain(engine.network).load_state_dict(state["model"])
        engine.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and "lr_scheduler" in state:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self._apply_changes(engine, changes)

    def _apply_changes(self, engine: SupervisedTrainer, changes: dict) -> None:
        """Settings given for this chunk that differ from the checkpoint's: the restored optimizer and scheduler
        would carry the old ones on, so the new ones are set here, and said."""
        for name, (old, new) in changes.items():
            key = name.rpartition("#")[2]
            if name.startswith("--optimizer#"):
                for group in engine.optimizer.param_groups:
                    group[key] = tuple(new) if isinstance(group.get(key), tuple) else new
                if key == "lr" and self.lr_scheduler is not None:  # the schedule continues from the new rate
                    self.lr_scheduler.base_lrs = [new] * len(engine.optimizer.param_groups)
                    self.lr_scheduler._last_lr = [new] * len(engine.optimizer.param_groups)
            elif name.startswith("--lr_scheduler#"):
                setattr(self.lr_scheduler, key, new)
            shown = "--learning_rate" if name == "--optimizer#lr" else name
            logger.info(f"chunk {self.chunk}: {shown} {old!r} in the checkpoint, {new!r} now: applied from this chunk on")

    # -- the log ----------------------------------------------------------------------------------------------------
    def read_log(self) -> list[dict]:
        """``training_log.json``, rebuilt from the chunk checkpoints when it lacks a chunk they hold (a kill
        between a chunk's checkpoint and its log entry); ``model.pt`` and ``best_model.pt`` are then rewritten from
        the checkpoints too, the best being the chunk with the highest validation metric they record."""
        log = json.loads(self.log_path.read_text()) if self.log_path.exists() else []
        done = [k for k in range(self.n_chunks) if self.chunk_checkpoint(k).exists()]
        if sorted(e["chunk"] for e in log) == done:
            return log
        states = {k: _load(self.chunk_checkpoint(k)) for k in done}
        log = [states[k].get("log", {"chunk": k}) for k in done]
        scored = [e for e in log if e.get("val_metric") is not None]
        best = max(scored, key=lambda e: e["val_metric"])["chunk"] if scored else None
        for entry in log:
            entry["best"] = entry["chunk"] == best
        if distributed.is_main():  # one writer when several processes train
            for name, k in (("model.pt", done[-1] if done else None), ("best_model.pt", best)):
                if k is not None:
                    self.save_model(self.ckpt_dir / name, states[k]["model"])
            write_json_atomic(self.log_path, log)
        return log


def _configured(settings: dict) -> dict:
    """The plain values of an optimizer's or scheduler's settings (tuples as lists), as a checkpoint records them."""
    plain = {}
    for key, value in settings.items():
        if isinstance(value, tuple):
            value = list(value)
        if value is None or isinstance(value, (bool, int, float, str)) or (
                isinstance(value, list) and all(isinstance(v, (bool, int, float, str)) for v in value)):
            plain[key] = value
    return plain


def _loss_of(output) -> float:
    return float(output[0]["loss"] if isinstance(output, list) else output["loss"])


class _Compact:
    """A float tensor of whole multiples of ``1 / scale`` in 0..255 / scale, held as uint8."""

    __slots__ = ("data", "scale")

    def __init__(self, data: torch.Tensor, scale: float) -> None:
        self.data, self.scale = data, scale

    def expand(self) -> torch.Tensor:
        out = self.data.to(torch.float32)
        return out / self.scale if self.scale != 1.0 else out


def _compact(value):
    """``value`` as a :class:`_Compact` when that gives back exactly the same float32 tensor, else ``value``."""
    if not isinstance(value, torch.Tensor) or value.dtype != torch.float32 or value.numel() == 0:
        return value
    plain = value.as_tensor() if hasattr(value, "as_tensor") else value
    for scale in (1.0, 255.0):  # labels 0/1/2; grey levels k / 255 (network_input without a resize)
        levels = torch.round(plain * scale)
        if float(levels.min()) < 0 or float(levels.max()) > 255:
            continue
        packed = _Compact(levels.to(torch.uint8), scale)
        if torch.equal(packed.expand(), plain):
            return packed
    return value


class CompactCacheDataset(CacheDataset):
    """MONAI's ``CacheDataset`` holding 8-bit data as uint8: a label (0/1 per channel) and an image whose grey
    levels were not resized (slices converted at the training size) take a quarter of their float32 memory in the
    cache, and come back as the very same float32 tensors. Anything else is cached as it is."""

    def _load_cache_item(self, idx: int):
        item = super()._load_cache_item(idx)
        return {key: _compact(value) for key, value in item.items()} if isinstance(item, dict) else item

    def _transform(self, index: int):
        item = super()._transform(index)
        if isinstance(item, dict):
            return {key: value.expand() if isinstance(value, _Compact) else value for key, value in item.items()}
        return item


class AugmentedDataset(torch.utils.data.Dataset):
    """Random augmentation on top of a (cached) dataset, reproducible under resume: each sample's random state is
    seeded from (seed, chunk, epoch, index), so a run resumed mid-epoch draws what the uninterrupted run drew,
    whatever order or worker serves it. ``enabled=False`` passes samples through unchanged."""

    def __init__(self, dataset, transform, seed: int = 0, enabled: bool | str = True) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, int(seed)
        self.enabled = flag(enabled, "augment")
        self.chunk, self.epoch = 0, 0

    def set_epoch(self, chunk: int, epoch: int) -> None:
        self.chunk, self.epoch = int(chunk), int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if not self.enabled:
            return item
        mixed = np.random.SeedSequence([self.seed, self.chunk, self.epoch, int(index)]).generate_state(1)[0]
        self.transform.set_random_state(seed=int(mixed))
        return self.transform(dict(item))


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
            _save(self.run.progress_checkpoint, self.run.state(engine, chunk_done=False))


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
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self.losses.append(_loss_of(e.state.output)))
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
            _save(run.chunk_checkpoint(k), state)  # chunk k is done from here on
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

            ProgressBar(persist=False, desc="chunk").attach(engine, output_transform=lambda out: {"loss": _loss_of(out)})


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
        progress = _load(run.progress_checkpoint) if run.progress_checkpoint.exists() else None
        if progress is not None and progress["chunk"]["index"] == k:
            run.restore(self.trainer, progress, run.progress_checkpoint, same_chunk=True)
            iteration, resumed = int(progress["trainer"]["iteration"]), True
            logger.info(f"chunk {k}: resuming at iteration {iteration} of {total} from {run.progress_checkpoint}")
        elif k > 0:
            run.restore(self.trainer, _load(run.chunk_checkpoint(k - 1)), run.chunk_checkpoint(k - 1))
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
