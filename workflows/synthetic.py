"""Generated LiTS-like CT volumes, the built-in data for tests and the quickstart.

``python -m workflows.synthetic --output DIR --cases N --seed S [--size 512] [--slices K] [--dicom]`` writes
``volume-<i>.nii.gz`` (int16 HU) and ``segmentation-<i>.nii.gz`` (uint8: 0 background, 1 liver, 2 tumour) as
LiTS ships them, and with ``--dicom`` each volume also as a CT series in ``DIR/dicom/volume-<i>/`` with its
label beside it (``DIR/dicom/segmentation-<i>.nii.gz``).

See :mod:`workflows.data.synthetic_cases` for what a case holds.
"""

from __future__ import annotations

import argparse
import sys

from workflows.command_line import add_output, interruptible


@interruptible
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.synthetic", description=__doc__.split("\n\n")[0])
    add_output(parser, "folder to write volume-<i>.nii.gz / segmentation-<i>.nii.gz into", required=True)
    parser.add_argument("--cases", type=int, default=3, help="number of cases (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed: same seed, same bytes (default 0)")
    parser.add_argument("--size", type=int, default=512, help="in-plane pixels, a multiple of 8 (default 512)")
    parser.add_argument("--slices", type=int, default=None, help="slices per case (default: from a 0.7-5 mm thickness)")
    parser.add_argument("--dicom", action="store_true", help="also write each volume as a DICOM CT series")
    args = parser.parse_args(argv)
    from workflows.data.synthetic_cases import generate_dataset  # after --help
    if args.cases < 1 or args.size < 16 or args.size % 8 or (args.slices is not None and args.slices < 1):
        parser.error(f"need --cases >= 1, --size a multiple of 8 >= 16, --slices >= 1; got "
                     f"--cases {args.cases} --size {args.size} --slices {args.slices}")
    generate_dataset(args.output, args.cases, args.seed, args.size, args.slices, args.dicom)
    print(f"wrote {args.cases} case(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
