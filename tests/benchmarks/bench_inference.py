"""Inference time of the bundle's whole inference workflow at full width: the fp32 path against the fast path
(channels_last, bf16 autocast where the CPU computes bf16 natively), side by side.

    python -m tests.benchmarks.bench_inference [--quick] [--slices 200] [--pairs 3] [--work /tmp/bench_inference]

A generated 512x512 volume (``--slices``; ``--quick``: 40) is segmented by the bundle's ``inference`` workflow
(building it included: loading the NIfTI, canonical orientation, windowing, SliceInferer in batches of 8, resizing
back, post-processing, the mask on the scan's grid and the overlay) with the default network (channels 64-128-256-512
at 256x256), trained for a few steps on generated slices so that its masks are liver-like rather than noise; the
two paths' masks are compared (voxels that differ, Dice between them). The two settings alternate ``--pairs`` times in one process; it prints the median seconds of each
and ends with ``speedup=<median ratio>``. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from networks import BCEDiceLoss, ThreeLevelUNet
from workflows.bundle import run_workflow
from workflows.machine.precision import choose_precision
from workflows.data.synthetic_cases import generate_case
from workflows.engine.volume_metrics import dice_score


def _weights(path: Path, steps: int = 30) -> None:
    """A full-width network trained for a few steps on generated slices (liver-like masks, not noise)."""
    torch.manual_seed(0)
    network = ThreeLevelUNet()
    optimizer, loss = torch.optim.Adam(network.parameters(), 1e-3), BCEDiceLoss()
    case = generate_case(1, seed=3, size=256, slices=24)
    grey = torch.as_tensor(np.clip((case.hu + 160) / 400, 0, 1), dtype=torch.float32)
    label = torch.as_tensor(case.label >= 1, dtype=torch.float32)
    for step in range(steps):
        k = torch.randint(0, grey.shape[2], (2,))
        x, y = grey[:, :, k].permute(2, 0, 1)[:, None], label[:, :, k].permute(2, 0, 1)[:, None]
        optimizer.zero_grad()
        loss(network(x), y).backward()
        optimizer.step()
    torch.save({"model": network.state_dict(), "settings": {"target": "liver", "spatial_size": 256,
                                                            "channels": [64, 128, 256, 512]}}, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/bench_inference")
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="40 slices, 3 pairs (a few minutes on 2 cores)")
    args = parser.parse_args()
    slices = 40 if args.quick else args.slices
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    scan = work / f"volume-{slices}.nii.gz"
    if not scan.exists():
        case = generate_case(0, seed=0, size=512, slices=slices)
        nib.save(case.stored_image(case.hu), scan)
    weights = work / "model.pt"
    if not weights.exists():
        _weights(weights)
    fast = {"precision": "auto", "channels_last": True}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 512x512x{slices} volume, full width at "
          f"256x256; fast path: channels_last, {choose_precision('auto')} (auto on this CPU)")
    times: dict[str, list[float]] = {"fp32": [], "fast": []}
    for pair in range(args.pairs):
        for name, settings in (("fp32", {"precision": "fp32", "channels_last": False}), ("fast", fast)):
            started = time.perf_counter()
            run_workflow("inference", ["inference"], "infer", input=str(scan), output_dir=str(work / name),
                         ckpt_file=str(weights), overwrite=True, **settings)  # each run segments the scan again
            times[name].append(time.perf_counter() - started)
        print(f"pair {pair + 1}: fp32 {times['fp32'][-1]:.1f} s, fast {times['fast'][-1]:.1f} s", flush=True)
    masks = [nib.load(work / name / f"volume-{slices}_seg.nii.gz").get_fdata() > 0 for name in ("fp32", "fast")]
    same = int(np.count_nonzero(masks[0] != masks[1]))
    print(f"median: fp32 {statistics.median(times['fp32']):.1f} s ({slices / statistics.median(times['fp32']):.2f} "
          f"slices/s), fast {statistics.median(times['fast']):.1f} s ({slices / statistics.median(times['fast']):.2f} "
          f"slices/s); masks differ in {same} of {masks[0].size} voxels, Dice between them "
          f"{dice_score(int((masks[0] & masks[1]).sum()), int(masks[1].sum()), int(masks[0].sum())):.4f}")
    print(f"speedup={statistics.median(a / b for a, b in zip(times['fp32'], times['fast'])):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
