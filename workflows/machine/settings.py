"""Every setting of the bundle's workflows, parsed by its type before anything is built.

``python -m monai.bundle run ... --largest_liver false`` hands the config the string ``"false"`` (the command line's
parser knows Python's ``False`` only), and ``not "false"`` is ``False``: a switch read as a string lies. So each
setting has one parser here, named by :data:`SETTINGS`; the configs call :func:`check_settings` with all of their
settings first thing (a bad value is one line naming ``--setting``, the value and what it must be), and every place
that uses a switch reads it through :func:`flag`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["flag", "whole_number", "number", "choice", "network_size", "widths", "device", "compile_setting",
           "PRECISIONS", "SETTINGS", "check_settings", "MAX_SPATIAL_SIZE"]

#: ``--precision``: ``auto`` (bf16 where the device computes it natively, else fp32), ``fp32`` or ``bf16``
PRECISIONS = ("auto", "fp32", "bf16")
#: The largest network input side: CT slices are 512 (a few 1024) pixels across; larger asks for gigabytes per slice.
MAX_SPATIAL_SIZE = 1024


def flag(value, name: str = "setting") -> bool:
    """An on/off setting as the command line gives it (``--augment false``, ``"True"``, ``1``) or a config does
    (``true``): ``true``/``false`` in any case, or ``1``/``0``; anything else is refused by name."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ValueError(f"--{name} must be true or false (or 1 or 0), got {value!r}.")


def whole_number(name: str, value, least: int, most: int | None = None) -> int:
    """A whole number in ``least..most`` (``--chunk abc``, ``--chunk 0.5``, ``--seed -1`` are refused by name)."""
    text = str(value).strip()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not text.lstrip("-").isdigit() \
            or int(text) < least or (most is not None and int(text) > most):
        bounds = f">= {least}" if most is None else f"from {least} to {most}"
        raise ValueError(f"--{name} must be a whole number {bounds}, got {value!r}.")
    return int(text)


def number(name: str, value, least: float, most: float = math.inf, above: bool = False, unit: str = "") -> float:
    """A finite number ``>= least`` (``> least`` when ``above``) and ``<= most``."""
    try:
        parsed = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        parsed = math.nan
    if not (math.isfinite(parsed) and (parsed > least if above else parsed >= least) and parsed <= most):
        bounds = f"{'>' if above else '>='} {least:g}" + (f" and <= {most:g}" if math.isfinite(most) else "")
        raise ValueError(f"--{name} must be a number {bounds}{unit}, got {value!r}.")
    return parsed


def choice(name: str, value, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"--{name} must be one of {', '.join(options)}, got {value!r}.")
    return value


def network_size(spatial_size, name: str = "spatial_size") -> int:
    """``--spatial_size``: a multiple of 8 (the network pools three times) from 8 to :data:`MAX_SPATIAL_SIZE`."""
    size = whole_number(name, spatial_size, 8, MAX_SPATIAL_SIZE)
    if size % 8:
        raise ValueError(f"--{name} must be a multiple of 8 (three 2x poolings), got {spatial_size!r}.")
    return size


def widths(value, name: str = "network_def#channels") -> list[int]:
    """The network's four widths (three levels and the bottleneck), e.g. ``[64, 128, 256, 512]``."""
    items = value
    if isinstance(value, str):  # "[4,8,16,32]" or "4 8 16 32" from a shell
        items = value.strip().strip("[]()").replace(",", " ").split()
    try:
        parsed = [whole_number(name, item, 1, 4096) for item in items]
    except (TypeError, ValueError):
        parsed = []
    if len(parsed) != 4:
        raise ValueError(f"--{name} must be four widths, e.g. \"[64,128,256,512]\", got {value!r}.")
    return parsed


def device(value, name: str = "device"):
    """``cpu``, ``cuda`` or ``cuda:N`` (a ``torch.device`` passes); a CUDA device on a machine without one is
    refused (training would fail at its first tensor)."""
    import torch

    try:
        parsed = value if isinstance(value, torch.device) else torch.device(str(value))
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--{name} must be cpu, cuda or cuda:N, got {value!r}.") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if parsed.index is not None and parsed.index >= count or count == 0:
            raise ValueError(f"--{name} {value}: this machine has {count} CUDA device(s); leave --{name} out to use "
                             "what it has (the CPU here).")
    elif parsed.type != "cpu":
        raise ValueError(f"--{name} must be cpu, cuda or cuda:N, got {value!r}.")
    return parsed


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")) else parse(value)


def _text(name: str) -> Callable[[Any], str]:
    def parse(value) -> str:
        if isinstance(value, int) and not isinstance(value, bool):  # --output_dir 2024: a folder named 2024
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"--{name} must be a non-empty text (a name or path), got {value!r}.")
        return value

    return parse


def _window_hu(value):
    items = value.strip("[]() ").replace(",", " ").split() if isinstance(value, str) else value
    try:
        low, high = (number("window_hu", v, -math.inf) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"--window_hu must be two HU values, low and high, e.g. \"[-160,240]\", got {value!r}.") from None
    if not low < high:
        raise ValueError(f"--window_hu must be low < high, got {value!r}.")
    return [low, high]


def compile_setting(value) -> bool | str:
    """``--compile``: true, false (:func:`flag`'s spellings) or ``auto``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return flag(value, "compile")
    except ValueError:
        raise ValueError(f"--compile must be true, false or auto, got {value!r}.") from None


def _lesion_types(value) -> str:
    """``--lesion_types``: the mix as ``name:weight`` text, checked (:func:`transforms.parse_lesion_types`)."""
    from transforms.lesion_synthesis import parse_lesion_types

    return ",".join(f"{name}:{weight:g}" for name, weight in parse_lesion_types(value).items())


def _precision(value):
    return choice("precision", value, PRECISIONS)


def _shard(value):
    from workflows.machine.shards import parse_shard

    return parse_shard(value)


def _networks() -> tuple[str, ...]:
    from networks import NETWORKS

    return NETWORKS


def _window(value):
    from transforms.windowing import WINDOW_PRESETS

    return choice("window", value, tuple(WINDOW_PRESETS))


#: Each setting's parser, by the name the command line gives it (``--name``); a config's ``check_settings`` call
#: names every setting it has (the tests hold every config to this).
SETTINGS: dict[str, Callable[[Any], Any]] = {
    # where things are
    "dataset_dir": _text("dataset_dir"),
    "ckpt_dir": _text("ckpt_dir"),
    "ckpt_file": _text("ckpt_file"),
    "input": _text("input"),
    "output_dir": _text("output_dir"),
    "tensorboard_dir": _text("tensorboard_dir"),
    "val_datalist": _text("val_datalist"),
    "full_val_datalist": _text("full_val_datalist"),
    "mlflow_tracking_uri": _text("mlflow_tracking_uri"),
    "mlflow_experiment": _text("mlflow_experiment"),
    # the model
    "architecture": lambda v: choice("architecture", v, _networks()),
    "target": lambda v: choice("target", v, ("liver", "tumor", "both")),
    "spatial_size": network_size,
    "channels": widths,
    "window": _optional(_window),
    "window_hu": _optional(_window_hu),
    "context": lambda v: whole_number("context", v, 0, 8),
    "members": lambda v: whole_number("members", v, 1, 16),
    "stage": lambda v: choice("stage", v, ("whole", "liver_crop")),
    "crop_margin_mm": lambda v: number("crop_margin_mm", v, 0.0, 200.0, unit=" (mm)"),
    "liver_model": _optional(_text("liver_model")),
    # training
    "chunk": _optional(lambda v: whole_number("chunk", v, 0)),
    "seed": lambda v: whole_number("seed", v, 0, 2**32 - 1),
    "epochs_per_chunk": lambda v: whole_number("epochs_per_chunk", v, 1, 100_000),
    "batch_size": lambda v: whole_number("batch_size", v, 1, 4096),
    "learning_rate": lambda v: number("learning_rate", v, 0.0, 1.0, above=True),
    "checkpoint_every": lambda v: whole_number("checkpoint_every", v, 1),
    "val_interval": lambda v: whole_number("val_interval", v, 1),
    "augment": lambda v: flag(v, "augment"),
    "synthetic_lesions": lambda v: number("synthetic_lesions", v, 0.0, 1.0, unit=" (the chance a sample gets lesions)"),
    "lesion_types": lambda v: _lesion_types(v),
    "progress": lambda v: flag(v, "progress"),
    "compile": compile_setting,
    "tensorboard": lambda v: flag(v, "tensorboard"),
    "mlflow": lambda v: flag(v, "mlflow"),
    "evaluation_samples": lambda v: whole_number("evaluation_samples", v, 0, 10_000),
    # inference
    "sw_batch_size": lambda v: whole_number("sw_batch_size", v, 1, 4096),
    "largest_liver": lambda v: flag(v, "largest_liver"),
    "min_tumour_mm3": lambda v: number("min_tumour_mm3", v, 0.0, unit=" (mm³)"),
    "flip_check": lambda v: flag(v, "flip_check"),
    "deidentify": lambda v: flag(v, "deidentify"),
    "overwrite": lambda v: flag(v, "overwrite"),
    "shard": _shard,
    "channels_last": lambda v: flag(v, "channels_last"),
    # the machine
    "device": device,
    "threads": lambda v: whole_number("threads", v, 0, 4096),
    "num_workers": lambda v: whole_number("num_workers", v, 0, 256),
    "pin_memory": lambda v: flag(v, "pin_memory"),
    "precision": _precision,
}


def check_settings(**given) -> dict[str, Any]:
    """Every setting in ``given`` parsed by :data:`SETTINGS` (a bad one raises ``ValueError``, one line naming
    ``--setting``); returns the parsed values."""
    return {name: SETTINGS[name](value) for name, value in given.items()}
