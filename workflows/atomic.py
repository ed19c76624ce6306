"""Atomic file writes: a temporary file beside the target, then a rename, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["TMP_PREFIX", "write_bytes_atomic", "write_text_atomic", "write_json_atomic", "save_figure",
           "remove_stale_temporaries"]

TMP_PREFIX = ".tmp-"


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, payload: object) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Render a matplotlib figure to PNG, write it atomically, close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporaries a killed run left under ``folder``; returns how many."""
    removed = 0
    for tmp in Path(folder).rglob(f"{TMP_PREFIX}*"):
        if tmp.is_file():
            tmp.unlink()
            removed += 1
    return removed
