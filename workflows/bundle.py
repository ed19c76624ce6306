"""Where the bundle lives and how Python code runs its workflows (the same configs the command line runs)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["BUNDLE_NAME", "BundleCommandError", "bundle_root", "config_file", "one_line_errors", "run_workflow",
           "flag", "whole_number", "network_size", "check_inference_settings"]

BUNDLE_NAME = "liver_tumor_ct_segmentation"


def bundle_root() -> str:
    """The bundle folder of this installation (``bundles/liver_tumor_ct_segmentation``), absolute, so the configs
    run from the repository root, from the bundle's own folder or from anywhere else."""
    return str(Path(__file__).resolve().parents[1] / "bundles" / BUNDLE_NAME)


class BundleCommandError(SystemExit):
    """A user error (bad setting, missing file) leaving a bundle workflow: ``python -m monai.bundle run`` prints
    the message alone and exits with status 1. MONAI's config parser wraps an ``Exception`` raised inside a ``$``
    expression in a ``RuntimeError`` and a traceback; a ``SystemExit`` passes through. ``error`` is the original."""

    def __init__(self, error: Exception) -> None:
        super().__init__(f"error: {error}")
        self.error = error

    def __str__(self) -> str:
        return str(self.code)


def one_line_errors(run: Callable[[], Any]) -> Any:
    """Call ``run`` (a workflow's entry, named in a config: ``$one_line_errors(@chunked_training.run)``); a
    ``ValueError`` or an ``OSError`` (a missing file, a full or read-only disk) from it leaves as
    :class:`BundleCommandError`; Ctrl-C ends with one line and status 130 (files are written atomically: what
    was finished is kept, and a rerun carries on)."""
    try:
        return run()
    except ValueError as err:
        raise BundleCommandError(err) from None
    except OSError as err:  # a full or read-only disk: every file is written whole or not at all
        raise BundleCommandError(OSError(f"{err}; every file written before is whole and kept: free the space or "
                                         "make the folder writable, then rerun the same command to carry on")) from None
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue", file=sys.stderr)
        raise SystemExit(130) from None


def flag(value, name: str = "setting") -> bool:
    """An on/off setting as the command line gives it (``--augment false``, ``"true"``, ``1``) or a config does
    (``true``); anything else is refused by name."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"--{name} must be true or false, got {value!r}.")


def whole_number(name: str, value, least: int) -> int:
    """A setting that must be a whole number >= ``least`` (``--chunk abc``, ``--chunk 0.5`` are refused by name)."""
    text = str(value).strip()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not text.lstrip("-").isdigit() \
            or int(text) < least:
        raise ValueError(f"--{name} must be a whole number >= {least}, got {value!r}.")
    return int(text)


def network_size(spatial_size) -> int:
    """``--spatial_size``: a multiple of 8 (the network pools three times), at least 8."""
    size = whole_number("spatial_size", spatial_size, 8)
    if size % 8:
        raise ValueError(f"--spatial_size must be a multiple of 8 (three 2x poolings), got {spatial_size!r}.")
    return size


def check_inference_settings(spatial_size, target, sw_batch_size, min_tumour_mm3, shard=None, overwrite=False,
                             precision="auto", channels_last=True) -> None:
    """Refuse, before anything is built, inference settings that cannot work, in one line each."""
    from workflows.precision import PRECISIONS
    from workflows.shards import parse_shard

    parse_shard(shard)
    flag(overwrite, "overwrite")
    flag(channels_last, "channels_last")
    if str(precision) not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    network_size(spatial_size)
    if target not in ("liver", "tumor", "both"):
        raise ValueError(f"--target must be liver, tumor or both, got {target!r}.")
    whole_number("sw_batch_size", sw_batch_size, 1)
    try:
        smallest = float(min_tumour_mm3)
    except (TypeError, ValueError):
        smallest = -1.0
    if not smallest >= 0:
        raise ValueError(f"--min_tumour_mm3 must be a volume >= 0 (mm³), got {min_tumour_mm3!r}.")


def config_file(name: str) -> str:
    """``configs/<name>.json`` of the bundle, absolute."""
    return str(Path(bundle_root()) / "configs" / f"{name}.json")


def run_workflow(run_id: str, configs: list[str], workflow_type: str, **overrides):
    """Run one workflow of the bundle (``configs`` merged in order, names from :func:`config_file`) with
    ``overrides`` as the command line's ``--key value``; returns what the run id returns."""
    from monai.bundle import ConfigWorkflow  # ~5 s of imports: only when a workflow runs

    files = [config_file(name) for name in configs]
    workflow = ConfigWorkflow(config_file=files if len(files) > 1 else files[0], workflow_type=workflow_type,
                              run_id=run_id, logging_file=str(Path(files[0]).with_name("logging.conf")), **overrides)
    try:
        workflow.initialize()
        try:
            return workflow.run()
        finally:
            workflow.finalize()
    except BundleCommandError as err:  # Python callers get the original exception
        raise err.error from None
