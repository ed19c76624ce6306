"""Model files that describe themselves: ``model.pt`` written by training holds the weights and the settings they
were trained with (network architecture and widths, input size, target, HU window, threads), so inference and
evaluation need no copied flags, and a flag that contradicts the file is refused by name.

A model file is ``{"model": state_dict, "settings": {...}}``, loadable with ``torch.load(..., weights_only=True)``;
``python -m monai.bundle ckpt_export ... --key_in_ckpt model`` exports it. A plain state_dict (the reference
project's weights, or a model.pt from before release 0.3) has no settings: the bundle's defaults apply.

A two-stage (cascade) model file holds the liver stage as above and the tumour stage beside it:
``{"model": liver_state_dict, "settings": {..., "tumour_stage": {its settings}}, "tumour_model": state_dict}``;
everything that reads one stage reads the first, and inference runs the second on crops around the liver.

A model file of several networks (:func:`combine_model_files`: the same set-up trained with several seeds) records
``"members": N`` in its settings (and its tumour stage's) and holds each member's weights under ``members.<i>.``;
``networks.build_network(..., members=N)`` builds the network whose logits are their mean.
"""

from __future__ import annotations

import io
import os
import pickle
from functools import lru_cache
from pathlib import Path

import torch

from workflows.machine.atomic import write_bytes_atomic

__all__ = ["DEFAULT_SETTINGS", "SETTING_FLAGS", "MEMBER_SETTINGS", "read_torch_file", "model_settings",
           "check_model_settings", "save_model_file", "model_file_bytes", "combine_model_files"]

#: what a model without recorded settings is taken to be: the reference network, liver, abdomen window
DEFAULT_SETTINGS = {"architecture": "three_level_unet", "target": "liver", "spatial_size": 256,
                    "channels": [64, 128, 256, 512], "window": "abdomen",
                    "window_hu": None, "slice_thickness_mm": None, "context": 0, "tumour_stage": None, "members": 1}
#: the settings the members of one model file must share (each stage's): the network and what it reads and writes
MEMBER_SETTINGS = ("architecture", "target", "spatial_size", "channels", "context", "stage", "crop_margin_mm", "window",
                   "window_hu")
#: the command-line flag that sets each recorded setting
SETTING_FLAGS = {"architecture": "--architecture", "target": "--target", "spatial_size": "--spatial_size",
                 "channels": "--network_def#channels", "window": "--window", "window_hu": "--window_hu"}


def read_torch_file(path: str | os.PathLike, what: str = "model file") -> dict:
    """The contents of a model file or checkpoint, loaded as ``torch.load(..., weights_only=True)`` loads it: never
    running code. Anything else is one line naming the file and what it is not (never torch's traceback, never its
    advice to load with ``weights_only=False``: that would run whatever the file holds).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file, empty, not a PyTorch file (or truncated), a pickle that would run code, or
            contents that are not a dictionary of weights.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {what}; check the path (training writes model.pt in its ckpt_dir).")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file (a folder, pipe or device); give the {what} itself.")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty (0 bytes), not a {what}; copy it again.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err) or "global" in str(err).lower().split("weightsunpickler error:")[-1]:
            raise ValueError(f"{path}: holds Python objects that would run code when loaded, not only weights; "
                             f"refused for safety. Save the network's state_dict (torch.save(net.state_dict(), ...)) "
                             "from a trusted copy.") from None
        raise ValueError(f"{path}: not a {what} (not a PyTorch file, or damaged); copy it again.") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, ... on a truncated or foreign file
        truncated = "zip archive" in str(err) or isinstance(err, EOFError)
        raise ValueError(f"{path}: not a {what} ({'truncated or damaged' if truncated else 'not a PyTorch file'}: "
                         f"{type(err).__name__}); copy it again.") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a {what} (a dictionary of weights).")
    return state


def _recorded(ckpt_file: str | os.PathLike) -> dict:
    path = Path(ckpt_file)
    if path.suffix == ".ts" or not path.is_file():
        return {}  # TorchScript carries no settings; a missing file is named by whoever loads the weights
    stat = path.stat()
    return dict(_settings_in(str(path.resolve()), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=8)
def _settings_in(path: str, mtime_ns: int, size: int) -> tuple:
    """The settings a model file records, read once per file version (the configs ask for them several times)."""
    try:
        state = read_torch_file(path)
    except (OSError, ValueError):  # not readable here: the weight loader names the file and the reason
        return ()
    settings = state.get("settings")
    if settings is not None and not isinstance(settings, dict):
        raise ValueError(f"{path}: its settings are a {type(settings).__name__}, not a dictionary of settings: not a "
                         "model file this tool wrote, or a damaged one; export it again, or give the network's weights "
                         "alone (a state_dict) with the flags it was trained with.")
    return tuple((settings or {}).items())


def model_settings(ckpt_file: str | os.PathLike) -> dict:
    """The settings ``ckpt_file`` was trained with, completed by :data:`DEFAULT_SETTINGS` where it records none.

    Raises:
        ValueError: the file's settings are not a dictionary, or record a value no flag would take (named as the
            file's, never as a flag the user did not give)."""
    from workflows.machine.settings import SETTINGS

    settings = dict(DEFAULT_SETTINGS)
    recorded = {k: v for k, v in _recorded(ckpt_file).items() if k in DEFAULT_SETTINGS and v is not None}
    for name, value in recorded.items():
        parse = SETTINGS.get(name)
        try:
            if parse is not None:
                recorded[name] = parse(value)  # the parsed value (a file from before: spatial_size '032' is 32)
        except ValueError as err:
            reason = str(err).split(", got")[0]
            reason = "it " + reason.split(" ", 1)[1] if reason.startswith("--") else reason
            raise ValueError(f"{ckpt_file}: records {name} {value!r}, not a valid value ({reason}): the file is "
                             "damaged or was not written by this tool; train or export it again.") from None
    settings.update(recorded)
    return settings


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return a is not None and b is not None and [float(x) for x in a] == [float(x) for x in b]
    return str(a) == str(b)


def check_model_settings(ckpt_file: str | os.PathLike, **given) -> None:
    """Refuse a setting (``target=``, ``spatial_size=``, ``channels=``, ``window=``, ``window_hu=``) that differs
    from what ``ckpt_file`` records, naming the flag, both values and the way out."""
    parsed = model_settings(ckpt_file)
    recorded = {name: parsed.get(name, value) for name, value in _recorded(ckpt_file).items()}
    for name, value in given.items():
        if recorded.get(name) is not None and not _same(recorded[name], value):
            raise ValueError(f"{SETTING_FLAGS.get(name, '--' + name)} {value!r} contradicts {ckpt_file}, trained with "
                             f"{name} {recorded[name]!r}; leave the flag out (the model file's settings are used).")


def save_model_file(path: str | os.PathLike, state_dict: dict, settings: dict, liver_model: str | None = None) -> Path:
    """Write ``{"model": state_dict, "settings": settings}`` atomically; with ``liver_model`` (a model file of the
    whole-slice stage), ``state_dict`` and ``settings`` are the tumour stage's and the file written holds both
    stages (see the module)."""
    return write_bytes_atomic(path, model_file_bytes(state_dict, settings, liver_model))


def model_file_bytes(state_dict: dict, settings: dict, liver_model: str | None = None) -> bytes:
    """The bytes :func:`save_model_file` writes."""
    payload = {"model": state_dict, "settings": settings}
    if liver_model is not None:
        liver = read_torch_file(liver_model, "liver stage model file")
        liver_settings = dict(liver.get("settings") or {})
        liver_settings["tumour_stage"] = settings
        payload = {"model": liver["model"] if isinstance(liver.get("model"), dict) else liver,
                   "settings": liver_settings, "tumour_model": state_dict}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def combine_model_files(paths: list[str | os.PathLike], output: str | os.PathLike) -> Path:
    """One model file whose networks are the mean of those of ``paths`` (model files of the same set-up, e.g. trained
    with other seeds), stage by stage; the settings are the first file's with ``members`` set and ``member_files``
    naming the files.

    Raises:
        ValueError: fewer than two files, a file of several members already, or files whose networks differ (the
            setting is named with both values)."""
    if len(paths) < 2:
        raise ValueError(f"--models: give at least two model files to average, got {len(paths)}.")
    states = [read_torch_file(path) for path in paths]
    first_path, first = paths[0], states[0]
    for path, state in zip(paths, states):
        settings = state.get("settings")
        if not isinstance(settings, dict) or not isinstance(state.get("model"), dict):
            raise ValueError(f"{path}: records no settings (a plain state_dict); average model files that training "
                             "wrote.")
        if int(settings.get("members") or 1) > 1:
            raise ValueError(f"{path}: holds {settings['members']} networks already; average the model files it was "
                             "made from.")
        if ("tumour_model" in state) != ("tumour_model" in first):
            raise ValueError(f"{path}: {'has' if 'tumour_model' in state else 'has no'} tumour stage, {first_path} "
                             f"{'has' if 'tumour_model' in first else 'has none'}; only networks of one set-up are "
                             "averaged.")
        for stage, own, theirs in (("", settings, first["settings"]),
                                   ("tumour stage ", settings.get("tumour_stage") or {},
                                    first["settings"].get("tumour_stage") or {})):
            for name in MEMBER_SETTINGS:
                if own.get(name) != theirs.get(name):
                    raise ValueError(f"{path}: its {stage}{name} is {own.get(name)!r}, {first_path}'s "
                                     f"{theirs.get(name)!r}; only networks of one set-up are averaged.")

    def members(key: str) -> dict:
        return {f"members.{i}.{name}": tensor for i, state in enumerate(states) for name, tensor in state[key].items()}

    # the files named from the folder they share (no machine's paths in a model file that may be shared)
    common = Path(os.path.commonpath([Path(p).resolve().parent for p in paths]))
    settings = {**first["settings"], "members": len(states),
                "member_files": [Path(p).resolve().relative_to(common).as_posix() for p in paths]}
    payload = {"model": members("model"), "settings": settings}
    if "tumour_model" in first:
        settings["tumour_stage"] = {**settings["tumour_stage"], "members": len(states)}
        payload["tumour_model"] = members("tumour_model")
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_bytes_atomic(output, buffer.getvalue())
