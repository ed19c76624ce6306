"""Inference time for a 512x512x200 generated volume at full width, from the checkpoint and from TorchScript.

    python -m tests.benchmarks.bench_inference [--work /tmp/bench_inference] [--slices 200] [--repeats 2]

The network has the bundle's default width (channels 64-128-256-512) at 256x256 with random weights (the time
does not depend on them); the whole path is timed: loading the NIfTI, canonical orientation, windowing,
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
from workflows.inference import ScanInference
from workflows.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "liver_tumor_ct_segmentation" / "configs"


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
                config_file=str(CONFIGS / "inference.json"), meta_file=str(CONFIGS / "metadata.json"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 512x512x{args.slices} volume, full width at 256x256")
    for label, ckpt in (("checkpoint model.pt", weights), ("TorchScript model.ts", work / "model.ts")):
        for repeat in range(args.repeats):
            started = time.perf_counter()
            ScanInference(ThreeLevelUNet(), str(ckpt), str(scan), str(work / "out"), spatial_size=256).run()
            seconds = time.perf_counter() - started
            print(f"{label}, run {repeat + 1}: {seconds:.1f} s, {args.slices / seconds:.2f} slices/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
