"""Patient-level split and balanced training chunks, as MONAI datalists.

``python -m workflows.split --input SLICES_DIR --output LISTS_DIR [--target liver|tumor] [--positives 10000 --negatives 10000]
[--val-fraction 0.2] [--test-fraction 0] [--chunk-size 2000] [--seed 0] [--val-volumes ID,..] [--test-volumes ID,..]``

Volumes (patients) are split first, so a patient's slices never sit in two splits; volumes with tumour are spread
over the splits in proportion. From the training volumes it samples positive (target present) and negative slices,
as the reference did (10,000 + 10,000 in chunks of 2,000); counts larger than the data holds scale down, keeping
the ratio, and say so. It writes ``chunk_<k>.json`` (``{"training": [...]}``), ``val.json`` (every slice of the
validation volumes, for honest metrics), ``val_balanced.json`` (the reference's balanced validation list),
``test.json`` when asked, and ``split.json`` (volumes per split, seed, counts). Entries are
``{"image", "label", "volume_id", "slice_index", "positive"}`` with paths relative to LISTS_DIR, the form
``monai.data.load_decathlon_datalist`` reads. Same seed and data, same files.
"""

from __future__ import annotations

import argparse
import sys

import json
from pathlib import Path

from workflows.command_line import add_input, add_output, input_of, interruptible
from workflows.slice_set import read_manifest
from workflows.splitting import TARGETS, plan_split, write_split


def _ids(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


@interruptible
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.split", description=__doc__.split("\n\n")[0])
    add_input(parser, "slice set made by workflows.convert (holds manifest.csv)", positional="slices_dir")
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
    args = parser.parse_args(argv)
    slices_dir = input_of(parser, args, "slices_dir")
    try:
        rows = read_manifest(slices_dir)
        settings = Path(slices_dir) / "convert.json"
        plan = plan_split(rows, args.target, args.positives, args.negatives, args.val_fraction, args.test_fraction,
                          args.chunk_size, args.seed, args.val_balanced, _ids(args.val_volumes), _ids(args.test_volumes),
                          json.loads(settings.read_text()) if settings.exists() else None)
        write_split(plan, args.output, slices_dir)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
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


if __name__ == "__main__":
    sys.exit(main())
