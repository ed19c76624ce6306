"""The thread budget: torch's threads per process, so processes sharing the cores do not oversubscribe them.

Two kinds of sharing collapse a CPU run: this command's own processes (data workers, ``torchrun`` ranks: two
processes each using every core ran training 6-10x slower here), and other programs already busy on the machine
(beside one other 2-thread job on 2 cores, a tiny training epoch took 30-45 s at 2 threads against 0.7 s at 1:
OpenMP threads wait for each other, and a thread whose core is taken makes the others wait). So the default count is
the cores this process may run on, less the cores other programs keep busy right now (sampled for a fraction of a
second), divided by the processes the command runs. ``--threads N`` sets it outright.
"""

from __future__ import annotations

import logging
import os
import time

__all__ = ["available_cores", "busy_cores", "default_threads", "set_threads"]

logger = logging.getLogger("liver_ct.threads")

#: how long the machine's load is sampled before torch's threads are chosen (once per process)
SAMPLE_SECONDS = 0.25


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _cpu_times(cores: set[int]) -> tuple[float, float]:
    """(busy, total) clock ticks of ``cores`` since boot, from ``/proc/stat``."""
    busy = total = 0.0
    with open("/proc/stat") as handle:
        for line in handle:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
                continue
            ticks = [float(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def _own_ticks() -> float:
    """This process's CPU time (all its threads) in clock ticks."""
    times = os.times()
    return (times.user + times.system) * os.sysconf("SC_CLK_TCK")


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """How many of this process's cores other programs keep busy now: ``/proc/stat`` sampled over ``seconds``
    (this process's own time taken out); where the system has no ``/proc/stat``, the 1-minute load average."""
    try:
        cores = os.sched_getaffinity(0)
        busy0, total0, own0 = *_cpu_times(cores), _own_ticks()
        time.sleep(seconds)
        busy1, total1, own1 = *_cpu_times(cores), _own_ticks()
    except (OSError, AttributeError, ValueError):
        try:
            return min(float(os.getloadavg()[0]), float(available_cores()))
        except (OSError, AttributeError):
            return 0.0
    elapsed = (total1 - total0) / max(1, len(cores))  # ticks per core in the window
    if elapsed <= 0:
        return 0.0
    return max(0.0, ((busy1 - busy0) - (own1 - own0)) / elapsed)


def default_threads(processes: int = 1) -> tuple[int, str]:
    """torch's threads when ``--threads`` is 0: the cores less the ones other programs keep busy (a core counts as
    busy from half its time on), divided by ``processes``, at least 1; and the reason, for the log."""
    cores = available_cores()
    busy = min(cores, int(busy_cores() + 0.5))
    count = max(1, (cores - busy) // processes)
    reason = f"{cores} cores" + (f", {busy} busy with other programs" if busy else "") + f" / {processes} process(es)"
    return count, reason


def set_threads(threads=0, processes=1) -> int:
    """Set torch's intra-op threads: ``threads`` when > 0, else :func:`default_threads` for the ``processes`` the
    command runs at once times the ranks ``torchrun`` started on this machine (``LOCAL_WORLD_SIZE``). Returns the
    count set; call it before torch does any work."""
    import torch

    try:
        wanted = int(threads)
    except (TypeError, ValueError):
        raise ValueError(f"--threads must be a whole number (0: the free cores divided by the processes), got {threads!r}.") from None
    if wanted < 0:
        raise ValueError(f"--threads must be >= 0 (0: the free cores divided by the processes), got {threads!r}.")
    processes = max(1, int(processes)) * max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    count, reason = (wanted, "set") if wanted else default_threads(processes)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    logger.info(f"torch threads: {count} ({reason})")
    return count
