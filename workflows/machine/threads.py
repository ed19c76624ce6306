"""The thread budget: torch's threads per process, so processes sharing the cores do not oversubscribe them (two
processes each using every core ran training 6-10x slower here)."""

from __future__ import annotations

import logging
import os

__all__ = ["available_cores", "set_threads"]

logger = logging.getLogger("liver_ct.threads")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_threads(threads=0, processes=1) -> int:
    """Set torch's intra-op threads: ``threads`` when > 0, else the cores divided by the ``processes`` the command
    runs at once (at least 1), times the ranks ``torchrun`` started on this machine (``LOCAL_WORLD_SIZE``). Returns
    the count set; call it before torch does any work."""
    import torch

    try:
        wanted = int(threads)
    except (TypeError, ValueError):
        raise ValueError(f"--threads must be a whole number (0: the cores divided by the processes), got {threads!r}.") from None
    if wanted < 0:
        raise ValueError(f"--threads must be >= 0 (0: the cores divided by the processes), got {threads!r}.")
    processes = max(1, int(processes)) * max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    count = wanted or max(1, available_cores() // processes)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    logger.info(f"torch threads: {count} ({'set' if wanted else f'{available_cores()} cores / {processes} process(es)'})")
    return count
