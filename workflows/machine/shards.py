"""Shares of a job for N machines or processes: ``--shard I/N`` takes every N-th item in a stable order from the
I-th (conversion: volumes by id; inference: scans by path), so the shares are even, disjoint, cover everything once
and are the same on every machine that sees the same input (nnU-Net's ``-part_id`` / ``-num_parts``, counted
from 1)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from workflows.machine.locking import LOCK_NAME, LOCK_PREFIX

__all__ = ["parse_shard", "share", "shard_lock"]

T = TypeVar("T")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/4"`` -> ``(2, 4)``; ``None`` (or an empty setting) -> ``None``: no sharding.

    Raises:
        ValueError: not ``I/N`` with 1 <= I <= N.
    """
    if text is None or str(text).strip().lower() in ("", "none", "null"):
        return None
    index, slash, count = str(text).partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        shard = (0, 0)
    if not slash or not 1 <= shard[0] <= shard[1]:
        raise ValueError(f"--shard must be I/N with 1 <= I <= N (this machine's share of N), got {text!r}.")
    return shard


def share(items: Sequence[T], shard: tuple[int, int] | None, key: Callable[[T], object] | None = None) -> list[T]:
    """Share ``I`` of ``N`` of ``items``: every N-th in ``key`` order from the I-th (all of them without a shard)."""
    if shard is None:
        return list(items)
    index, count = shard
    return sorted(items, key=key)[index - 1::count]


def shard_lock(shard: tuple[int, int] | None, what: str) -> tuple[str, str]:
    """The lock file name and the run's description for :func:`workflows.machine.locking.folder_lock`: the shards of one job
    share the output folder, each holding its own lock (``.liver-ct.shard-2-of-4.lock``)."""
    if shard is None:
        return LOCK_NAME, what
    return f"{LOCK_PREFIX}shard-{shard[0]}-of-{shard[1]}.lock", f"shard {shard[0]}/{shard[1]} of {what}"
