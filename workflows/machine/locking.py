"""One run at a time per folder: a lock file naming the process that holds it.

``folder_lock(folder, what)`` creates ``<folder>/.liver-ct.lock`` holding this process's PID and a tag of its
machine, atomically (``O_CREAT | O_EXCL``). A second run on the same folder is refused with the first's PID; a
lock left by a process of this machine that no longer runs (a kill) is taken over, one of another machine (a shared
file system) is never. The lock goes when the run ends, however it ends short of a kill. Runs that share a folder
by design (the shards of a conversion) each take their own lock (``name``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "LOCK_PREFIX", "FolderInUse", "folder_lock", "process_running", "machine_tag"]

LOCK_PREFIX = ".liver-ct."
LOCK_NAME = f"{LOCK_PREFIX}lock"


@functools.lru_cache(maxsize=None)
def machine_tag() -> str:
    """Eight hex digits naming this machine (its host name, hashed): a PID means something only on its machine."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


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
def folder_lock(folder: str | os.PathLike, what: str, name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold ``folder`` for this process while the block runs; ``what`` names the run in the refusal
    (``"a conversion"``, ``"a training"``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / name
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                fields = lock.read_text().split()
                holder, machine = int(fields[0]), (fields[1] if len(fields) > 1 else machine_tag())
            except (OSError, ValueError, IndexError):
                holder, machine = 0, machine_tag()
            elsewhere = machine != machine_tag()
            if elsewhere or (holder != os.getpid() and process_running(holder)):
                where = f" on another machine ({machine})" if elsewhere else ""
                raise FolderInUse(f"{folder} is in use by {what} running as PID {holder}{where}; wait for it to end, "
                                  f"or use another folder (a lock left by a killed run elsewhere: delete {lock}).") from None
            lock.unlink(missing_ok=True)  # left by a run that was killed
            continue
        with os.fdopen(handle, "w") as stream:
            stream.write(f"{os.getpid()} {machine_tag()}\n")
        break
    else:
        raise FolderInUse(f"{folder}: could not take its lock {lock}; another run may be starting there.")
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)
