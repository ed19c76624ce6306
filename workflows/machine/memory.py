"""Peak memory of this process, for the figures long jobs report (per chunk, per conversion worker)."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["peak_memory_mib"]


def peak_memory_mib(reset: bool = False) -> float:
    """Peak resident memory of this process in MiB; ``reset=True`` starts a new peak (Linux ``clear_refs``),
    so each chunk reports its own peak rather than the process's all-time high."""
    try:
        status = Path("/proc/self/status").read_text()
        peak = next(float(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        return peak
    except (OSError, StopIteration):
        pass
    try:  # macOS and other Unix: the all-time peak (ru_maxrss is bytes on macOS, KiB elsewhere)
        import resource  # Unix only: imported here so Windows can import this module
    except ImportError:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
