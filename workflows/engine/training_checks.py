"""What a chunked training needs before anything is built: lists a training can use, folders it can write, a
tracking server it can reach, the target and stage its lists allow. Each refusal is one line naming the file or
setting and the way out (:class:`ChunkRefused` for what a chunk cannot start from)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai.data import load_decathlon_datalist

from transforms import TARGET_CHANNELS
from workflows.engine.model_file import read_torch_file

__all__ = ["read_split", "check_training_settings", "check_tracking_uri", "check_output_folder", "read_datalist",
           "chunk_validation_list", "target_of", "check_stage", "out_channels_of", "ChunkRefused"]


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

def check_tracking_uri(uri: str) -> None:
    """Refuse, before anything is built, an MLflow tracking URI MLflow cannot use (``--mlflow true``): its handler
    would fail inside the engine with a traceback."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # not 4 minutes of retries
    saved = {name: os.environ.get(name) for name in quick}
    os.environ.update(quick)
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=str(uri)).search_experiments(max_results=1)
    except Exception as err:  # MLflow raises its own exceptions, ValueError and connection errors alike
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"--mlflow_tracking_uri {uri}: MLflow cannot use it ({type(err).__name__}: {reason[:160]}); "
                         "give sqlite:///PATH.db, a folder, or http(s)://SERVER of a running tracking server.") from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

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
