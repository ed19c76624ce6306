"""Conversion throughput: slices/s with 1 and 2 workers on generated 512x512 volumes, and peak memory per worker.

    python -m tests.benchmarks.bench_convert [--cases 8] [--slices 100] [--work /tmp/bench_convert]

Each conversion runs as its own `python -m workflows.convert` process, as a user runs it; the figures come from
its own summary line. Not a test: it prints figures.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--work", default="/tmp/bench_convert")
    args = parser.parse_args()
    work = Path(args.work)
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
