"""A vote at inference, measured on finished recipe runs: each run's model segments its held-out and unseen scans again
through the bundle's ``inference`` workflow with every network pass (both stages) replaced by the average of the
logits of a few transformed copies of the input, each transformed back (a script that prints figures, not a test).

``python -m tests.benchmarks.bench_vote --runs DIR [DIR ...] [--votes none flip_check mirror rotate] [--threads 2]``

- ``none``: one pass (``--flip_check false``);
- ``flip_check``: inference's default: the tumour stage's lesions kept only where its reading of the crop mirrored
  front to back marks them too (:class:`workflows.inference.cascade.TumourStage`);
- ``mirror``: the slice and its front-to-back mirror image (rows: P in the canonical PLS; training never mirrors);
- ``rotate``: the slice and the slice rotated by +-0.12 rad about its centre (inside training's rotation range of
  +-0.26 rad);
- ``pair``: the average of two networks, the run's and its partner's (``--runs`` given in pairs: the same set-up
  trained with two seeds), stage by stage: the model file ``python -m workflows.ensemble`` writes of the two, at twice
  the training; scored once per pair.

Every vote but ``flip_check`` runs with ``--flip_check false``. Each DIR is a finished ``python -m workflows.realdata``
output (``summary.json`` records each scan and its truth). Prints one row per run, scan and vote (liver / tumour Dice, lesions found, false lesions, seconds), then the means
over the runs per scan and vote.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from workflows.machine import precision

ANGLE = 0.12


def _rotated(x: torch.Tensor, angle: float) -> torch.Tensor:
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def voting(forward, vote: str):
    """``InferenceNetwork.forward`` with ``vote``: the mean of the logits of the transformed copies, transformed back."""
    def voted(self, x: torch.Tensor) -> torch.Tensor:
        if vote == "none":
            return forward(self, x)
        if vote == "mirror":
            return (forward(self, x) + forward(self, x.flip(-2)).flip(-2)) / 2
        outs = [forward(self, x)] + [_rotated(forward(self, _rotated(x, a)), -a) for a in (ANGLE, -ANGLE)]
        return torch.stack(outs).mean(0)
    return voted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_vote", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="finished recipe output folders")
    parser.add_argument("--votes", nargs="+", default=["none", "flip_check", "mirror", "rotate"],
                        choices=("none", "flip_check", "mirror", "rotate", "pair"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from workflows.engine.model_file import combine_model_files
    from workflows.recipe.scoring import segment_and_score

    forward = precision.InferenceNetwork.forward
    table: dict[tuple[str, str], list[dict]] = {}
    runs = list(map(Path, args.runs))
    if "pair" in args.votes and len(runs) % 2:
        parser.exit(2, "error: --votes pair takes --runs in pairs (the same set-up, two seeds).\n")
    for index, run in enumerate(runs):
        summary = json.loads((run / "summary.json").read_text())
        partner = runs[index + 1] if index % 2 == 0 and "pair" in args.votes else None
        for name, scores in {**summary["held_out"], **summary.get("other_collections", {})}.items():
            for vote in args.votes:
                if vote == "pair" and partner is None:
                    continue  # the pair was scored with its first run
                precision.InferenceNetwork.forward = forward if vote in ("pair", "flip_check") else voting(forward, vote)
                try:
                    with tempfile.TemporaryDirectory() as work:
                        model = Path(summary["model"])
                        if vote == "pair":
                            other = Path(json.loads((partner / "summary.json").read_text())["model"])
                            model = combine_model_files([model, other], Path(work) / "pair.pt")
                        s = segment_and_score(model, args.threads, Path(scores["scan"]), Path(scores["truth"]),
                                              Path(work) / "out", flip_check=vote == "flip_check")
                finally:
                    precision.InferenceNetwork.forward = forward
                table.setdefault((name, vote), []).append(s)
                print(f"{run.name} {name} {vote}: liver {s['liver_dice']:.3f}, tumour {s['tumour_dice']:.3f}, found "
                      f"{s['lesions_found']} of {s['lesions_true']}, false {s['false_lesions']}, "
                      f"{s['inference_seconds']:.1f} s", flush=True)
    print("\nmeans over the runs")
    for (name, vote), rows in table.items():
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("liver_dice", "tumour_dice", "false_lesions",
                                                                   "inference_seconds")}
        found = sum(r["lesions_found"] for r in rows)
        print(f"{name} {vote}: liver {mean['liver_dice']:.3f}, tumour {mean['tumour_dice']:.3f}, found {found} of "
              f"{sum(r['lesions_true'] for r in rows)}, false {mean['false_lesions']:.1f}, "
              f"{mean['inference_seconds']:.1f} s ({len(rows)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
