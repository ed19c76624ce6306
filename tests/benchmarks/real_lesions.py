"""The real lesions of ../shared/data/real measured (:mod:`workflows.data.lesion_measures`): one table row per
lesion, the ranges the lesion synthesis draws from.

    python -m tests.benchmarks.real_lesions --data ../shared/data/real [--picture OUT.png --slices DIR/slices]

HCC-TACE-Seg patients (DICOM series + SEG, HU), the CRLM test patient (NIfTI, HU; measured for the table, never used
to set the synthesis ranges) and the 2D set (8-bit grey levels, its window unknown; its slices are stacked per case
with the LiTS median spacing assumed, so its sizes are approximate). ``--picture`` draws real lesions beside
synthetic ones (seeded) from the slice sets a recipe run converted (``--slices DIR/slices``). Not a test: it prints
figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _volumes(data: Path):
    from transforms import LoadScan, to_canonical
    from workflows.data.liver_boxes import UNKNOWN_SPACING_MM
    from workflows.data.slice_set import read_grey_slice, read_mask
    from workflows.engine.volume_evaluation import load_truth

    loader = LoadScan(modality=None)
    for folder in sorted(data.glob("hcc_tace_*")):
        for series in sorted(p for p in folder.iterdir() if p.is_dir()):
            if not list(folder.glob(f"{series.name}_*Tumor*.dcm")):
                continue
            image = to_canonical(LoadScan()(series))
            label = to_canonical(load_truth(series, loader))
            yield f"{folder.name} ({series.name[:6]})", "HU", image, label
    crlm = data / "crlm_1100"
    if crlm.is_dir():
        yield "crlm_1100 (test patient)", "HU", to_canonical(loader(crlm / "ct.nii.gz")), \
            to_canonical(loader(crlm / "label.nii.gz"))
    two_d = data / "liver_png_2d"
    cases: dict[str, list[Path]] = {}
    for path in sorted((two_d / "images").glob("*.png")) if two_d.is_dir() else []:
        cases.setdefault(path.stem.split("_")[0], []).append(path)
    for case, paths in sorted(cases.items()):
        paths.sort(key=lambda p: int(p.stem.split("_")[1]))
        grey = np.stack([read_grey_slice(p)[0] for p in paths], axis=-1).astype(np.float32)
        label = np.stack([read_mask(two_d / "masks" / p.name, label_map={127: 1, 255: 2}) for p in paths], axis=-1)
        yield f"liver_png_2d case {case}", "grey", grey, label, [UNKNOWN_SPACING_MM] * 2 + [UNKNOWN_SPACING_MM]


def _picture(slices: Path, path: Path) -> None:
    """Real lesions (top row) beside lesions synthesised in tumour-free liver slices (bottom row), each cropped
    around its liver, the tumour outlined."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from transforms import SynthesizeLesions
    from workflows.data.pictures import save_figure
    from workflows.data.slice_set import read_grey_slice, read_manifest, read_mask

    def rows_of(name):
        return [{**r, "folder": slices / name} for r in read_manifest(slices / name)] if (slices / name).is_dir() else []

    def crop(grey, label):
        ys, xs = np.nonzero(label >= 1)
        y0, y1, x0, x1 = max(0, ys.min() - 8), ys.max() + 8, max(0, xs.min() - 8), xs.max() + 8
        return grey[y0:y1, x0:x1], label[y0:y1, x0:x1]

    def load(row):
        return read_grey_slice(row["folder"] / row["image"])[0], read_mask(row["folder"] / row["mask"])

    real, synthetic = [], []
    for name in ("hcc_tace_2144", "hcc_tace_0697", "liver_png_2d"):
        rows = [r for r in rows_of(name) if r["tumor_pixels"]]
        if rows:
            real.append((name, *load(max(rows, key=lambda r: r["tumor_pixels"]))))
    free = [r for name in ("hcc_tace_2022", "hcc_tace_0697", "liver_png_2d") for r in rows_of(name)
            if r["liver_pixels"] and not r["tumor_pixels"]]
    free.sort(key=lambda r: -r["liver_pixels"])
    for kind, row in zip(("faint", "hypodense", "hyperdense", "rim"), free[::7]):
        grey, label = load(row)
        synth = SynthesizeLesions(prob=1.0, max_lesions=2, lesion_types=f"{kind}:1")
        synth.set_random_state(seed=len(synthetic))
        image, lesions = synth(torch.as_tensor(grey[None] / 255.0, dtype=torch.float32), (label >= 1)[None])
        synthetic.append((f"synthetic, {kind}", np.clip(image[0].numpy() * 255, 0, 255).astype(np.uint8),
                          np.where(lesions[0], 2, label).astype(np.uint8)))
    columns = max(len(real), len(synthetic))
    fig, axes = plt.subplots(2, columns, figsize=(3.0 * columns, 6.2), squeeze=False)
    for axis_row, examples in zip(axes, (real, synthetic)):
        for ax, (title, grey, label) in zip(axis_row, examples):
            grey, label = crop(grey, label)
            ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
            contours, _ = cv2.findContours((label == 2).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            for contour in contours:
                ax.plot(contour[:, 0, 0], contour[:, 0, 1], color="red", linewidth=0.8)
            ax.set_title(title if title.startswith("synthetic") else f"real, {title}", fontsize=8)
        for ax in axis_row:
            ax.axis("off")
    save_figure(fig, path)
    print(f"picture: {path}")


def main(argv: list[str] | None = None) -> int:
    import torch

    from workflows.data.lesion_measures import measure_lesions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the real samples folder (../shared/data/real)")
    parser.add_argument("--picture", help="draw real lesions beside synthetic ones into this PNG")
    parser.add_argument("--slices", help="with --picture: the slice sets a recipe run converted (DIR/slices)")
    args = parser.parse_args(argv)
    if args.picture:
        _picture(Path(args.slices), Path(args.picture))
        return 0
    print("| patient | unit | lesion | mL | longest axial mm | contrast | lesion / liver mean | ellipsoid fill | "
          "edge mm | depth mm | at surface |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for item in _volumes(Path(args.data)):
        name, unit, image, label = item[:4]
        if isinstance(image, torch.Tensor):
            spacing = torch.linalg.norm(image.affine[:3, :3].float(), dim=0).tolist()
            image, label = image[0].numpy().astype(np.float32), label[0].numpy().astype(np.uint8)
        else:
            spacing = item[4]
        for k, row in enumerate(measure_lesions(image, label, spacing), start=1):
            print(f"| {name} | {unit} | {k} | {row['volume_ml']} | {row['longest_axial_mm']} | {row['contrast']} | "
                  f"{row['lesion_mean']} / {row['liver_mean']} | {row['ellipsoid_fill']} | {row['edge_mm']} | "
                  f"{row['depth_mm']} | {'yes' if row['touches_surface'] else 'no'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
