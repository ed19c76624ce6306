"""What grey level the liver has in each source of a slice set, so sources windowed differently are caught before
they are mixed in training (a 2D set exported in another window looks like another organ to the network).

Conversion records, per volume, the grey-level distribution inside and outside the liver and how the grey levels
were made (``window``: the HU window of a volume, "unknown" for an 8-bit 2D source); ``grey_levels.json`` in the
slice set holds them, grouped by source. :func:`disagreeing_sources` compares the sources' liver medians.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

__all__ = ["GREY_LEVELS_NAME", "LIVER_GREY_MARGIN", "UNKNOWN_WINDOW", "GreyLevels", "source_groups",
           "disagreeing_sources", "liver_grey_scale", "read_grey_levels"]

GREY_LEVELS_NAME = "grey_levels.json"
#: sources whose median liver grey levels differ by more than this (of 0..255) are flagged: ~63 HU in the abdomen
#: window, more than patients and contrast phases move the liver (measured on the real samples: DICOM HCC patients
#: 144-151, a 2D set's patients 158-180 in the same window; a 2D set in another window 240)
LIVER_GREY_MARGIN = 40
#: how a 2D source's window is recorded: 8-bit grey levels, whatever window made them
UNKNOWN_WINDOW = "unknown (8-bit 2D source)"


class GreyLevels:
    """Histograms of the grey levels of one volume's slices, inside the liver and outside it (within the body:
    grey level above 0)."""

    def __init__(self) -> None:
        self.liver = np.zeros(256, np.int64)
        self.outside = np.zeros(256, np.int64)

    def add(self, grey: np.ndarray, labels: np.ndarray | None) -> None:
        grey = np.ascontiguousarray(grey, np.uint8)
        every = cv2.calcHist([grey], [0], None, [256], [0, 256])[:, 0].astype(np.int64)
        liver = np.zeros(256, np.int64)
        if labels is not None:
            inside = np.ascontiguousarray(labels >= 1, np.uint8)
            liver = cv2.calcHist([grey], [0], inside, [256], [0, 256])[:, 0].astype(np.int64)
        outside = every - liver
        outside[0] = 0  # grey level 0 is air and what the window cuts off, not body
        self.liver += liver
        self.outside += outside

    @staticmethod
    def _percentile(hist: np.ndarray, q: float) -> float | None:
        total = int(hist.sum())
        if not total:
            return None
        return float(np.searchsorted(np.cumsum(hist), q / 100 * total))

    def summary(self, source: str, window: str) -> dict:
        return {"source": source, "window": window, "liver_pixels": int(self.liver.sum()),
                "liver_median": self._percentile(self.liver, 50), "liver_p10": self._percentile(self.liver, 10),
                "liver_p90": self._percentile(self.liver, 90), "outside_median": self._percentile(self.outside, 50)}


def source_groups(records: dict[str, dict]) -> dict[str, dict]:
    """Per source (what made the grey levels: a 2D set's folder, or volumes windowed alike): the volumes and the
    median of their liver medians."""
    groups: dict[str, dict] = defaultdict(lambda: {"volumes": [], "liver_medians": []})
    for volume_id, record in sorted(records.items()):
        group = groups[record["source"]]
        group["window"] = record["window"]
        group["volumes"].append(volume_id)
        if record.get("liver_median") is not None:
            group["liver_medians"].append(record["liver_median"])
    return {name: {"window": g["window"], "volumes": g["volumes"],
                   "liver_median": float(np.median(g["liver_medians"])) if g["liver_medians"] else None}
            for name, g in groups.items()}


def disagreeing_sources(groups: dict[str, dict], margin: float = LIVER_GREY_MARGIN) -> str | None:
    """A warning naming the sources when their liver grey levels differ by more than ``margin``, else None."""
    known = {name: g["liver_median"] for name, g in groups.items() if g["liver_median"] is not None}
    if len(known) < 2 or max(known.values()) - min(known.values()) <= margin:
        return None
    shown = ", ".join(f"{name} ({groups[name]['window']}) {value:.0f}" for name, value in sorted(known.items(), key=lambda x: x[1]))
    factors = {name: liver_grey_scale(groups, name, margin) for name in known}
    rescale = "; ".join(f"{name}: --grey-scale {f:g}" for name, f in factors.items() if f)
    return (f"the sources' liver grey levels differ by more than {margin} of 255 (median liver grey: {shown}): they "
            "were not made with the same window, and a network trained on them mixed learns the liver twice. Convert "
            "every source in one window (2D sets: export them in the abdomen window, level 40 / width 400" +
            (f", or convert a 2D set again with python -m workflows.convert ... --grey-scale F, which brings its "
             f"liver to the windowed sources' grey ({rescale})" if rescale else "") +
            "), or convert the odd source into a separate slice set and leave it out of training.")


def liver_grey_scale(groups: dict[str, dict], name: str, margin: float = LIVER_GREY_MARGIN) -> float | None:
    """The factor that brings 2D source ``name``'s median liver grey to that of the sources windowed in HU (the median
    of their medians), when the two differ by more than ``margin``; None when they agree, when ``name`` is not a 2D
    source in an unknown window, or when no source windowed in HU is there to match.

    A factor, not a shift: air (grey 0) stays 0 and the grey levels keep their order; a window that cut off the
    liver's bright side (CHAOS's PNGs: 10% of the liver at 255) stays cut off, only lower."""
    group = groups.get(name) or {}
    windowed = [g["liver_median"] for g in groups.values()
                if g["liver_median"] is not None and not g["window"].startswith(UNKNOWN_WINDOW)]
    own = group.get("liver_median")
    if not windowed or not own or group.get("window") != UNKNOWN_WINDOW:
        return None
    target = float(np.median(windowed))
    return round(target / own, 3) if abs(own - target) > margin else None


def read_grey_levels(slices_dir: str | os.PathLike) -> dict[str, dict]:
    """The per-volume records of ``<slices_dir>/grey_levels.json`` ({} for a slice set converted before them)."""
    path = Path(slices_dir) / GREY_LEVELS_NAME
    return json.loads(path.read_text()) if path.is_file() else {}
