"""Patient-level split and balanced training chunks, as MONAI datalists.

``python -m workflows.split --input SLICES_DIR [--input SLICES_DIR2 ...] --output LISTS_DIR [--target liver|tumor|both]
[--positives 10000 --negatives 10000] [--val-fraction 0.2] [--test-fraction 0] [--chunk-size 2000] [--seed 0]
[--val-volumes ID,..] [--test-volumes ID,..] [--groups FILE]``
``python -m workflows.split --from-reference DIR_WITH_chunk_K.txt --images-root KAGGLE_DIR --output LISTS_DIR``

Patients are split first, so a patient's slices never sit in two splits: a volume's patient is what ``--groups``
says, else the DICOM PatientID conversion recorded, else the volume itself. Patients with tumour are spread over
the splits in proportion. From the training volumes it samples positive (target present) and negative slices, as
the reference did (10,000 + 10,000 in chunks of 2,000); when one kind is scarcer than asked, all of it is used and
the other kind is not shrunk to match (it says so). For ``--target both``, up to half the positives are slices with
tumour. It writes ``chunk_<k>.json`` (``{"training": [...]}``), ``val.json`` (every slice of the
validation volumes, for honest metrics), ``val_balanced.json`` (the reference's balanced validation list),
``test.json`` when asked, and ``split.json`` (volumes per split, seed, counts). Entries are
``{"image", "label", "volume_id", "slice_index", "positive"}`` with paths relative to LISTS_DIR, the form
``monai.data.load_decathlon_datalist`` reads. Same seed and data, same files.

``--from-reference`` imports the reference project's own lists instead (its Windows paths mapped by file name into
KAGGLE_DIR; ``val*.txt`` becomes the validation list) and reports its patient leak: volumes in training and
validation, and validation slices with a neighbouring slice in training.
"""

from __future__ import annotations

import argparse
import sys

import json
from pathlib import Path

from workflows.command_line import TARGETS, add_output, interruptible, USER_ERRORS, error_line


def _ids(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


@interruptible
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.split", description=__doc__.split("\n\n")[0])
    parser.add_argument("slices_dir", nargs="?", help=argparse.SUPPRESS)  # the old positional spelling, until 0.3
    parser.add_argument("--input", action="append", help="slice set made by workflows.convert (holds manifest.csv); "
                                                         "repeat it to split several slice sets together")
    add_output(parser, "folder for chunk_<k>.json, val.json, ... split.json", required=True)
    parser.add_argument("--target", choices=TARGETS, default="liver",
                        help="what the model learns: liver, tumor, or both as two channels (default liver); "
                             "a positive slice holds the target (for both: liver)")
    parser.add_argument("--positives", type=int, default=10_000, help="positive training slices (default 10000)")
    parser.add_argument("--negatives", type=int, default=10_000, help="negative training slices (default 10000)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of volumes for validation (0.2)")
    parser.add_argument("--test-fraction", type=float, default=0.0, help="share of volumes for testing (0)")
    parser.add_argument("--chunk-size", type=int, default=2_000, help="training slices per chunk (default 2000)")
    parser.add_argument("--val-balanced", type=int, default=2_000, help="slices in val_balanced.json (default 2000)")
    parser.add_argument("--val-volumes", help="comma-separated volume ids to validate on (instead of a fraction)")
    parser.add_argument("--test-volumes", help="comma-separated volume ids to test on (instead of a fraction)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the sampling (default 0)")
    parser.add_argument("--groups", help="CSV (volume_id,patient_id) or JSON mapping volume ids to patients, so the "
                                         "volumes of one patient stay in one split (DICOM PatientID is used anyway)")
    parser.add_argument("--from-reference", metavar="DIR", help="import the reference project's chunk_<k>.txt (and "
                                                               "val*.txt) lists instead of splitting; needs --images-root")
    parser.add_argument("--images-root", help="the Kaggle folder (train_images/, train_masks/) those lists name")
    args = parser.parse_args(argv)
    from workflows.data.splitting import plan_split, read_groups, write_split  # after --help

    if args.from_reference:
        return _import_reference(parser, args)
    given = (args.input or []) + ([args.slices_dir] if args.slices_dir else [])
    if not given or (args.input and args.slices_dir):
        parser.error("give the input as --input PATH (repeated for several slice sets)")
    from workflows.data.slice_set import read_slice_sets

    try:
        rows = read_slice_sets(given)
        conversions = [json.loads((Path(d) / "convert.json").read_text()) for d in given
                       if (Path(d) / "convert.json").exists()]
        plan = plan_split(rows, args.target, args.positives, args.negatives, args.val_fraction, args.test_fraction,
                          args.chunk_size, args.seed, args.val_balanced, _ids(args.val_volumes), _ids(args.test_volumes),
                          conversions, read_groups(args.groups) if args.groups else None)
        write_split(plan, args.output, given)
    except USER_ERRORS as err:
        parser.exit(2, error_line(err))
    for message in plan.messages:
        print(message)
    c = plan.counts
    print(f"volumes: {c['volumes']['train']} train, {c['volumes']['val']} val, {c['volumes']['test']} test "
          f"(seed {plan.seed})")
    print(f"training: {c['train_used']['positive']} positive + {c['train_used']['negative']} negative slices in "
          f"{len(plan.chunks)} chunk(s) of {', '.join(map(str, c['chunk_sizes']))}")
    print(f"validation: {c['val_slices']} slices in val.json, {2 * c['val_balanced']['positive']} in val_balanced.json")
    print(f"wrote {Path(args.output) / 'split.json'}")
    return 0


def _import_reference(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from workflows.data.reference_lists import import_reference_lists

    if not args.images_root:
        parser.error("--from-reference needs --images-root KAGGLE_DIR (the folder its paths point into)")
    try:
        report = import_reference_lists(args.from_reference, args.images_root, args.output)
    except USER_ERRORS as err:
        parser.exit(2, error_line(err))
    leak = report["leak"]
    print(f"imported {len(report['chunks'])} chunk(s) of {', '.join(map(str, report['chunks']))} slices and "
          f"{report['validation_slices']} validation slices into {args.output}")
    if leak["volumes_in_training_and_validation"]:
        print(f"LEAK: {leak['volumes_in_training_and_validation']} of the {leak['of_validation_volumes']} validation "
              f"volumes also train, and {leak['validation_slices_with_a_neighbour_in_training']} validation slices have "
              "a neighbouring slice in training: scores on this validation list overstate how the model does on new "
              "patients. For honest numbers, split by patient: python -m workflows.split --input SLICES ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
