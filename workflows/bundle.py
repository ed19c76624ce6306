"""Where the bundle lives, the trained weights it ships, and how Python code runs its workflows (the same configs
the command line runs)."""

from __future__ import annotations

import ast
import difflib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["BUNDLE_NAME", "BundleCommandError", "bundle_root", "config_file", "one_line_errors", "run_workflow",
           "quiet_input_echo", "unknown_setting", "refuse_unknown_settings", "SHIPPED_WEIGHTS", "shipped_weights",
           "check_shipped_weights", "default_model"]

#: the arguments of ``python -m monai.bundle run`` itself, not settings of a config
RUN_ARGUMENTS = frozenset({"config_file", "meta_file", "logging_file", "init_id", "run_id", "final_id", "tracking",
                           "args_file", "workflow_type", "properties_path", "workflow_name"})

BUNDLE_NAME = "liver_tumor_ct_segmentation"

#: the trained weights the bundle ships, under its folder; ``large_files.yml`` (the model zoo's form) records their
#: sha256. Training writes ``models/model.pt`` beside them, never on them.
SHIPPED_WEIGHTS = Path("models") / "shipped" / "model.pt"


def bundle_root() -> str:
    """The bundle folder of this installation (``bundles/liver_tumor_ct_segmentation``), absolute, so the configs
    run from the repository root, from the bundle's own folder or from anywhere else."""
    return str(Path(__file__).resolve().parents[1] / "bundles" / BUNDLE_NAME)


def _recorded_sha256(root: Path) -> dict[str, str]:
    """``path: sha256`` of the files ``root/large_files.yml`` lists."""
    import yaml

    listed = root / "large_files.yml"
    try:
        entries = (yaml.safe_load(listed.read_text()) or {}).get("large_files") or []
    except (OSError, yaml.YAMLError, AttributeError) as err:
        raise ValueError(f"{listed}: not a readable list of large files ({err}); restore it with `git checkout -- "
                         f"{listed}`.") from None
    return {str(e.get("path")): str(e.get("hash_val", "")).lower() for e in entries
            if isinstance(e, dict) and e.get("hash_type", "sha256") == "sha256"}


def shipped_weights(root: str | Path | None = None) -> Path:
    """The bundle's shipped weights (:data:`SHIPPED_WEIGHTS` under ``root``, the bundle by default), their bytes
    checked against the sha256 that ``large_files.yml`` records; ``ValueError`` (one line) when they are missing or
    differ."""
    import hashlib

    root = Path(root or bundle_root())
    path = root / SHIPPED_WEIGHTS
    recorded = _recorded_sha256(root).get(SHIPPED_WEIGHTS.as_posix())
    if not path.is_file() or not recorded:
        raise ValueError(f"{path}: the bundle's shipped weights are missing (or {root / 'large_files.yml'} lists no "
                         "sha256 for them); restore them with `git checkout -- " f"{path}`, or name a model with "
                         "--ckpt_file MODEL.pt.")
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != recorded:
        raise ValueError(f"{path}: sha256 {found[:12]}... differs from the {recorded[:12]}... that large_files.yml "
                         f"records: the shipped weights were changed or damaged; restore them with `git checkout -- "
                         f"{path}`, or name a model with --ckpt_file MODEL.pt.")
    return path


def check_shipped_weights(ckpt_file: str | Path, root: str | Path | None = None) -> None:
    """When ``ckpt_file`` is the bundle's shipped weights (named or found by default), check their sha256."""
    root = Path(root or bundle_root())
    if Path(ckpt_file).resolve() == (root / SHIPPED_WEIGHTS).resolve():
        shipped_weights(root)


def default_model(ckpt_dir: str | Path, root: str | Path | None = None) -> str:
    """The model inference runs when none is named: ``ckpt_dir/model.pt`` when a training wrote one there (it takes
    precedence), else the bundle's shipped weights, whose bytes :func:`check_shipped_weights` checks once, first thing
    in ``initialize``; one log line says which."""
    import logging

    logger = logging.getLogger("liver_ct.model")
    trained = Path(ckpt_dir) / "model.pt"
    if trained.is_file():
        logger.info(f"model: {trained} (trained into the bundle's models folder; it takes precedence over the shipped "
                    "weights; --ckpt_file names another)")
        return str(trained)
    shipped = Path(root or bundle_root()) / SHIPPED_WEIGHTS
    if not shipped.is_file():
        shipped_weights(root)  # says what is missing and the way out
    logger.info(f"model: the shipped weights {shipped} (sha256 checked before use; the bundle README's model card says "
                "how they were trained and how well they do; --ckpt_file names another model)")
    return str(shipped)


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
    and its reader's note naming a file it cannot read are left out: they print paths under ``--input``, whose
    folder and file names may name the patient."""
    import logging

    from workflows.machine.settings import flag

    level = logging.WARNING if flag(deidentify, "deidentify") else logging.NOTSET
    # MONAI's LoadImage logs "unable to load <full path>" for a file its reader cannot read
    for name in ("monai.bundle.scripts", "LoadImage"):
        logging.getLogger(name).setLevel(level)


def unknown_setting(config: dict, names: Iterable[str], files: str = "the configs") -> str | None:
    """The one-line refusal of the first of ``names`` (``largest_liver``, ``network_def#channels``) that is not a
    setting of ``config`` (the merged configs a workflow runs), naming the closest known one; ``None`` when all are
    known. A setting nothing reads would be accepted and ignored: a typo (``--largest_livr``) or a setting of
    another workflow (``--stage`` at inference)."""
    for name in names:
        if name in RUN_ARGUMENTS:
            continue
        where, parts = config, name.replace("::", "#").split("#")
        for depth, part in enumerate(parts):
            if isinstance(where, dict) and part in where:
                where = where[part]
            elif isinstance(where, list) and part.isdigit() and int(part) < len(where):
                where = where[int(part)]
            else:
                known = [key for key in (where if isinstance(where, dict) else {}) if not key.startswith("_")]
                prefix = "#".join(parts[:depth])
                close = difflib.get_close_matches(part, known, n=1, cutoff=0.6)
                hint = f"; did you mean --{prefix + '#' if prefix else ''}{close[0]}?" if close else \
                    "; the workflow's settings are listed in the bundle's docs/README.md"
                return f"--{name}: not a setting of {files} (it would be ignored){hint}"
    return None


def _command_line_settings(argv: list[str]) -> tuple[list[str], list[str]]:
    """The config files and the ``--name`` settings of a ``python -m monai.bundle run`` command line."""
    names, files = [], []
    for k, token in enumerate(argv):
        if not token.startswith("--") or len(token) < 3:
            continue
        name, equals, value = token[2:].partition("=")
        names.append(name)
        if name == "config_file":
            value = value if equals else (argv[k + 1] if k + 1 < len(argv) else "")
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                parsed = value
            files += [str(f) for f in parsed] if isinstance(parsed, (list, tuple)) else [str(parsed)]
    return names, files


def refuse_unknown_settings(argv: list[str] | None = None) -> None:
    """Refuse, in one line naming the closest known setting, a ``--setting`` of the ``python -m monai.bundle run``
    command line that none of its config files has (a call from Python, which has no such command line, is checked
    by :func:`run_workflow`)."""
    argv = sys.argv if argv is None else argv
    if not argv or Path(argv[0]).parent.name != "bundle" or Path(argv[0]).name != "__main__.py":
        return
    names, files = _command_line_settings(argv[1:])
    if not files:
        return
    from monai.bundle import ConfigParser

    message = unknown_setting(ConfigParser.load_config_files(files), names, ", ".join(Path(f).name for f in files))
    if message:
        raise ValueError(message)


def config_file(name: str) -> str:
    """``configs/<name>.json`` of the bundle, absolute."""
    return str(Path(bundle_root()) / "configs" / f"{name}.json")


def run_workflow(run_id: str, configs: list[str], workflow_type: str, **overrides):
    """Run one workflow of the bundle (``configs`` merged in order, names from :func:`config_file`) with
    ``overrides`` as the command line's ``--key value``; returns what the run id returns."""
    from monai.bundle import ConfigWorkflow  # ~5 s of imports: only when a workflow runs

    files = [config_file(name) for name in configs]
    from monai.bundle import ConfigParser

    message = unknown_setting(ConfigParser.load_config_files(files), overrides, ", ".join(f"{n}.json" for n in configs))
    if message:
        raise ValueError(message)
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
