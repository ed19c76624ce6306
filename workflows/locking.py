"""One run at a time per folder: a lock file naming the process that holds it.

``folder_lock(folder, what)`` creates ``<folder>/.liver-ct.lock`` holding this process's PID, atomically
(``O_CREAT | O_EXCL``). A second run on the same folder is refused with the first's PID; a lock left by a process
that no longer runs (a kill) is taken over. The lock goes when the run ends, however it ends short of a kill.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "FolderInUse", "folder_lock", "process_running"]

LOCK_NAME = ".liver-ct.lock"


class FolderInUse(ValueError):
    """Another run holds the folder."""


def process_running(pid: int) -> bool:
    """Whether a process with this PID runs (another user's counts; unknown systems: assume it does)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    except OSError:  # Windows: os.kill(pid, 0) is not a probe; assume it runs
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``folder`` for this process while the block runs; ``what`` names the run in the refusal
    (``"a conversion"``, ``"a training"``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder != os.getpid() and process_running(holder):
                raise FolderInUse(f"{folder} is in use by {what} running as PID {holder}; wait for it to end, or "
                                  "use another folder.") from None
            lock.unlink(missing_ok=True)  # left by a run that was killed
            continue
        with os.fdopen(handle, "w") as stream:
            stream.write(f"{os.getpid()}\n")
        break
    else:
        raise FolderInUse(f"{folder}: could not take its lock {lock}; another run may be starting there.")
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)
