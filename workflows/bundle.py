"""Where the bundle lives and how Python code runs its workflows (the same configs the command line runs)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["BUNDLE_NAME", "BundleCommandError", "bundle_root", "config_file", "one_line_errors", "run_workflow",
           "quiet_input_echo"]

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
    except OSError as err:  # a missing file, a full or read-only disk: every file is written whole or not at all
        from workflows.machine.atomic import os_error_line

        raise BundleCommandError(OSError(os_error_line(err))) from None
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue", file=sys.stderr)
        raise SystemExit(130) from None


def quiet_input_echo(deidentify) -> None:
    """With ``deidentify`` on, MONAI's echo of the command line's settings (logged once ``initialize`` has run)
    is left out: it prints ``--input``, whose folder and file names may name the patient."""
    import logging

    from workflows.machine.settings import flag

    logging.getLogger("monai.bundle.scripts").setLevel(logging.WARNING if flag(deidentify, "deidentify") else logging.NOTSET)


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
