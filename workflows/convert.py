"""Raw scans (LiTS / MSD NIfTI, DICOM series) or a 2D set (Kaggle JPGs) to a slice set with a manifest.

``python -m workflows.convert --input IN --output OUT [--label SEG] [--label-map 5:1] [--target liver|tumor|both]
[--window abdomen | --window-hu LO HI] [--format png|jpg] [--workers N] [--size S] [--shard I/N | --merge]``

OUT gets ``images/volume-<id>_slice_<k>.<fmt>`` (8-bit, windowed like the Kaggle JPGs), ``masks/...png``
(lossless LiTS labels: 0 background, 1 liver, 2 tumour; ``--target liver`` merges tumour into liver, ``--target
tumor`` keeps only tumour as 2), ``manifest.csv`` and ``convert.json`` (the settings). Slices are taken in the
canonical orientation (``transforms.CANONICAL_AXCODES``: radiological view, slice 0 most inferior) with the same
loading and windowing that training and inference use.

Labels: LiTS ``segmentation-<id>`` beside ``volume-<id>``, MSD ``labelsTr``, a NIfTI inside a DICOM series folder,
or DICOM SEG objects made by other tools beside (or inside) a series folder, paired by the series they reference
(else by name), frames placed by position, segments mapped by label or SNOMED code (liver 1; tumour, lesion,
neoplasm, mass 2), the mapping printed. A study folder's unlabelled series are left out with a note. 2D sets whose
masks use other values take ``--label-map`` (``127:1,255:2``); grey slices saved as RGB are read as grey.

A volume is complete when all its slices and its manifest rows (``.parts/volume-<id>.csv``, written last) are
on disk; a rerun skips complete volumes, so an interrupted run carries on. A bad volume is reported with the
reason and skipped; the exit code is 1 if any failed.

Several machines (or processes) fill one shared OUT with ``--shard I/N`` each (share I of N: every N-th volume in
id order); the last shard to finish writes the manifest, the same bytes one unsharded run writes. ``--merge`` (same
options, no ``--shard``) writes the manifest from the volumes complete so far and names the missing ones.
"""

from __future__ import annotations

import argparse
import sys

from workflows.command_line import TARGETS, add_output, add_threads, interruptible, USER_ERRORS, error_line


@interruptible
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.convert", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="folder of scans or a 2D set, one NIfTI file, or one DICOM series folder")
    add_output(parser, "slice set folder to write (images/, masks/, manifest.csv)", old=(), required=True)
    parser.add_argument("--label", help="label NIfTI for a single --input scan")
    parser.add_argument("--label-map", help="map another label scheme to LiTS, e.g. 5:1 (TotalSegmentator liver) or "
                                            "127:1,255:2 (2D masks: liver 127, lesion 255); for volumes, values not "
                                            "named become background; for 2D masks, other values are refused")
    parser.add_argument("--target", choices=TARGETS, default="both",
                        help="what masks keep: liver (tumour merged in), tumor, or both LiTS labels (default)")
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--window", default="abdomen", help="HU window preset (default abdomen: -160..240 HU)")
    window.add_argument("--window-hu", nargs=2, type=float, metavar=("LO", "HI"), help="explicit HU window")
    parser.add_argument("--format", choices=("png", "jpg"), help="image format (default png; a 2D set keeps its own)")
    parser.add_argument("--workers", type=int, default=1, help="volumes converted in parallel (default 1)")
    parser.add_argument("--size", type=int, help="resize slices to SIZE x SIZE (default: keep the scan's matrix)")
    parser.add_argument("--grey-scale", type=float, metavar="F",
                        help="2D sets only: multiply the grey levels by F (air stays 0), for a set exported in another "
                             "window (the conversion's warning names the factor that matches the other sources' liver)")
    sharing = parser.add_mutually_exclusive_group()
    sharing.add_argument("--shard", metavar="I/N", help="convert share I of N of the volumes (N machines, one output)")
    sharing.add_argument("--merge", action="store_true", help="convert nothing: write the manifest of the volumes "
                                                              "the shards completed, naming the missing ones")
    add_threads(parser)
    args = parser.parse_args(argv)
    # the library (torch, MONAI: seconds of imports) only after --help and argument errors
    from transforms import parse_label_map, window_range
    from workflows.data.conversion import ConvertSettings, convert
    from workflows.machine.shards import parse_shard
    from workflows.machine.threads import set_threads

    try:
        set_threads(args.threads, max(1, args.workers))
        settings = ConvertSettings(
            target=args.target, window=None if args.window_hu else args.window,
            window_hu=tuple(args.window_hu) if args.window_hu else None, format=args.format, size=args.size,
            label_map=parse_label_map(args.label_map) if args.label_map else None, grey_scale=args.grey_scale,
        )
        window_range(settings.window, settings.window_hu)
        if args.size is not None and args.size < 8:
            raise ValueError(f"--size must be at least 8, got {args.size}.")
        shard = parse_shard(args.shard) if args.shard else None
        summary = convert(args.input, args.output, settings, args.label, args.workers, shard=shard, merge=args.merge)
    except USER_ERRORS as err:
        parser.exit(2, error_line(err))
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
