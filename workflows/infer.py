"""One-line inference, the reference's ``python inference.py --image new_ct.jpg --model unet_liver_final.pth``.

``python -m workflows.infer --image IMAGE_OR_SCAN --model WEIGHTS [--output DIR] [--target liver|tumor|both]
[--channels 64 128 256 512] [--spatial-size 256]``

IMAGE_OR_SCAN is one 2D slice (PNG/JPG, windowed like the Kaggle export), a NIfTI file, a DICOM series folder, or a
folder of those. WEIGHTS is the bundle's ``model.pt``, a training checkpoint, or the reference project's own
state_dict. The defaults are the reference's network (full width at 256x256, liver). The same work as the bundle's
``inference`` workflow (``workflows.inference.ScanInference``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from networks import ThreeLevelUNet
from transforms import TARGET_CHANNELS
from workflows.inference import ScanInference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.infer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="2D slice, NIfTI file, DICOM series folder, or a folder of them")
    parser.add_argument("--model", required=True, help="model.pt, a training checkpoint, or the reference's .pth")
    parser.add_argument("--output", default="predictions", help="output folder (default ./predictions)")
    parser.add_argument("--target", choices=list(TARGET_CHANNELS), default="liver", help="what the model was trained for")
    parser.add_argument("--channels", type=int, nargs=4, default=[64, 128, 256, 512], help="network widths")
    parser.add_argument("--spatial-size", type=int, default=256, help="size the network was trained at (256)")
    parser.add_argument("--min-tumour-mm3", type=float, default=10.0, help="drop smaller tumour specks (10 mm³)")
    args = parser.parse_args(argv)
    network = ThreeLevelUNet(out_channels=len(TARGET_CHANNELS[args.target]), channels=args.channels)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    try:
        rows = ScanInference(network, args.model, args.image, args.output, target=args.target,
                             spatial_size=args.spatial_size, device=device, min_tumour_mm3=args.min_tumour_mm3).run()
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    for row in rows:
        if row.get("error"):
            print(f"{row['scan']}: FAILED: {row['error']}")
            continue
        print(f"{row['scan']} -> {row['segmentation']}"
              + (f" (liver {row['liver_ml']} mL, tumour {row['tumour_ml']} mL)" if "liver_ml" in row else ""))
    print(f"summary: {Path(args.output) / 'summary.csv'}")
    return 1 if any(row.get("error") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
