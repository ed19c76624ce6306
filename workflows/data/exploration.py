"""Look at a slice set before training on it: counts, pixel ranges, liver and tumour distribution, pictures.
The library behind ``python -m workflows.explore``."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402
from tqdm import tqdm  # noqa: E402

from transforms import liver_mask, tumour_mask  # noqa: E402
from workflows.machine.atomic import write_csv_atomic, write_json_atomic, write_text_atomic  # noqa: E402
from workflows.data.grey_levels import LIVER_GREY_MARGIN, disagreeing_sources, read_grey_levels, source_groups  # noqa: E402
from workflows.data.pictures import overlay, save_figure  # noqa: E402
from workflows.data.slice_set import read_grey_slice, read_manifest, read_mask  # noqa: E402

__all__ = ["explore"]

def _area_mm2(row: dict) -> float:
    return row["spacing_row_mm"] * row["spacing_col_mm"]


def _read_slice(path: str) -> np.ndarray:
    """A slice the manifest names; one gone or damaged since conversion is refused by name."""
    try:
        return read_grey_slice(path)[0]
    except ValueError as err:
        raise ValueError(f"{str(err).rstrip('.')} (named in the slice set's manifest.csv: changed since conversion?); "
                         "convert the set again.") from None


def explore(slices_dir: str | os.PathLike, out_dir: str | os.PathLike, max_images: int = 400, seed: int = 0,
            progress: bool = True) -> dict:
    """Write the report; returns the summary written to ``summary.json``."""
    rows = read_manifest(slices_dir)
    if not rows:
        raise ValueError(f"{slices_dir}: the manifest has no slices.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labelled = [r for r in rows if r["mask"]]
    tumour_known = bool(labelled) and all(r["tumor_pixels"] is not None for r in labelled)

    # -- counts per volume --------------------------------------------------------------------------------------
    volumes: dict[str, dict] = defaultdict(lambda: {"slices": 0, "liver_slices": 0, "tumour_slices": 0,
                                                      "liver_pixels": 0, "tumour_pixels": 0})
    for r in rows:
        v = volumes[r["volume_id"]]
        v["slices"] += 1
        v["liver_slices"] += bool(r["liver_pixels"])
        v["tumour_slices"] += bool(r["tumor_pixels"])
        v["liver_pixels"] += r["liver_pixels"] or 0
        v["tumour_pixels"] += r["tumor_pixels"] or 0
        v["spacing_mm"] = [r["spacing_row_mm"], r["spacing_col_mm"], r["slice_thickness_mm"]]
    write_csv_atomic(out / "per_volume.csv", [{"volume_id": vid, **v} for vid, v in volumes.items()],
                     ["volume_id", "slices", "liver_slices", "tumour_slices", "liver_pixels", "tumour_pixels"])

    # -- pixels: a seeded sample of slices ----------------------------------------------------------------------
    sample = [rows[i] for i in sorted(rng.permutation(len(rows))[:max_images])]
    hist = {name: np.zeros(256, np.int64) for name in ("all", "liver", "tumour")}
    pixel_min, pixel_max, total, total_sq, count = 255, 0, 0.0, 0.0, 0
    shapes: dict[str, int] = defaultdict(int)
    for r in tqdm(sample, desc="reading slices", unit="slice", disable=not progress):
        image = _read_slice(r["image"])
        shapes[f"{image.shape[0]}x{image.shape[1]}"] += 1
        hist["all"] += np.bincount(image.ravel(), minlength=256)
        pixel_min, pixel_max = min(pixel_min, int(image.min())), max(pixel_max, int(image.max()))
        total += float(image.sum())
        total_sq += float((image.astype(np.float64) ** 2).sum())
        count += image.size
        if r["mask"]:
            mask = read_mask(r["mask"])
            hist["liver"] += np.bincount(image[liver_mask(mask)], minlength=256)
            hist["tumour"] += np.bincount(image[tumour_mask(mask)], minlength=256)
    mean = total / count
    pixels = {"min": pixel_min, "max": pixel_max, "mean": round(mean, 2),
              "std": round(float(np.sqrt(max(total_sq / count - mean**2, 0))), 2), "sampled_slices": len(sample),
              "shapes": dict(shapes)}
    for name in ("liver", "tumour"):
        if hist[name].sum():
            values = np.repeat(np.arange(256), hist[name])
            pixels[f"{name}_median"] = float(np.median(values))

    fig, ax = plt.subplots(figsize=(7, 4))
    grey = np.arange(256)
    for name, colour in (("all", "0.4"), ("liver", "tab:green"), ("tumour", "tab:red")):
        if hist[name].sum():
            ax.step(grey, hist[name] / hist[name].sum(), where="mid", color=colour, label=f"{name} pixels")
    ax.set_yscale("log")
    settings = Path(slices_dir) / "convert.json"
    lo, hi = json.loads(settings.read_text()).get("window_range_hu", (None, None)) if settings.exists() else (None, None)
    ax.set_xlabel("grey level" + (f" (0 = {lo:g} HU, 255 = {hi:g} HU)" if lo is not None else ""))
    ax.set_ylabel("share of pixels")
    ax.set_title(f"Intensity histogram ({len(sample)} sampled slices)")
    ax.legend()
    save_figure(fig, out / "intensity_histogram.png")

    # -- liver and tumour per volume ----------------------------------------------------------------------------
    ids = list(volumes)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(ids)), 4))
    x = np.arange(len(ids))
    ax.bar(x, [volumes[v]["slices"] for v in ids], color="0.8", label="slices")
    ax.bar(x, [volumes[v]["liver_slices"] for v in ids], color="tab:green", label="with liver")
    if tumour_known:
        ax.bar(x, [volumes[v]["tumour_slices"] for v in ids], color="tab:red", label="with tumour")
    ax.set_xticks(x, ids, rotation=90 if len(ids) > 12 else 0)
    ax.set_xlabel("volume")
    ax.set_ylabel("slices")
    ax.legend()
    save_figure(fig, out / "per_volume.png")

    # -- tumour sizes: connected components on the tumour slices ------------------------------------------------
    tumour_rows = [r for r in labelled if r["tumor_pixels"]]
    tumour_rows = [tumour_rows[i] for i in sorted(rng.permutation(len(tumour_rows))[:max(max_images, 1000)])]
    areas_px, areas_mm2 = [], []
    for r in tumour_rows:
        components, n = ndimage.label(tumour_mask(read_mask(r["mask"])))
        sizes = np.bincount(components.ravel())[1:]
        areas_px += sizes.tolist()
        if np.isfinite(_area_mm2(r)):
            areas_mm2 += (sizes * _area_mm2(r)).tolist()
    tumour_sizes = None
    if areas_px:
        use_mm = len(areas_mm2) == len(areas_px)
        areas = np.array(areas_mm2 if use_mm else areas_px)
        unit = "mm²" if use_mm else "pixels"
        tumour_sizes = {"unit": unit, "lesion_sections": int(areas.size), "sampled_slices": len(tumour_rows),
                        "median": round(float(np.median(areas)), 2), "p10": round(float(np.percentile(areas, 10)), 2),
                        "p90": round(float(np.percentile(areas, 90)), 2), "max": round(float(areas.max()), 2)}
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(areas, bins=np.geomspace(max(areas.min(), 1e-2), areas.max() * 1.01, 30), color="tab:red")
        ax.set_xscale("log")
        ax.set_xlabel(f"tumour cross-section area per slice ({unit})")
        ax.set_ylabel("tumour sections")
        ax.set_title("Tumour sizes (connected components per slice)")
        save_figure(fig, out / "tumour_sizes.png")

    # -- sample pictures: tumour, liver only, empty -------------------------------------------------------------
    groups = {
        "tumour": [r for r in labelled if r["tumor_pixels"]],
        "liver": [r for r in labelled if r["liver_pixels"] and not r["tumor_pixels"]],
        "empty": [r for r in labelled if not r["liver_pixels"]],
    }
    if not labelled:
        groups = {"unlabelled": rows}
    picks = []
    for name, members in groups.items():
        for i in rng.permutation(len(members))[:4]:
            picks.append((name, members[i]))
    if picks:
        cols = 4
        n_rows = (len(picks) + cols - 1) // cols
        fig, axes = plt.subplots(n_rows, cols, figsize=(3.2 * cols, 3.4 * n_rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (name, r) in zip(axes.flat, picks):
            image = _read_slice(r["image"])
            ax.imshow(overlay(image, read_mask(r["mask"]) if r["mask"] else None))
            ax.set_title(f"{name}: volume {r['volume_id']} slice {r['slice_index']}", fontsize=8)
        fig.suptitle("Samples (liver green, tumour red)")
        save_figure(fig, out / "samples.png")

    sources = source_groups(read_grey_levels(slices_dir))
    summary = {
        "slices_dir": str(Path(slices_dir).resolve()),
        "sources": sources, "source_warning": disagreeing_sources(sources),
        "slices": len(rows), "volumes": len(volumes), "labelled_slices": len(labelled),
        "slices_with_liver": sum(bool(r["liver_pixels"]) for r in labelled),
        "slices_with_tumour": sum(bool(r["tumor_pixels"]) for r in labelled) if tumour_known else None,
        "volumes_with_tumour": sum(v["tumour_slices"] > 0 for v in volumes.values()) if tumour_known else None,
        "pixels": pixels, "tumour_sizes": tumour_sizes,
        "per_volume": {vid: {k: v for k, v in d.items()} for vid, d in volumes.items()},
    }
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "report.md", _report(summary, tumour_sizes is not None, bool(picks)))
    return summary


def _report(s: dict, has_tumour_figure: bool, has_samples: bool) -> str:
    tumour = "unknown (masks merge liver and tumour)" if s["slices_with_tumour"] is None else s["slices_with_tumour"]
    p = s["pixels"]
    lines = ["# Slice set report", "", f"Slice set: `{s['slices_dir']}`", ""]
    if s["source_warning"]:
        lines += [f"> **WARNING: {s['source_warning']}**", ""]
    lines += [
        "| | |", "|---|---|",
        f"| volumes | {s['volumes']} |", f"| slices | {s['slices']} ({s['labelled_slices']} with a mask) |",
        f"| slices with liver | {s['slices_with_liver']} |", f"| slices with tumour | {tumour} |",
        f"| volumes with tumour | {s['volumes_with_tumour'] if s['volumes_with_tumour'] is not None else 'unknown'} |",
        f"| pixel range (sampled) | {p['min']}..{p['max']}, mean {p['mean']}, std {p['std']} |",
        f"| image sizes | {', '.join(f'{k} ({v})' for k, v in p['shapes'].items())} |",
        "", "## Intensities", "", "![intensity histogram](intensity_histogram.png)", "",
        "## Liver and tumour per volume", "", "![per volume](per_volume.png)", "", "Table: `per_volume.csv`.", "",
    ]
    if s["sources"]:
        lines += ["## Sources", "", f"Median grey level inside the liver per source (0..255); sources more than "
                  f"{LIVER_GREY_MARGIN} apart were not windowed alike.", "",
                  "| source | window | volumes | liver median grey |", "|---|---|---|---|"]
        for name, g in s["sources"].items():
            median = "n/a" if g["liver_median"] is None else f"{g['liver_median']:.0f}"
            lines.append(f"| {name} | {g['window']} | {len(g['volumes'])} | {median} |")
        lines += [""]
    if has_tumour_figure:
        t = s["tumour_sizes"]
        lines += ["## Tumour sizes", "", f"Median cross-section {t['median']} {t['unit']} (10th-90th percentile "
                  f"{t['p10']}-{t['p90']}), over {t['lesion_sections']} sections.", "", "![tumour sizes](tumour_sizes.png)", ""]
    if has_samples:
        lines += ["## Samples", "", "![samples](samples.png)", ""]
    return "\n".join(lines)
