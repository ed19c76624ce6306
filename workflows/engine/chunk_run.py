"""The files of a chunked training and the chunk in progress (:class:`ChunkRun`): checkpoints, model files, the
log, global steps across chunks, the state a checkpoint holds and its restoring (what a resume may change, and
what it must not). Files in ``ckpt_dir``:

- ``checkpoint_chunk_<k>.pt``: the state chunk k ended with (model, optimizer, scheduler, trainer, chunk state,
  its log entry); its presence means chunk k is done, and ``--chunk k+1`` starts from it.
- ``checkpoint_progress.pt``: the chunk in progress, saved every ``checkpoint_every`` iterations.
- ``model.pt``: the weights of the latest complete chunk; ``best_model.pt``: those of the chunk with the best
  validation Dice; ``written_models.json``: the sha256 of every model file this training wrote, so a model file it
  did not write (the user's own ``model.pt``) is never replaced.
- ``training_log.json``: per chunk loss, time, peak memory and validation Dice, rebuilt from the chunk checkpoints
  when a kill left it behind them.

All are written atomically and hold only tensors and plain values (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from pathlib import Path

import torch
from ignite.engine import Engine
from monai.data import load_decathlon_datalist
from monai.engines import SupervisedTrainer

from workflows.data.grey_levels import read_grey_levels
from workflows.data.slice_set import MANIFEST_NAME, read_manifest
from workflows.data.splitting import slices_dirs_of
from workflows.engine import distributed
from workflows.engine.model_file import model_file_bytes, read_torch_file
from workflows.engine.training_checks import ChunkRefused, read_split
from workflows.machine.atomic import write_bytes_atomic, write_json_atomic

__all__ = ["ChunkRun", "check_model_files", "written_models", "PROGRESS_NAME", "LOG_NAME", "MODEL_NAMES", "WRITTEN_NAME", "load_checkpoint", "save_checkpoint", "loss_of"]

logger = logging.getLogger("liver_ct.training")


PROGRESS_NAME = "checkpoint_progress.pt"

LOG_NAME = "training_log.json"

#: the model files training writes in ``ckpt_dir``, and the record of their contents (sha256): a file there that
#: this training did not write (the user's own model.pt) is never replaced
MODEL_NAMES = ("model.pt", "best_model.pt")

WRITTEN_NAME = "written_models.json"

def save_checkpoint(path: Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())

def load_checkpoint(path: Path) -> dict:
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
                "synthetic_lesions": summary.get("synthetic_lesions", 0.0), "lesion_types": summary.get("lesion_types"),
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
        """``model.pt`` (or ``best_model.pt``) with its settings; the tumour stage's holds the liver stage too. Its
        sha256 is recorded in ``written_models.json`` before the file is written, so a rerun knows it as its own."""
        data = model_file_bytes(state_dict, self.model_settings, self.liver_model)
        written = written_models(self.ckpt_dir)
        digest = hashlib.sha256(data).hexdigest()
        if digest not in written.setdefault(path.name, []):
            written[path.name] = [*written[path.name], digest][-16:]
            write_json_atomic(self.ckpt_dir / WRITTEN_NAME, written)
        return write_bytes_atomic(path, data)

    def check_model_files(self) -> None:
        check_model_files(self.ckpt_dir)

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
        writer.add_scalar("train_loss", loss_of(engine.state.output), self.global_iteration(engine.state.iteration))
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
            shown = ", ".join(f"{_flag_name(name)} {old!r} then, {new!r} now" if name.startswith("--") else
                              f"{name} changed" for name, (old, new) in changes.items())
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
            shown = _flag_name(name)
            logger.info(f"chunk {self.chunk}: {shown} {old!r} in the checkpoint, {new!r} now: applied from this chunk on")

    # -- the log ----------------------------------------------------------------------------------------------------
    def read_log(self) -> list[dict]:
        """``training_log.json``, rebuilt from the chunk checkpoints when it lacks a chunk they hold (a kill
        between a chunk's checkpoint and its log entry); ``model.pt`` and ``best_model.pt`` are then rewritten from
        the checkpoints too, the best being the chunk with the highest validation metric they record."""
        try:
            log = json.loads(self.log_path.read_text()) if self.log_path.exists() else []
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ChunkRefused(f"{self.log_path}: not a training log (not JSON); move it out of --ckpt_dir, and it is "
                               "rebuilt from the chunk checkpoints.") from None
        done = [k for k in range(self.n_chunks) if self.chunk_checkpoint(k).exists()]
        if sorted(e["chunk"] for e in log) == done:
            return log
        states = {k: load_checkpoint(self.chunk_checkpoint(k)) for k in done}
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

def written_models(ckpt_dir: str | Path) -> dict[str, list[str]]:
    """``written_models.json`` of ``ckpt_dir``: the sha256 of each model file this training wrote, by name."""
    path = Path(ckpt_dir) / WRITTEN_NAME
    try:
        written = json.loads(path.read_text()) if path.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ChunkRefused(f"{path}: not the record of the model files this training wrote (not JSON); move it out "
                           "of --ckpt_dir, together with model.pt and best_model.pt if they are yours.") from None
    return written if isinstance(written, dict) else {}


def check_model_files(ckpt_dir: str | Path) -> None:
    """Refuse, before the trainer is built, a ``model.pt`` or ``best_model.pt`` in ``ckpt_dir`` that its training did
    not write (the user's own model, put where inference looks for one): training would replace it. A model file
    whose bytes are not recorded (a folder from before the record, a kill between the record and the write) is still
    the training's when its weights are those of one of its chunk checkpoints."""
    ckpt_dir = Path(ckpt_dir)
    written = written_models(ckpt_dir)
    for name in MODEL_NAMES:
        path = ckpt_dir / name
        if not (path.exists() or path.is_symlink()):
            continue
        if path.is_file() and not path.is_symlink():
            if hashlib.sha256(path.read_bytes()).hexdigest() in written.get(name, []) or _weights_of_a_chunk(path):
                continue
        raise ChunkRefused(f"{path}: is already there and was not written by this training (training would replace "
                           f"it with its own {name}); move it away, or choose another --ckpt_dir.")


def _weights_of_a_chunk(path: Path) -> bool:
    try:
        state = read_torch_file(path)
    except ValueError:
        return False
    model = state.get("tumour_model", state.get("model", state))  # a tumour stage's file holds the liver's too
    checkpoints = sorted(path.parent.glob("checkpoint_chunk_*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for checkpoint in checkpoints:
        theirs = load_checkpoint(checkpoint)["model"]
        if isinstance(model, dict) and theirs.keys() == model.keys() and \
                all(torch.equal(theirs[key], model[key]) for key in model):
            return True
    return False


def _flag_name(name: str) -> str:
    """The flag a user gives for a recorded setting: the learning rate is ``--learning_rate``, not the config's
    ``--optimizer#lr`` it feeds."""
    return "--learning_rate" if name == "--optimizer#lr" else name

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

def loss_of(output) -> float:
    return float(output[0]["loss"] if isinstance(output, list) else output["loss"])
