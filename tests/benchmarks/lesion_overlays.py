"""The real lesions as finished recipe runs segmented them, one row per run: HCC 2144's lesion on three slices (its
upper quarter, middle and lower quarter) and ``crlm_1100``'s on its middle slice, each a close-up around the lesion
(a script that writes a picture, not a test).

``python -m tests.benchmarks.lesion_overlays --data ../shared/data/real --runs DIR [DIR ...] --names NAME [NAME ...]
--output PNG``

Each DIR is a finished ``python -m workflows.realdata`` output (``held_out/hcc_tace_2144_31_EQP_Ax5.00mm/`` and
``other_collections/crlm_1100/`` hold its masks). Green: tumour marked inside the lesion; blue: lesion missed; red:
tumour marked outside it. Grey levels in the abdomen window (-160..240 HU).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np

HCC = ("hcc_tace_2144/31_EQP_Ax5.00mm", "held_out/hcc_tace_2144_31_EQP_Ax5.00mm")
CRLM = ("crlm_1100/ct.nii.gz", "other_collections/crlm_1100")
TILE = 220


def _close_ups(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, slices: list[int], half_side: int) -> list:
    tiles = []
    for z in slices:
        grey = np.clip((image[..., z] + 160) / 400 * 255, 0, 255).astype(np.uint8)
        rgb = np.stack([grey] * 3, -1)
        lesion, marked = truth[..., z] == 2, pred[..., z] == 2
        for where, colour, keep in ((marked & ~lesion, (0, 0, 127), 0.5), (~marked & lesion, (127, 0, 0), 0.5),
                                    (marked & lesion, (0, 100, 0), 0.6)):  # BGR
            rgb[where] = (keep * rgb[where] + colour).astype(np.uint8)
        rows, columns = np.where(lesion)
        cy, cx = int(rows.mean()), int(columns.mean())
        patch = rgb[max(0, cy - half_side):cy + half_side, max(0, cx - half_side):cx + half_side]
        tiles.append(cv2.resize(np.ascontiguousarray(np.rot90(patch)), (TILE, TILE), interpolation=cv2.INTER_NEAREST))
    return tiles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.lesion_overlays", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/real", help="the real samples (../shared/data/real)")
    parser.add_argument("--runs", nargs="+", required=True, help="finished recipe output folders, one row each")
    parser.add_argument("--names", nargs="+", required=True, help="a label per run")
    parser.add_argument("--output", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    if len(args.names) != len(args.runs):
        parser.exit(2, f"error: --names gives {len(args.names)} labels for {len(args.runs)} --runs.\n")
    from transforms import LoadScan
    from workflows.engine.volume_evaluation import load_truth

    data = Path(args.data)
    hcc_image = np.asarray(LoadScan()(str(data / HCC[0]))).squeeze()
    hcc_truth = np.asarray(load_truth(data / HCC[0], LoadScan())).squeeze()
    crlm_image = np.asarray(nib.load(data / CRLM[0]).dataobj).astype(np.float32)
    crlm_truth = np.asarray(nib.load(data / "crlm_1100" / "label.nii.gz").dataobj)
    hcc_z = np.where((hcc_truth == 2).any((0, 1)))[0]
    crlm_z = np.where((crlm_truth == 2).any((0, 1)))[0]
    rows = []
    for run, name in zip(args.runs, args.names):
        hcc_pred = np.asarray(LoadScan()(str(next((Path(run) / HCC[1]).glob("*_seg.nii.gz"))))).squeeze()
        crlm_pred = np.asarray(nib.load(next((Path(run) / CRLM[1]).glob("*_seg.nii.gz"))).dataobj)
        tiles = _close_ups(hcc_image, hcc_truth, hcc_pred, [hcc_z[len(hcc_z) // 4], hcc_z[len(hcc_z) // 2],
                                                             hcc_z[3 * len(hcc_z) // 4]], 45)
        tiles += _close_ups(crlm_image, crlm_truth, crlm_pred, [crlm_z[len(crlm_z) // 2]], 40)
        strip = np.hstack(tiles)
        label = np.zeros((28, strip.shape[1], 3), np.uint8)
        cv2.putText(label, name, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
        rows.append(np.vstack([label, strip]))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.output, np.vstack(rows), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.output}: {len(rows)} run(s), HCC 2144 slices {hcc_z[len(hcc_z) // 4]}, {hcc_z[len(hcc_z) // 2]}, "
          f"{hcc_z[3 * len(hcc_z) // 4]}; crlm_1100 slice {crlm_z[len(crlm_z) // 2]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
