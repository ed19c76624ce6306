"""Look at a slice set before training on it: counts, pixel ranges, liver and tumour distribution, pictures.

``python -m workflows.explore --input SLICES_DIR --output REPORT_DIR [--max-images 400] [--seed 0]`` writes
``summary.json``, ``per_volume.csv``, figures (``intensity_histogram.png``, ``per_volume.png``,
``tumour_sizes.png``, ``samples.png``) and ``report.md`` that shows them.
"""

from __future__ import annotations

import argparse
import sys

from pathlib import Path

from workflows.command_line import add_input, add_output, add_threads, input_of, interruptible, USER_ERRORS, error_line


@interruptible
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.explore", description=__doc__.split("\n\n")[0])
    add_input(parser, "slice set made by workflows.convert (holds manifest.csv)", positional="slices_dir")
    add_output(parser, "report folder", required=True)
    parser.add_argument("--max-images", type=int, default=400, help="slices sampled for pixel statistics (400)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples shown (default 0)")
    add_threads(parser)
    args = parser.parse_args(argv)
    from workflows.data.exploration import explore  # matplotlib, torch: after --help
    from workflows.machine.threads import set_threads

    set_threads(args.threads)
    try:
        summary = explore(input_of(parser, args, "slices_dir"), args.output, args.max_images, args.seed)
    except USER_ERRORS as err:
        parser.exit(2, error_line(err))
    print(f"{summary['volumes']} volume(s), {summary['slices']} slices, {summary['slices_with_liver']} with liver, "
          f"{summary['slices_with_tumour'] if summary['slices_with_tumour'] is not None else 'unknown'} with tumour")
    if summary["source_warning"]:
        print(f"WARNING: {summary['source_warning']}", file=sys.stderr)
    print(f"report: {Path(args.output) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
