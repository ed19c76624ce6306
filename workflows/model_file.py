"""Model files that describe themselves: ``model.pt`` written by training holds the weights and the settings they
were trained with (network widths, input size, target, HU window, threads), so inference and evaluation need no
copied flags, and a flag that contradicts the file is refused by name.

A model file is ``{"model": state_dict, "settings": {...}}``, loadable with ``torch.load(..., weights_only=True)``;
``python -m monai.bundle ckpt_export ... --key_in_ckpt model`` exports it. A plain state_dict (the reference
project's weights, or a model.pt from before release 0.3) has no settings: the bundle's defaults apply.
"""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path

import torch

from workflows.atomic import write_bytes_atomic

__all__ = ["DEFAULT_SETTINGS", "SETTING_FLAGS", "model_settings", "check_model_settings", "save_model_file"]

#: what a model without recorded settings is taken to be: the reference network, liver, abdomen window
DEFAULT_SETTINGS = {"target": "liver", "spatial_size": 256, "channels": [64, 128, 256, 512], "window": "abdomen",
                    "window_hu": None}
#: the command-line flag that sets each recorded setting
SETTING_FLAGS = {"target": "--target", "spatial_size": "--spatial_size", "channels": "--network_def#channels",
                 "window": "--window", "window_hu": "--window_hu"}


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
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not readable here: the weight loader names the file and the reason
        return ()
    settings = state.get("settings") if isinstance(state, dict) else None
    return tuple((settings or {}).items())


def model_settings(ckpt_file: str | os.PathLike) -> dict:
    """The settings ``ckpt_file`` was trained with, completed by :data:`DEFAULT_SETTINGS` where it records none."""
    settings = dict(DEFAULT_SETTINGS)
    settings.update({k: v for k, v in _recorded(ckpt_file).items() if k in DEFAULT_SETTINGS and v is not None})
    return settings


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return a is not None and b is not None and [float(x) for x in a] == [float(x) for x in b]
    return str(a) == str(b)


def check_model_settings(ckpt_file: str | os.PathLike, **given) -> None:
    """Refuse a setting (``target=``, ``spatial_size=``, ``channels=``, ``window=``, ``window_hu=``) that differs
    from what ``ckpt_file`` records, naming the flag, both values and the way out."""
    recorded = _recorded(ckpt_file)
    for name, value in given.items():
        if recorded.get(name) is not None and not _same(recorded[name], value):
            raise ValueError(f"{SETTING_FLAGS.get(name, '--' + name)} {value!r} contradicts {ckpt_file}, trained with "
                             f"{name} {recorded[name]!r}; leave the flag out (the model file's settings are used).")


def save_model_file(path: str | os.PathLike, state_dict: dict, settings: dict) -> Path:
    """Write ``{"model": state_dict, "settings": settings}`` atomically."""
    buffer = io.BytesIO()
    torch.save({"model": state_dict, "settings": settings}, buffer)
    return write_bytes_atomic(path, buffer.getvalue())
