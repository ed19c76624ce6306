"""Conversion throughput: slices/s with 1 and 2 workers on generated 512x512 volumes, and peak memory per worker;
``--quick``: the conversion against a minimal nibabel + numpy + OpenCV loop doing the same work, side by side.

    python -m tests.benchmarks.bench_convert [--cases 8] [--slices 100] [--work /tmp/bench_convert]
    python -m tests.benchmarks.bench_convert --quick [--pairs 3]

Each full run converts as its own `python -m workflows.convert` process, as a user runs it; the figures come from
its own summary line. ``--quick`` converts one labelled 512x512x120 volume in this process with
``workflows.data.conversion.convert`` (one worker) and with the minimal loop (load image and label, reorient to the
canonical orientation, window to 8 bits, write each slice and mask as PNG with OpenCV's default settings, as the
conversion does), alternating ``--pairs`` times, and ends
with ``speedup=<median ratio of the loop's time to the conversion's>`` (1.0: as fast as the loop). Not a test: it
prints figures.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def plain_loop(image_path: Path, label_path: Path, out: Path) -> int:
    """The minimal conversion: nibabel, numpy and OpenCV (its default PNG settings, as the conversion uses), no
    checks, no manifest."""
    import cv2
    import nibabel as nib
    import numpy as np

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    image, label = nib.load(image_path), nib.load(label_path)
    transform = nib.orientations.ornt_transform(nib.io_orientation(image.affine), nib.orientations.axcodes2ornt("PLS"))
    hu = nib.orientations.apply_orientation(np.asanyarray(image.dataobj), transform)
    labels = nib.orientations.apply_orientation(np.asanyarray(label.dataobj), transform).astype(np.uint8)
    grey = np.clip(np.floor((hu.astype(np.float32) + 160) / 400 * 255 + 0.5), 0, 255).astype(np.uint8)
    for k in range(grey.shape[2]):
        cv2.imwrite(str(out / "images" / f"volume-0_slice_{k}.png"), np.ascontiguousarray(grey[:, :, k]))
        cv2.imwrite(str(out / "masks" / f"volume-0_slice_{k}.png"), np.ascontiguousarray(labels[:, :, k]))
    return grey.shape[2]


def quick(work: Path, pairs: int) -> int:
    import statistics

    from workflows.data.conversion import convert
    from workflows.data.synthetic_cases import generate_dataset

    raw = work / "quick_raw"
    if not (raw / "volume-0.nii.gz").exists():
        generate_dataset(raw, cases=1, seed=0, size=512, slices=120, progress=False)
    times: dict[str, list[float]] = {"conversion": [], "loop": []}
    for pair in range(pairs):
        for name in ("conversion", "loop"):
            out = work / f"quick_{name}"
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            if name == "conversion":
                slices = convert(raw, out, progress=False).slices
            else:
                slices = plain_loop(raw / "volume-0.nii.gz", raw / "segmentation-0.nii.gz", out)
            times[name].append(time.perf_counter() - started)
        print(f"pair {pair + 1}: conversion {times['conversion'][-1]:.2f} s, loop {times['loop'][-1]:.2f} s "
              f"({slices} slices)", flush=True)
    conversion, loop = statistics.median(times["conversion"]), statistics.median(times["loop"])
    print(f"median: conversion {conversion:.2f} s ({slices / conversion:.1f} slices/s), minimal loop {loop:.2f} s "
          f"({slices / loop:.1f} slices/s)")
    print(f"speedup={statistics.median(b / a for a, b in zip(times['conversion'], times['loop'])):.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--work", default="/tmp/bench_convert")
    parser.add_argument("--quick", action="store_true", help="one volume, against a minimal loop, side by side")
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    work = Path(args.work)
    if args.quick:
        return quick(work, args.pairs)
    raw = work / "raw"
    if not (raw / f"volume-{args.cases - 1}.nii.gz").exists():
        subprocess.run([sys.executable, "-m", "workflows.synthetic", "--output", str(raw), "--cases", str(args.cases),
                        "--seed", "0", "--size", "512", "--slices", str(args.slices)], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    total = args.cases * args.slices
    print(f"{args.cases} generated volumes of 512x512x{args.slices} ({total} slices)")
    for workers in (1, 2):
        out = work / f"slices_{workers}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.time()
        result = subprocess.run([sys.executable, "-m", "workflows.convert", "--input", str(raw), "--output", str(out),
                                 "--workers", str(workers)], cwd=REPO, capture_output=True, text=True, check=True)
        seconds = time.time() - started
        peak = re.search(r"peak memory per worker (\d+) MiB", result.stdout)
        print(f"workers {workers}: {seconds:.1f} s wall (process start included), {total / seconds:.1f} slices/s, "
              f"peak memory per worker {peak.group(1) if peak else '?'} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
