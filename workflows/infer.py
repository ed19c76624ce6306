"""One-line inference, the reference's ``python inference.py --image new_ct.jpg --model unet_liver_final.pth``.

``python -m workflows.infer --input IMAGE_OR_SCAN [--model WEIGHTS] [--output DIR] [--target liver|tumor|both]
[--channels 64 128 256 512] [--spatial-size 256] [--min-tumour-mm3 500] [--no-flip-check] [--shard I/N]
[--overwrite]``

IMAGE_OR_SCAN is one 2D slice (PNG/JPG, windowed like the Kaggle export), a NIfTI file, a DICOM series folder, or a
folder of those. Without ``--model`` it runs the model a training wrote into the bundle's ``models/`` folder, else the
weights the bundle ships (``models/shipped/model.pt``, sha256 checked); the log says which. WEIGHTS is a
``model.pt``, a training checkpoint, the reference project's own
state_dict, or a TorchScript ``.ts`` from ``ckpt_export``. A model.pt from training carries its settings (widths,
size, target, window), so no flag is needed; for other weights the defaults are the reference's network (full width
at 256x256, liver), and a flag that contradicts the model file is refused. It runs the bundle's ``inference`` workflow with these settings, so the image path is the
bundle's (``--image`` is the old spelling of ``--input``). A rerun skips the scans already segmented into the
output (``--overwrite`` segments them again); ``--shard I/N`` segments share I of N of the scans, for N machines
writing one output folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from workflows.command_line import TARGETS, add_threads, interruptible, USER_ERRORS, error_line


@interruptible
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.infer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", "--image", dest="input", required=True,
                        help="2D slice, NIfTI file, DICOM series folder, or a folder of them (--image: old spelling)")
    parser.add_argument("--model", help="model.pt, a training checkpoint, or the reference's .pth (default: the bundle's "
                                        "models/model.pt where a training wrote one, else its shipped weights)")
    parser.add_argument("--output", default="predictions", help="output folder (default ./predictions)")
    parser.add_argument("--target", choices=TARGETS, help="what the model was trained for (default: what the model "
                                                          "file records, else liver)")
    parser.add_argument("--channels", type=int, nargs=4, help="network widths (default: the model file's, else "
                                                              "64 128 256 512)")
    parser.add_argument("--spatial-size", type=int, help="size the network was trained at (default: the model "
                                                         "file's, else 256)")
    parser.add_argument("--min-tumour-mm3", type=float,
                        help="tumours smaller than this become liver (default 500 mm³, about a 10 mm sphere)")
    parser.add_argument("--flip-check", action=argparse.BooleanOptionalAction,
                        help="keep only the tumours the tumour stage also marks with the scan mirrored front to "
                             "back (default: on; --no-flip-check keeps every tumour it marks)")
    parser.add_argument("--deidentify", action="store_true",
                        help="outputs named scan-001, ... and no file names, series notes or DICOM SEG in them")
    parser.add_argument("--shard", metavar="I/N", help="segment share I of N of the scans (N machines, one output)")
    parser.add_argument("--overwrite", action="store_true", help="segment again the scans a run before finished")
    add_threads(parser)
    args = parser.parse_args(argv)

    from workflows.bundle import run_workflow  # after --help: the bundle's imports take seconds
    from workflows.inference import SomeScansFailed

    settings = {"input": args.input, "output_dir": args.output, **({"ckpt_file": args.model} if args.model else {}),
                "deidentify": args.deidentify, "threads": args.threads,
                "shard": args.shard, "overwrite": args.overwrite}
    given = {"target": args.target, "spatial_size": args.spatial_size, "min_tumour_mm3": args.min_tumour_mm3,
             "flip_check": args.flip_check,
             "network_def#channels": list(args.channels) if args.channels else None}
    settings.update({key: value for key, value in given.items() if value is not None})  # else the model file's
    try:
        rows = run_workflow("inference", ["inference"], "infer", **settings)[0]
    except SomeScansFailed as err:  # the others were segmented: list them all
        rows = err.rows
    except USER_ERRORS as err:
        parser.exit(2, error_line(err))
    for row in rows:
        if row.get("error"):
            print(f"{row['scan']}: FAILED: {row['error']}")
            continue
        if row.get("skipped"):
            print(f"{row['scan']}: left out ({row['skipped']})")
            continue
        print(f"{row['scan']} -> {row['segmentation']}"
              + (f" (liver {_amount(row['liver_ml'])}, tumour {_amount(row['tumour_ml'])})" if "liver_ml" in row else ""))
    print(f"summary: {Path(args.output) / 'summary.csv'}")
    return 1 if any(row.get("error") for row in rows) else 0


def _amount(volume) -> str:
    return volume if isinstance(volume, str) else f"{volume} mL"


if __name__ == "__main__":
    sys.exit(main())
