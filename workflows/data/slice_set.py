"""Slice sets on disk: names, the manifest, and reading 2D sets (the Kaggle LiTS JPG export, images/ + masks/).

A converted slice set is ``images/volume-<id>_slice_<k>.<png|jpg>`` (8-bit windowed CT), ``masks/...png``
(lossless; pixel values are LiTS labels: 0 background, 1 liver, 2 tumour) and ``manifest.csv`` with one row
per slice (:data:`MANIFEST_COLUMNS`). Every later command reads the manifest.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from workflows.machine.atomic import csv_text, write_text_atomic

__all__ = [
    "MANIFEST_COLUMNS", "MANIFEST_NAME", "IMAGE_SUFFIXES", "slice_name", "parse_slice_name", "volume_sort_key",
    "manifest_rows_to_csv",
    "read_manifest", "read_slice_sets", "write_manifest", "grey_of", "read_grey_slice", "read_mask", "LoadMaskd", "LoadSliced",
    "context_files", "Slice2D", "find_2d_sets",
]

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = (
    "volume_id", "slice_index", "source", "label_source", "spacing_row_mm", "spacing_col_mm", "slice_thickness_mm",
    "liver_pixels", "tumor_pixels", "image", "mask", "patient_id",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SLICE_NAME = re.compile(r"^volume-(?P<volume>.+)_slice_(?P<slice>\d+)$")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")
_CASE_SLICE = re.compile(r"^(?P<case>[A-Za-z0-9-]+)_(?P<slice>\d+)$")


def slice_name(volume_id: str, slice_index: int) -> str:
    """``volume-<id>_slice_<k>``, the Kaggle export's naming."""
    return f"volume-{volume_id}_slice_{slice_index}"


def parse_slice_name(name: str) -> tuple[str, int] | None:
    """``"volume-12_slice_40.jpg"`` -> ``("12", 40)``; ``None`` for other names. Volume ids may hold dots."""
    parsed = _slice_file(Path(name).name)
    return parsed[:2] if parsed else None


def manifest_rows_to_csv(rows: Iterable[dict]) -> str:
    return csv_text(rows, MANIFEST_COLUMNS)


def write_manifest(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write rows sorted by volume id (numbers in numeric order) then slice index, atomically."""
    ordered = sorted(rows, key=lambda r: (volume_sort_key(str(r["volume_id"])), int(r["slice_index"])))
    return write_text_atomic(path, manifest_rows_to_csv(ordered))


def volume_sort_key(volume_id: str) -> tuple:
    return (0, int(volume_id), "") if volume_id.isdigit() else (1, 0, volume_id)


def read_manifest(slices_dir: str | os.PathLike) -> list[dict]:
    """Rows of ``<slices_dir>/manifest.csv`` with typed values and ``image`` / ``mask`` as absolute paths.

    Raises:
        FileNotFoundError: with the command that makes a manifest, when there is none.
    """
    slices_dir = Path(slices_dir)
    path = slices_dir / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{slices_dir}: no {MANIFEST_NAME}; make a slice set first with "
            f"`python -m workflows.convert --input <scans or 2D set> --output {slices_dir}`."
        )
    rows = []
    needed = ("volume_id", "slice_index", "image", "mask", "spacing_row_mm", "spacing_col_mm", "slice_thickness_mm",
              "liver_pixels", "tumor_pixels")
    way = f"convert again with `python -m workflows.convert ... --output {slices_dir}`"
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in needed if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a manifest made by workflows.convert (no column {', '.join(missing)}); {way}.")
        for raw in reader:
            row: dict = dict(raw)
            try:
                row["slice_index"] = int(row["slice_index"])
                for column in ("spacing_row_mm", "spacing_col_mm", "slice_thickness_mm"):
                    row[column] = float(row[column]) if row[column] else float("nan")
                for column in ("liver_pixels", "tumor_pixels"):
                    row[column] = int(row[column]) if row[column] else None
                row["patient_id"] = row.get("patient_id") or ""  # a manifest from before the column: unknown
                for column in ("image", "mask"):
                    row[column] = str((slices_dir / row[column]).resolve()) if row[column] else ""
            except (TypeError, ValueError):
                raise ValueError(f"{path}: line {reader.line_num} is not a manifest row (a short row or a value of "
                                 f"the wrong kind); {way}.") from None
            rows.append(row)
    return rows


def grey_of(image: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """A 2D image as one grey channel: a grey image as it is; a colour image (BGR / BGRA as OpenCV reads it)
    only when its colour channels are equal, as grey slices saved as RGB are.

    Raises:
        ValueError: a colour image whose channels differ (named), which would otherwise be averaged silently.
    """
    if image.ndim == 2:
        return image
    colour = image[..., :3]
    if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
        raise ValueError(f"{path}: a colour image whose channels differ; a CT slice or mask is grey (save it as one "
                         "grey channel, or as RGB with three equal channels).")
    return np.ascontiguousarray(colour[..., 0])


def read_grey_slice(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """One windowed 2D slice (PNG/JPG, as the Kaggle export) as 8-bit grey levels, the one reader of 2D slices for
    conversion and inference; returns the grey image and whether the file holds it as stored (one 8-bit channel).

    Raises:
        ValueError: an empty or unreadable file, a colour image whose channels differ, or pixels that are not
            8-bit (a 16-bit PNG holds raw values, not a windowed slice), each naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file.")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: empty (0 bytes); copy the slice again.")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
    if raw is None:
        raise ValueError(f"{path}: cannot be read as an image (damaged, or not a PNG/JPG).")
    grey = grey_of(raw, path)
    if grey.dtype != np.uint8:
        raise ValueError(f"{path}: expected an 8-bit windowed slice (grey levels 0..255, as the Kaggle export), got "
                         f"{grey.dtype} pixels; window it to 8 bits, or convert the scan it came from.")
    return grey, raw.ndim == 2


def read_slice_sets(slices_dirs: list[str]) -> list[dict]:
    """The manifest rows of every slice set; a volume id found in two sets is refused by name."""
    rows, where, seen = [], {}, {}
    for k, slices_dir in enumerate(slices_dirs):
        first = seen.setdefault(Path(slices_dir).resolve(), k)
        if first != k:
            raise ValueError(f"--input {slices_dir}: given twice (also as {slices_dirs[first]}); give each slice set "
                             "once.")
        for row in read_manifest(slices_dir):
            first = where.setdefault(row["volume_id"], slices_dir)
            if first != slices_dir:
                raise ValueError(f"volume {row['volume_id']} is in {first} and in {slices_dir}; convert one of them "
                                 "again from its own folder, or leave one set out.")
            rows.append(row)
    return rows


def read_mask(path: str | os.PathLike, with_kind: bool = False,
              label_map: dict[int, int] | None = None) -> np.ndarray | tuple[np.ndarray, bool]:
    """A 2D mask as LiTS labels (uint8). A lossless mask holds LiTS labels (0, 1, 2) or is binary (0 and its
    maximum, 255 for 8 bits: liver and tumour merged); a JPG mask (the Kaggle export) is thresholded at half range,
    because JPEG ringing leaves faint non-zero pixels around every edge, so ``> 0`` would grow the liver.
    ``label_map`` ({127: 1, 255: 2}) maps another scheme's values to LiTS labels instead; 0 stays background.
    ``with_kind=True`` also says whether the mask was binary (liver and tumour merged).

    Raises:
        ValueError: an unreadable file, or a lossless mask holding other values (named), which would otherwise be
            guessed at.
    """
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError(f"{path}: cannot be read as an image.")
    mask = grey_of(mask, path)
    values = np.unique(mask)
    if label_map:
        unknown = sorted(set(values.tolist()) - set(label_map) - {0})
        if unknown:
            raise ValueError(f"{path}: mask values {', '.join(map(str, unknown[:8]))} are not in the label map "
                             f"{_label_map_text(label_map)}; add them to --label-map (value:1 for liver, value:2 for "
                             "tumour).")
        labels = np.zeros(mask.shape, np.uint8)
        for source, lits in label_map.items():
            labels[mask == source] = lits
        return (labels, False) if with_kind else labels
    full = np.iinfo(mask.dtype).max if mask.dtype.kind == "u" else None
    binary = int(values.max()) > 2
    if binary and Path(path).suffix.lower() not in (".jpg", ".jpeg"):
        if full is None or not set(values.tolist()) <= {0, full}:
            shown = ", ".join(str(v) for v in values[:8].tolist()) + (" ..." if len(values) > 8 else "")
            raise ValueError(f"{path}: mask values {shown} are neither LiTS labels (0 background, 1 liver, 2 tumour) "
                             f"nor a binary 0/{full or 255} liver mask; name what they mean with --label-map "
                             "(e.g. 127:1,255:2 for liver 127 and lesion 255).")
    if binary:
        mask = mask > (full if full is not None else mask.max()) / 2
    labels = mask.astype(np.uint8)
    return (labels, binary) if with_kind else labels


class LoadMaskd(MapTransform):
    """Load 2D masks as :func:`read_mask` reads them (LiTS labels; a Kaggle JPG mask thresholded at half range, a
    binary 0/255 mask as liver), as float32 ``(1, rows, columns)``: the mask half of the bundle's slice loading."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            d[key] = MetaTensor(torch.as_tensor(read_mask(path)[None], dtype=torch.float32),
                                meta={"filename_or_obj": str(path)})
        return d


@lru_cache(maxsize=64)
def _slice_indices(folder: str, mtime_ns: int) -> dict[tuple[str, str], list[int]]:
    """Per (volume id, suffix): the sorted slice indices of the slice files in ``folder`` (listed once per folder
    version)."""
    found: dict[tuple[str, str], list[int]] = {}
    for name in os.listdir(folder):
        parsed = _slice_file(name)
        if parsed is not None:
            found.setdefault((parsed[0], parsed[2]), []).append(parsed[1])
    return {key: sorted(indices) for key, indices in found.items()}


def _slice_file(name: str) -> tuple[str, int, str] | None:
    """``"volume-a.5mm_slice_3.png"`` -> ``("a.5mm", 3, ".png")`` (volume ids may hold dots: DICOM series names)."""
    suffix = Path(name).suffix
    match = _SLICE_NAME.match(name[: len(name) - len(suffix)])
    return (match["volume"], int(match["slice"]), suffix) if match else None


def context_files(path: str | os.PathLike, context: int) -> list[Path]:
    """The slice files stacked for the slice at ``path`` with ``context`` neighbours on each side, found by volume id
    and slice index (``volume-<id>_slice_<k>``, the converted sets' and the Kaggle export's names) in its folder:
    ``k - context .. k + context``; past the volume's first or last slice the end slice repeats
    (:func:`transforms.context.context_indices`' rule), and a missing slice inside the volume is replaced by the
    nearest one towards ``k``. A file not named that way has no neighbours: it repeats itself.
    """
    path = Path(path)
    parsed = _slice_file(path.name)
    if context == 0 or parsed is None:
        return [path] * (2 * context + 1)
    volume, index, suffix = parsed
    indices = _slice_indices(str(path.parent), path.parent.stat().st_mtime_ns).get((volume, suffix), [index])
    present, first, last = set(indices), indices[0], indices[-1]
    files = []
    for offset in range(-context, context + 1):
        wanted = min(max(index + offset, first), last)
        step = -1 if wanted > index else 1
        while wanted not in present and wanted != index:
            wanted += step
        files.append(path.parent / f"{slice_name(volume, wanted)}{suffix}")
    return files


class LoadSliced(MapTransform):
    """Load a slice file (PNG/JPG, MONAI's ``PILReader``, rows x columns) as ``(2k + 1, rows, columns)`` grey levels:
    the slice with its ``context`` neighbours on each side (:func:`context_files`), the middle channel the slice
    itself; ``context=0`` is MONAI's ``LoadImaged`` + ``EnsureChannelFirstd`` of the one slice. The image half of the
    bundle's slice loading."""

    def __init__(self, keys: KeysCollection, context: int = 0, allow_missing_keys: bool = False) -> None:
        from monai.transforms import Compose, EnsureChannelFirst, LoadImage

        from transforms.context import check_context

        super().__init__(keys, allow_missing_keys)
        self.context = check_context(context)
        self.load = Compose([LoadImage(reader="PILReader", reverse_indexing=False, image_only=True),
                             EnsureChannelFirst(channel_dim="no_channel")])

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            centre = self.load(d[key])
            if self.context:
                files = context_files(d[key], self.context)
                loaded = {str(Path(d[key])): centre}  # an end slice repeated is read once
                for path in files:
                    if str(path) not in loaded:
                        loaded[str(path)] = self.load(str(path))
                stack = [torch.as_tensor(loaded[str(p)]) for p in files]
                centre = MetaTensor(torch.cat(stack), meta=centre.meta)
            d[key] = centre
        return d


def _label_map_text(label_map: dict[int, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(label_map.items()))


@dataclass(frozen=True)
class Slice2D:
    """One image/mask pair of a 2D set."""

    volume_id: str
    slice_index: int
    image: Path
    mask: Path | None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _pairs(images_dir: Path, masks_dir: Path | None, default_volume: str) -> list[Slice2D]:
    masks = {p.stem: p for p in _image_files(masks_dir)} if masks_dir is not None and masks_dir.is_dir() else {}
    images = _image_files(images_dir)
    # ``<case>_<slice>`` names with several cases in one folder (``0_46.png``, ``1_12.png``): a volume per case
    cases = {m["case"] for image in images if (m := _CASE_SLICE.match(image.stem))}
    per_case = len(cases) > 1 and all(_CASE_SLICE.match(image.stem) for image in images)
    out = []
    for order, image in enumerate(images):
        parsed = parse_slice_name(image.name)
        if parsed is None and per_case:
            match = _CASE_SLICE.match(image.stem)
            parsed = (f"{default_volume}-{match['case']}", int(match["slice"]))
        elif parsed is None:  # plain names: one volume per folder, the slice number from the name
            number = _LAST_NUMBER.search(image.stem)
            parsed = (default_volume, int(number.group(1)) if number else order)
        out.append(Slice2D(parsed[0], parsed[1], image, masks.get(image.stem)))
    return out


def find_2d_sets(root: str | os.PathLike) -> list[Slice2D]:
    """The 2D slices under ``root``: the Kaggle layout ``train_images/[train_images/]*.jpg`` with
    ``train_masks/`` of the same names, and any folder holding ``images/`` and ``masks/`` with matching names
    (volume id from ``volume-<id>_`` names; ``<case>_<slice>`` names of several cases give ``<folder>-<case>``;
    else the folder's name)."""
    root = Path(root)
    found: list[Slice2D] = []
    for images_dir in sorted(p for p in root.rglob("train_images") if p.is_dir()):
        if images_dir.parent.name == "train_images":
            continue  # the nested copy Kaggle's zip makes; the outer folder's search covers it
        masks_dir = images_dir.parent / "train_masks"
        found += _pairs(images_dir, masks_dir, images_dir.parent.name)
    for images_dir in sorted(p for p in [root, *root.rglob("*")] if p.is_dir() and p.name == "images"):
        masks_dir = images_dir.parent / "masks"
        if masks_dir.is_dir() and not (images_dir.parent / MANIFEST_NAME).exists():
            found += _pairs(images_dir, masks_dir, images_dir.parent.name)
    return found
