"""Atomic file writes: a temporary file beside the target, then a rename, so a crash never leaves half a file."""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from workflows.machine.locking import machine_tag, process_running

__all__ = ["TMP_PREFIX", "os_error_line", "write_bytes_atomic", "write_text_atomic", "write_json_atomic", "csv_text", "write_csv_atomic",
           "remove_stale_temporaries"]

TMP_PREFIX = ".tmp-"


def os_error_line(err: OSError) -> str:
    """One line for a failed file operation: the path, what happened, and the way out for that cause only (a full
    disk is not a missing file). Errors raised with a message of their own (``FileNotFoundError(f"{path}: ...")``)
    are kept as they are."""
    if err.errno is None or err.strerror is None:  # raised by this project with its own one-line message
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    path = err.filename if err.filename is not None else "a file"
    code = err.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        way = ("every file written before is whole and kept: free some space, then rerun the same command to carry "
               "on")
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        way = "make the folder writable (or choose another), then rerun the same command to carry on"
    elif code == errno.ENOENT:
        way = "check the path"
    elif code in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        way = "a file stands where a folder is needed, or the other way round: choose another path"
    elif code == errno.ELOOP:
        way = "a symbolic link points back at itself: remove it"
    elif code == errno.ENAMETOOLONG:
        way = "choose a shorter path"
    else:
        way = "check the path and the disk, then rerun the same command"
    return f"{path}: {err.strerror.lower()}; {way}."


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}.{machine_tag()}-{path.name}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as err:  # a full disk: named by the file being written, not its temporary
        tmp.unlink(missing_ok=True)
        if err.errno is not None and err.strerror is not None:
            raise type(err)(err.errno, err.strerror, str(path)) from None
        raise
    except BaseException:  # Ctrl-C: no temporary left behind (a kill leaves one, removed on rerun)
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, payload: object) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def csv_text(rows: Iterable[dict], columns: Sequence[str] | None = None, spreadsheet: bool = False) -> str:
    """Rows as CSV text: ``columns``, else every key in first-seen order; floats to 6 significant digits, ``None``
    and NaN as empty cells. The one CSV writer of the project. ``spreadsheet``: for a table people open in a
    spreadsheet (inference's summary), a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
    return gets a leading ``'``, so a file named like a formula (``=HYPERLINK(...)``) stays text (CSV injection)."""
    rows = list(rows)
    columns = list(columns or dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column), spreadsheet) for column in columns])
    return buffer.getvalue()


def write_csv_atomic(path: str | os.PathLike, rows: Iterable[dict], columns: Sequence[str] | None = None,
                     spreadsheet: bool = False) -> Path:
    """:func:`csv_text` written atomically."""
    return write_text_atomic(path, csv_text(rows, columns, spreadsheet))


#: what a spreadsheet reads as the start of a formula
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object, spreadsheet: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if spreadsheet and isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return str(value)


def remove_stale_temporaries(folder: str | os.PathLike, subfolders: Sequence[str] = ()) -> int:
    """Delete the temporaries (``.tmp-<pid>.<machine>-<name>``) a killed run of this tool on this machine left
    directly in ``folder`` and in its ``subfolders``, and only those: files of a process still running, of another
    machine writing into a shared folder, and anything deeper (an input folder below the output, say), are left
    alone. Returns how many were removed."""
    removed = 0
    for where in [Path(folder), *(Path(folder) / name for name in subfolders)]:
        if not where.is_dir():
            continue
        for tmp in where.glob(f"{TMP_PREFIX}*"):
            pid, _, machine = tmp.name[len(TMP_PREFIX):].split("-", 1)[0].partition(".")
            if machine and machine != machine_tag():
                continue
            if tmp.is_file() and pid.isdigit() and int(pid) != os.getpid() and not process_running(int(pid)):
                tmp.unlink()
                removed += 1
    return removed

