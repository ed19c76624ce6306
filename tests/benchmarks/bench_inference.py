"""Inference time for a 512x512x200 generated volume at full width, from the checkpoint and from TorchScript.

    python -m tests.benchmarks.bench_inference [--work /tmp/bench_inference] [--slices 200] [--repeats 2]

The network has the bundle's default width (channels 64-128-256-512) at 256x256 with random weights (the time
does not depend on them); the bundle's whole inference workflow is timed (building it included): loading the NIfTI, canonical orientation, windowing,
SliceInferer in batches of 8, resizing back, post-processing, writing the mask on the scan's grid and the overlay.
Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ckpt_export

from networks import ThreeLevelUNet
from workflows.bundle import config_file, run_workflow
from workflows.synthetic_cases import generate_dataset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/bench_inference")
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = Path(args.work)
    scan = work / "raw" / "volume-0.nii.gz"
    if not scan.exists():
        generate_dataset(work / "raw", cases=1, seed=0, size=512, slices=args.slices, progress=False)
    torch.manual_seed(0)
    weights = work / "model.pt"
    torch.save(ThreeLevelUNet().state_dict(), weights)
    ckpt_export("network_def", filepath=str(work / "model.ts"), ckpt_file=str(weights),
                config_file=config_file("inference"), meta_file=config_file("metadata"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 512x512x{args.slices} volume, full width at 256x256")
    for label, ckpt in (("checkpoint model.pt", weights), ("TorchScript model.ts", work / "model.ts")):
        for repeat in range(args.repeats):
            started = time.perf_counter()
            run_workflow("inference", ["inference"], "infer", input=str(scan), output_dir=str(work / "out"),
                         ckpt_file=str(ckpt))
            seconds = time.perf_counter() - started
            print(f"{label}, run {repeat + 1}: {seconds:.1f} s, {args.slices / seconds:.2f} slices/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
