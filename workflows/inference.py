"""Segment new scans with a trained model: the bundle's ``inference`` id and ``python -m workflows.infer``.

A volume (NIfTI file or DICOM series folder) goes through the training preprocessing (canonical orientation,
abdomen window to whole grey levels, 0..1, resize to ``spatial_size``) slice by slice with MONAI's
``SliceInferer``; logits are resized back to each slice, thresholded at 0.5, post-processed, and the label map is
returned to the scan's own grid: ``<name>_seg.nii.gz`` has the input's shape and affine (0 background, 1 liver,
2 tumour, or the trained target), so it overlays in any viewer; a DICOM series also gets ``<name>_seg.dcm``, a
DICOM Segmentation referencing the series. One 2D image (a windowed PNG/JPG slice, as the
Kaggle export) gives ``<name>_mask.png`` and the reference's side-by-side picture.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from monai.data import MetaTensor  # noqa: E402
from monai.inferers import SliceInferer  # noqa: E402
from monai.transforms import Orientation  # noqa: E402
from scipy import ndimage  # noqa: E402
from tqdm import tqdm  # noqa: E402

from networks import ThreeLevelUNet, load_reference_state_dict  # noqa: E402
from transforms import (  # noqa: E402
    TARGET_CHANNELS, LoadScan, WindowHU, is_dicom_series_folder, is_nifti, nifti_stem, target_to_lits, to_canonical,
)
from transforms.slicing import RAS_LABELS  # noqa: E402
from workflows.atomic import save_figure, write_bytes_atomic, write_json_atomic, write_text_atomic  # noqa: E402
from workflows.convert import LABEL_LIKE  # noqa: E402
from workflows.dicom_seg import write_dicom_seg  # noqa: E402
from workflows.explore import overlay  # noqa: E402

__all__ = ["ResizedNetwork", "postprocess", "load_weights", "ScanInference"]

logger = logging.getLogger("liver_ct.inference")
IMAGE_SUFFIXES_2D = (".png", ".jpg", ".jpeg")


class ResizedNetwork(nn.Module):
    """Run a 2D network at ``spatial_size`` on slices of any size: resize in (bilinear), logits back out."""

    def __init__(self, network: nn.Module, spatial_size: int) -> None:
        super().__init__()
        self.network, self.spatial_size = network, int(spatial_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if tuple(size) != (self.spatial_size, self.spatial_size):
            x = F.interpolate(x, size=(self.spatial_size, self.spatial_size), mode="bilinear", align_corners=False)
        logits = self.network(x)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits


def postprocess(label: np.ndarray, spacing: Sequence[float], largest_liver: bool = True, tumour_in_liver: bool = True,
                min_volume_mm3: float = 0.0) -> np.ndarray:
    """Clean a LiTS label map (0/1/2): keep the largest connected liver, keep tumour inside the liver, drop
    tumour components smaller than ``min_volume_mm3``. Each step can be switched off."""
    label = label.astype(np.uint8).copy()
    structure = np.ones((3,) * label.ndim, bool)
    voxel_mm3 = float(np.prod(spacing))
    liver = label >= 1
    if largest_liver and liver.any():
        components, n = ndimage.label(liver, structure)
        if n > 1:
            sizes = np.bincount(components.ravel())[1:]
            liver = components == (int(np.argmax(sizes)) + 1)
            label[~liver] = 0
    if tumour_in_liver and (label == 2).any() and liver.any():
        label[(label == 2) & ~liver] = 0
    if min_volume_mm3 > 0 and (label == 2).any():
        components, n = ndimage.label(label == 2, structure)
        sizes = np.bincount(components.ravel()) * voxel_mm3
        small = sizes < min_volume_mm3
        small[0] = False
        label[small[components]] = 1  # a speck of tumour inside the liver becomes liver
    return label


def load_weights(network: ThreeLevelUNet, path: str | os.PathLike) -> ThreeLevelUNet:
    """Weights from ``model.pt``, a training checkpoint (``{"model": ...}``) or the reference project's state_dict.
    A file that does not fit the network fails naming the setting that differs."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        return load_reference_state_dict(network, state)
    except ValueError:
        hints = []
        final = state.get("final.weight")
        if final is not None and final.shape[0] != network.out_channels:
            hints.append(f"the checkpoint has {final.shape[0]} output channel(s), the network {network.out_channels}: "
                         "set --target to what it was trained for (liver/tumor: 1, both: 2)")
        first = state.get("enc1.conv.0.weight")
        widths = [int(state[k].shape[0]) for k in ("enc1.conv.0.weight", "enc2.conv.0.weight", "enc3.conv.0.weight",
                                                   "bottleneck.conv.0.weight") if k in state]
        if first is not None and tuple(widths) != tuple(network.channels):
            shown = str(widths).replace(" ", "")
            hints.append(f"the checkpoint was trained with network_def#channels {shown}, the network has "
                         f"{str(list(network.channels)).replace(' ', '')}: pass --network_def#channels \"{shown}\" "
                         f"(workflows.infer: --channels {' '.join(map(str, widths))})")
        raise ValueError(f"{path} does not fit the configured network: " + ("; ".join(hints) or "keys differ")) from None


class ScanInference:
    """Segment every scan under ``input`` (a NIfTI file, a DICOM series folder, a folder of either, or one 2D
    image) into ``output_dir``; returns one summary row per scan (volumes in mL)."""

    def __init__(self, network: ThreeLevelUNet, ckpt_file: str, input: str, output_dir: str, target: str = "liver",
                 spatial_size: int = 256, device: torch.device | str = "cpu", sw_batch_size: int = 8,
                 window: str = "abdomen", largest_liver: bool = True, tumour_in_liver: bool = True,
                 min_tumour_mm3: float = 10.0) -> None:
        if target not in TARGET_CHANNELS:
            raise ValueError(f"`target` must be one of {list(TARGET_CHANNELS)}, got {target!r}.")
        self.network, self.ckpt_file = network, ckpt_file
        self.input, self.output_dir = Path(input), Path(output_dir)
        self.target, self.device = target, torch.device(device)
        self.model = ResizedNetwork(network, spatial_size).to(self.device).eval()
        self.inferer = SliceInferer(roi_size=(-1, -1), sw_batch_size=sw_batch_size, spatial_dim=2, progress=False)
        self.window = WindowHU(window, dtype=np.float32)
        self.post = {"largest_liver": largest_liver, "tumour_in_liver": tumour_in_liver,
                     "min_volume_mm3": float(min_tumour_mm3)}
        self.loader = LoadScan()

    # -- what to segment ---------------------------------------------------------------------------------------
    def scans(self) -> list[Path]:
        path = self.input
        if not path.exists():
            raise FileNotFoundError(f"--input {path}: no such file or folder.")
        if path.is_file():
            return [path]
        if is_dicom_series_folder(path):
            return [path]
        found = [p for p in sorted(path.iterdir()) if (p.is_file() and (is_nifti(p) or p.suffix.lower() in IMAGE_SUFFIXES_2D)
                                                       and not LABEL_LIKE.search(p.name))  # labels beside scans
                 or (p.is_dir() and is_dicom_series_folder(p))]
        if not found:
            raise FileNotFoundError(f"--input {path}: no NIfTI file, DICOM series folder or 2D image in it.")
        return found

    def run(self) -> list[dict]:
        if str(self.ckpt_file).endswith(".ts"):  # TorchScript from `python -m monai.bundle ckpt_export`
            self.model.network = torch.jit.load(self.ckpt_file, map_location=self.device).eval()
        else:
            load_weights(self.network, self.ckpt_file)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        scans = self.scans()
        for scan in tqdm(scans, desc="segmenting", unit="scan", disable=len(scans) < 2):
            logger.info(f"segmenting {scan}")
            try:  # a bad scan is reported and skipped; the others are segmented
                rows.append(self.segment_image(scan) if scan.suffix.lower() in IMAGE_SUFFIXES_2D else self.segment_volume(scan))
            except ValueError as err:
                logger.error(f"FAILED {scan}: {err}")
                rows.append({"scan": str(scan), "segmentation": "", "error": str(err)})
        write_json_atomic(self.output_dir / "summary.json", rows)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)),
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.output_dir / "summary.csv", buffer.getvalue())
        return rows

    # -- one volume ----------------------------------------------------------------------------------------------
    def predict_canonical(self, grey: torch.Tensor) -> np.ndarray:
        """LiTS-coded label map ``(rows, cols, slices)`` of a windowed canonical volume ``(1, rows, cols, slices)``
        of whole grey levels 0..255 (as the PNG slices training read)."""
        grey = grey.as_tensor() if isinstance(grey, MetaTensor) else torch.as_tensor(grey)
        with torch.no_grad():
            logits = self.inferer((grey / 255.0)[None].float().to(self.device), self.model)
        return target_to_lits(torch.sigmoid(logits[0]).cpu().numpy(), self.target)

    def segment_volume(self, scan: Path) -> dict:
        image = self.loader(scan)
        canonical = to_canonical(image)
        spacing = torch.linalg.norm(canonical.affine[:3, :3], dim=0).tolist()
        grey = self.window(canonical)  # once: for the network and for the pictures
        label = postprocess(self.predict_canonical(grey), spacing, **self.post)
        # back to the scan's own grid: reorient the canonical label to the stored axis codes
        stored_codes = "".join(nib.aff2axcodes(image.affine.numpy()))
        restored = Orientation(axcodes=stored_codes, labels=RAS_LABELS)(
            MetaTensor(torch.as_tensor(label)[None], affine=canonical.affine, meta={"space": "RAS"}))
        array = restored[0].numpy().astype(np.uint8)
        if array.shape != tuple(image.shape[1:]) or not np.allclose(restored.affine.numpy(), image.affine.numpy(), atol=1e-3):
            raise RuntimeError(f"{scan}: the mask did not return to the scan's grid (internal error).")
        name = nifti_stem(scan) if scan.is_file() else scan.name
        output = self.output_dir / f"{name}_seg.nii.gz"
        if is_nifti(scan):  # the scan's own header: same affine, qform and sform codes, as a viewer expects
            source = nib.load(scan)
            header = source.header.copy()
            header.set_data_dtype(np.uint8)
            header.set_slope_inter(1.0, 0.0)
            seg = nib.Nifti1Image(array, source.affine, header)
        else:
            seg = nib.Nifti1Image(array, image.affine.numpy())
        write_bytes_atomic(output, gzip.compress(seg.to_bytes(), mtime=0))
        row_extra = {}
        if scan.is_dir():  # a DICOM series also gets a DICOM SEG referencing it, for PACS and DICOM viewers
            try:
                row_extra["dicom_seg"] = str(write_dicom_seg(array, image.affine, scan,
                                                             self.output_dir / f"{name}_seg.dcm", self.target))
            except ValueError as err:  # the NIfTI mask stands; say why there is no SEG
                logger.warning(f"no DICOM SEG for {scan}: {err}")
                row_extra["dicom_seg"] = f"not written: {err}"
        self._montage(np.asarray(grey[0]).astype(np.uint8), label, self.output_dir / f"{name}_overlay.png", name)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        return {"scan": str(scan), "segmentation": str(output), "shape": "x".join(map(str, array.shape)),
                "liver_ml": round(float(np.count_nonzero(label >= 1)) * voxel_ml, 2),
                "tumour_ml": round(float(np.count_nonzero(label == 2)) * voxel_ml, 2), **row_extra}

    def _montage(self, grey: np.ndarray, label: np.ndarray, path: Path, title: str, n: int = 6) -> None:
        area = (label >= 1).sum(axis=(0, 1)) + 10 * (label == 2).sum(axis=(0, 1))
        picks = sorted(np.argsort(area)[::-1][:n]) if area.any() else list(np.linspace(0, label.shape[2] - 1, n).astype(int))
        fig, axes = plt.subplots(1, len(picks), figsize=(2.6 * len(picks), 2.9), squeeze=False)
        for ax, k in zip(axes[0], picks):
            ax.imshow(overlay(grey[..., k], label[..., k]))
            ax.set_title(f"slice {k}", fontsize=8)
            ax.axis("off")
        fig.suptitle(f"{title}: liver green, tumour red", fontsize=9)
        save_figure(fig, path, dpi=90)

    # -- one 2D image ------------------------------------------------------------------------------------------
    def segment_image(self, path: Path) -> dict:
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise ValueError(f"{path}: cannot be read as an image.")
        x = torch.as_tensor(grey, dtype=torch.float32)[None, None] / 255.0
        with torch.no_grad():
            label = target_to_lits(torch.sigmoid(self.model(x.to(self.device)))[0].cpu().numpy(), self.target)
        mask_path = self.output_dir / f"{path.stem}_mask.png"
        # 0/255 for liver (as the Kaggle masks), 0/128/255 when tumour is drawn too
        visible = np.where(label == 2, 255, np.where(label == 1, 255 if self.target == "liver" else 128, 0)).astype(np.uint8)
        write_bytes_atomic(mask_path, cv2.imencode(".png", visible)[1].tobytes())
        fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
        axes[0].imshow(grey, cmap="gray")
        axes[0].set_title("image")
        axes[1].imshow(overlay(grey, label))
        axes[1].set_title("prediction")
        for ax in axes:
            ax.axis("off")
        save_figure(fig, self.output_dir / f"{path.stem}_prediction.png", dpi=90)
        return {"scan": str(path), "segmentation": str(mask_path), "shape": "x".join(map(str, grey.shape)),
                "liver_pixels": int(np.count_nonzero(label >= 1)), "tumour_pixels": int(np.count_nonzero(label == 2))}

