"""The GPU path, checked and measured on a CUDA machine: full-width training images/s and whole-workflow inference
slices/s, fp32 against mixed precision (``--precision auto``: bf16 autocast where the GPU computes bf16), and a GPU
prediction compared with the CPU one on a generated scan.

    python -m tests.benchmarks.gpu_check [--pairs 3] [--steps 10] [--slices 64]
    python -m tests.benchmarks.gpu_check --device cpu --pairs 1 --steps 2 --slices 8   # the script itself, on a CPU

Prints the card, each figure with its median over ``--pairs`` alternating pairs, ``speedup=`` lines, and
``agreement:`` lines (Dice of the liver masks, GPU against CPU, fp32 and mixed precision). Ends with status 2 and one
line where no CUDA device is present. Not a test: it prints figures (a few minutes on one GPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training(device, pairs: int, steps: int, batch: int) -> None:
    """Full width (64-512) at 256x256: training steps through the bundle's AutocastInferer, fp32 against auto."""
    import torch

    from networks import BCEDiceLoss, ThreeLevelUNet
    from workflows.machine.precision import AutocastInferer, choose_precision

    torch.manual_seed(0)
    x = torch.rand(batch, 1, 256, 256, device=device)
    y = (torch.rand(batch, 1, 256, 256, device=device) > 0.5).float()
    networks = {name: ThreeLevelUNet().to(device) for name in ("fp32", "auto")}
    optimizers = {name: torch.optim.Adam(net.parameters(), 1e-4) for name, net in networks.items()}
    inferers = {name: AutocastInferer(name, device) for name in networks}
    loss = BCEDiceLoss()

    def run(name: str, count: int) -> float:
        _sync(device)
        started = time.perf_counter()
        for _ in range(count):
            optimizers[name].zero_grad()
            loss(inferers[name](x, networks[name]), y).backward()
            optimizers[name].step()
        _sync(device)
        return time.perf_counter() - started

    for name in networks:
        run(name, 2)  # warm-up: cuDNN's algorithm search, allocator
    times: dict[str, list[float]] = {"fp32": [], "auto": []}
    for _ in range(pairs):
        for name in times:
            times[name].append(run(name, steps) / steps)
    auto = choose_precision("auto", device)
    print(f"training, full width 256x256, batch {batch}: fp32 {batch / statistics.median(times['fp32']):.1f} images/s, "
          f"auto ({auto}) {batch / statistics.median(times['auto']):.1f} images/s")
    print(f"speedup={statistics.median(a / b for a, b in zip(times['fp32'], times['auto'])):.2f} (training)")


def inference(device, pairs: int, slices: int, work: Path) -> None:
    """The bundle's inference workflow on a generated 512x512 scan: fp32 against auto, then the masks against the
    CPU's."""
    import nibabel as nib
    import numpy as np
    import torch

    from networks import ThreeLevelUNet
    from workflows.bundle import run_workflow
    from workflows.data.synthetic_cases import generate_case
    from workflows.engine.volume_metrics import overlap_metrics

    case = generate_case(0, seed=5, size=512, slices=slices)
    nib.save(case.stored_image(case.hu), work / "scan.nii.gz")
    torch.manual_seed(0)
    network = ThreeLevelUNet()
    with torch.no_grad():  # a mask over part of the body: untrained weights, the bias set at the median logit
        grey = torch.as_tensor(np.clip((case.hu[..., slices // 2].astype(np.float32) + 160) / 400, 0, 1))
        small = torch.nn.functional.interpolate(grey[None, None], size=(256, 256), mode="bilinear")
        network.final.bias.sub_(float(network(small).median()))
    torch.save(network.state_dict(), work / "model.pt")

    def segment(name: str, device_text: str, precision: str) -> tuple[float, np.ndarray]:
        out = work / f"{name}_{time.time_ns()}"
        started = time.perf_counter()
        run_workflow("inference", ["inference"], "infer", input=str(work / "scan.nii.gz"), output_dir=str(out),
                     ckpt_file=str(work / "model.pt"), device=f"$torch.device('{device_text}')",
                     precision=precision, largest_liver=False, min_tumour_mm3=0)
        seconds = time.perf_counter() - started
        return seconds, np.asarray(nib.load(out / "scan_seg.nii.gz").dataobj) >= 1

    device_text = str(device)
    segment("warm", device_text, "fp32")
    times: dict[str, list[float]] = {"fp32": [], "auto": []}
    masks = {}
    for _ in range(pairs):
        for precision in times:
            seconds, masks[precision] = segment(precision, device_text, precision)
            times[precision].append(seconds)
    print(f"inference, 512x512x{slices}, whole workflow: fp32 {slices / statistics.median(times['fp32']):.1f} "
          f"slices/s, auto {slices / statistics.median(times['auto']):.1f} slices/s")
    print(f"speedup={statistics.median(a / b for a, b in zip(times['fp32'], times['auto'])):.2f} (inference)")
    _, on_cpu = segment("cpu", "cpu", "fp32")
    for precision, mask in masks.items():
        dice = overlap_metrics(mask, on_cpu)["dice"]
        differing = int(np.count_nonzero(mask != on_cpu))
        print(f"agreement: {device_text} {precision} against cpu fp32: liver Dice {dice:.5f}, {differing} voxel(s) differ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu, to try the script itself")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="training steps timed per run")
    parser.add_argument("--batch", type=int, default=8, help="training batch size")
    parser.add_argument("--slices", type=int, default=64, help="slices of the generated 512x512 scan")
    args = parser.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False); run it on a GPU "
              "machine, or pass --device cpu to try the script", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads")
    training(device, args.pairs, args.steps, args.batch)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        inference(device, args.pairs, args.slices, Path(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
