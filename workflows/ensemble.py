"""Several model files of one set-up (trained with other seeds) as one model file whose networks vote: inference
averages their logits, stage by stage.

``python -m workflows.ensemble --models A/model.pt B/model.pt [...] --output ENSEMBLE.pt``

The model files must share their networks' settings (architecture, widths, input size, context, target, window; the
tumour stage's too); the file written records ``members`` and the files it came from, and runs through the bundle's
inference (``--ckpt_file ENSEMBLE.pt``, or ``python -m workflows.infer --model ENSEMBLE.pt``) with no other flag.
The real-data recipe trains and averages such networks itself (``--members N``). Measured on its default (``--epochs
6``, seeds 0 and 1): tumour Dice on HCC 2144 and ``crlm_1100`` 0.524 and 0.490 against the single networks' 0.416 and
0.436 (seeds 2 and 3: 0.405 and 0.076 against 0.326 and 0.081), the liver higher, fewer false lesions, at twice the
training and 1.2x the inference command's time (HCC 2144: 18.7-20.2 s against 16.2-16.7 s on 2 cores, Intel Xeon with AMX;
``tests.benchmarks.bench_vote --votes pair``). An existing ``--output`` is never overwritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workflows.command_line import USER_ERRORS, add_output, error_line, interruptible


@interruptible
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, metavar="MODEL",
                        help="model files of one set-up (two or more), e.g. the recipe's models/tumour_on_liver_crop/"
                             "model.pt of two seeds")
    add_output(parser, "model file to write", old=(), required=True)
    args = parser.parse_args(argv)
    output = Path(args.output)
    if output.exists():
        parser.exit(2, f"error: --output {output}: already exists; nothing is overwritten: choose another name or "
                       "move it away.\n")
    from workflows.engine.model_file import combine_model_files  # torch: after --help

    try:
        written = combine_model_files(args.models, output)
    except USER_ERRORS as err:
        parser.exit(2, error_line(err))
    print(f"{written}: {len(args.models)} networks averaged per stage ({', '.join(args.models)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
