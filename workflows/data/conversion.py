"""Raw scans (LiTS / MSD NIfTI, DICOM series) or a 2D set (Kaggle JPGs) to a slice set with a manifest: the
library behind ``python -m workflows.convert`` (see there for the files written).

Volumes are loaded, reoriented and windowed with ``transforms.canonical_grey`` (the steps inference starts with)
and cut with ``transforms.AxialSlicesd``. A volume is complete when all its slices and its manifest rows
(``.parts/volume-<id>.csv``, written last) are on disk; a rerun skips complete volumes.
"""

from __future__ import annotations

import concurrent.futures as futures
import csv
import hashlib
import json
import math
import multiprocessing
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from monai.transforms import Resize
from tqdm import tqdm

from transforms import (
    LITS_LABELS, TARGET_CHANNELS, AxialSlicesd, InvalidScanError, canonical_grey, liver_mask,
    tumour_mask, unwrap_transform_error, window_range,
)
from workflows.machine.atomic import remove_stale_temporaries, write_bytes_atomic, write_json_atomic
from workflows.data.discovery import VolumeSource, describe_sources, find_volume_sources
from workflows.data.grey_levels import GREY_LEVELS_NAME, UNKNOWN_WINDOW, GreyLevels, disagreeing_sources, source_groups
from workflows.machine.locking import LOCK_PREFIX, folder_lock
from workflows.machine.memory import peak_memory_mib
from workflows.machine.shards import share, shard_lock
from workflows.data.slice_set import (
    MANIFEST_NAME, manifest_rows_to_csv, read_grey_slice, read_mask, slice_name, volume_sort_key, write_manifest,
)

__all__ = ["TARGETS", "ConvertSettings", "ConvertSummary", "convert", "shard_of"]

TARGETS = tuple(TARGET_CHANNELS)
PARTS_DIR = ".parts"
SETTINGS_NAME = "convert.json"
#: OpenCV's own PNG settings, chosen by measurement on 512x512 slices: 0.8 ms and 46 KiB per generated slice, 1.1 ms
#: and 76 KiB per real 2D slice, against 2.8 ms / 51 KiB and 3.4 ms / 80 KiB at IMWRITE_PNG_COMPRESSION 3
PNG_PARAMS: list[int] = []
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95]


@dataclass(frozen=True)
class ConvertSettings:
    target: str = "both"
    window: str | None = "abdomen"
    window_hu: tuple[float, float] | None = None
    format: str | None = None  # None: png for volumes, the source's own format for 2D sets
    size: int | None = None
    label_map: dict[int, int] | None = field(default=None, hash=False)
    #: 2D sets only: grey levels multiplied by this (rounded, clipped to 255), for a set exported in another window
    #: than the abdomen window (air stays 0; :func:`workflows.data.grey_levels.liver_grey_scale` finds the factor)
    grey_scale: float | None = None

    def as_json(self) -> dict:
        out = asdict(self)
        out["window_range_hu"] = list(window_range(self.window, self.window_hu))
        out["label_map"] = {str(k): v for k, v in (self.label_map or {}).items()} or None
        out["mask_values"] = {"0": "background", "1": "liver (with its tumours when target is liver)", "2": "tumour"}
        return out


# -- converting one volume --------------------------------------------------------------------------------------
class _Converter:
    """Per-process state: readers and transforms built once, then one volume at a time."""

    def __init__(self, output: Path, settings: ConvertSettings):
        self.output = output
        self.settings = settings
        # the loading, orientation and window inference uses too (transforms.canonical_grey), whole volumes at once
        self.volume_to_grey = {
            labelled: canonical_grey("image", ["label"] if labelled else [], settings.window, settings.window_hu,
                                     dtype=np.uint8, label_map=settings.label_map)
            for labelled in (False, True)
        }
        self.slicer = AxialSlicesd(keys=["image", "label"], allow_missing_keys=True)
        self.notes: list[str] = []
        size = settings.size
        self.resize_image = Resize((size, size), mode="bilinear") if size else None
        self.resize_mask = Resize((size, size), mode="nearest") if size else None

    # masks on disk hold LiTS labels, reduced to the target
    def _mask_for_target(self, label: np.ndarray) -> np.ndarray:
        if self.settings.target == "liver":
            return liver_mask(label).astype(np.uint8)
        if self.settings.target == "tumor":
            return (tumour_mask(label) * LITS_LABELS["tumor"]).astype(np.uint8)
        return label.astype(np.uint8)

    def _resized(self, array: np.ndarray, mask: bool) -> np.ndarray:
        resize = self.resize_mask if mask else self.resize_image
        if resize is None or array.shape == (self.settings.size, self.settings.size):
            return array
        out = resize(torch.as_tensor(array[None], dtype=torch.float32))[0].numpy()
        return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)

    def _write_slice(self, name: str, image: np.ndarray, mask: np.ndarray | None, fmt: str,
                     image_bytes: bytes | None = None) -> tuple[str, str]:
        image_rel = f"images/{name}.{fmt}"
        if image_bytes is None:
            ok, encoded = cv2.imencode(f".{fmt}", image, JPEG_PARAMS if fmt == "jpg" else PNG_PARAMS)
            image_bytes = encoded.tobytes()
        write_bytes_atomic(self.output / image_rel, image_bytes)
        mask_rel = ""
        if mask is not None:
            mask_rel = f"masks/{name}.png"
            write_bytes_atomic(self.output / mask_rel, cv2.imencode(".png", mask, PNG_PARAMS)[1].tobytes())
        return image_rel, mask_rel

    def convert(self, source: VolumeSource, slice_bar: bool = False) -> list[dict]:
        if source.kind == "2d":
            return self._convert_2d(source)
        labelled = source.labelled
        label = list(source.segs) if source.segs else source.label
        data = self.volume_to_grey[labelled]({"image": source.image, "label": label} if labelled
                                             else {"image": source.image})
        self.notes = list(data["image"].meta.get("series_notes", []))  # images a DICOM series left out
        if labelled:
            self.notes += data["label"].meta.get("seg_notes", [])  # what each SEG segment became
        spacing = torch.linalg.norm(data["image"].affine[:3, :3], dim=0).tolist()
        fmt = self.settings.format or "png"
        rows = []
        self.grey_levels = GreyLevels()
        for item in tqdm(self.slicer(data), desc=f"volume-{source.volume_id}", unit="slice", leave=False,
                         disable=not slice_bar):
            k = item["slice_index"]
            grey = self._resized(item["image"][0].numpy(), mask=False)
            row = {"volume_id": source.volume_id, "slice_index": k, "source": str(source.image),
                   "label_source": ";".join(str(p) for p in source.segs) or str(source.label or ""),
                   "patient_id": source.patient_id, "spacing_row_mm": spacing[0],
                   "spacing_col_mm": spacing[1], "slice_thickness_mm": spacing[2]}
            mask = None
            if labelled:
                full = self._resized(item["label"][0].numpy().astype(np.uint8), mask=True)
                row["liver_pixels"], row["tumor_pixels"] = int(liver_mask(full).sum()), int(tumour_mask(full).sum())
                mask = self._mask_for_target(full)
            self.grey_levels.add(grey, full if labelled else None)
            row["image"], row["mask"] = self._write_slice(slice_name(source.volume_id, k), grey, mask, fmt)
            rows.append(row)
        lo, hi = window_range(self.settings.window, self.settings.window_hu)
        self.grey_summary = self.grey_levels.summary(f"{source.kind} volumes, {lo:g}..{hi:g} HU", f"{lo:g}..{hi:g} HU")
        return rows

    def _convert_2d(self, source: VolumeSource) -> list[dict]:
        unlabelled = [item.image for item in source.slices if item.mask is None]
        if unlabelled and len(unlabelled) < len(source.slices):  # never a silently unlabelled slice
            shown = ", ".join(p.name for p in unlabelled[:4]) + (f" and {len(unlabelled) - 4} more" if len(unlabelled) > 4 else "")
            raise InvalidScanError(f"{source.where}: no mask for {shown} (the other {len(source.slices) - len(unlabelled)} "
                                   "images have one, by the same name); add the missing masks or move those images out.")
        seen: dict[int, Path] = {}
        rows, binary_masks = [], False
        self.grey_levels = GreyLevels()
        for item in sorted(source.slices, key=lambda s: s.slice_index):
            if item.slice_index in seen:
                raise InvalidScanError(f"{item.image}: slice {item.slice_index} of volume {source.volume_id} "
                                       f"already comes from {seen[item.slice_index]}.")
            seen[item.slice_index] = item.image
            try:
                grey, as_stored = read_grey_slice(item.image)
            except ValueError as err:
                raise InvalidScanError(str(err)) from None
            source_fmt = "jpg" if item.image.suffix.lower() in (".jpg", ".jpeg") else "png"
            fmt = self.settings.format or source_fmt
            copy_bytes = as_stored and fmt == source_fmt and self.resize_image is None and not self.settings.grey_scale
            grey = self._resized(grey, mask=False)
            if self.settings.grey_scale:
                grey = np.clip(np.rint(grey.astype(np.float32) * self.settings.grey_scale), 0, 255).astype(np.uint8)
            row = {"volume_id": source.volume_id, "slice_index": item.slice_index, "source": str(item.image),
                   "label_source": str(item.mask or "")}
            mask = None
            if item.mask is not None:
                try:
                    labels, binary = read_mask(item.mask, with_kind=True, label_map=self.settings.label_map)
                except ValueError as err:
                    raise InvalidScanError(str(err)) from None
                binary_masks |= binary
                labels = self._resized(labels, mask=True)
                if labels.shape != grey.shape:
                    raise InvalidScanError(f"{item.mask}: mask {labels.shape} does not match its image {grey.shape}.")
                row["liver_pixels"], row["tumor_pixels"] = int(liver_mask(labels).sum()), int(tumour_mask(labels).sum())
                mask = self._mask_for_target(labels)
            self.grey_levels.add(grey, labels if item.mask is not None else None)
            image_bytes = item.image.read_bytes() if copy_bytes else None
            row["image"], row["mask"] = self._write_slice(slice_name(source.volume_id, item.slice_index), grey,
                                                          mask, fmt, image_bytes)
            rows.append(row)
        if binary_masks:  # 0/255 masks (Kaggle, CHAOS) merge liver and tumour: tumour is unknown, not absent
            if self.settings.target == "tumor":
                raise InvalidScanError(f"{source.where}: this 2D set's masks hold liver and tumour merged (0/255); "
                                       "--target tumor needs LiTS labels 0/1/2.")
            for row in rows:
                row["tumor_pixels"] = None
        # an 8-bit source's window is not known: its grey levels are compared with the other sources', not assumed
        window = UNKNOWN_WINDOW + (f", grey levels x{self.settings.grey_scale:g}"
                                                if self.settings.grey_scale else "")
        self.grey_summary = self.grey_levels.summary(f"2D set {source.set_name}", window)
        return rows


_worker: _Converter | None = None


def _init_worker(output: Path, settings: ConvertSettings, parent: int | None = None) -> None:
    """Per-process set-up; ``parent`` is the PID of the conversion that started this worker process."""
    global _worker
    if parent is not None:  # a worker process: parallelism comes from the workers, and it dies with its parent
        torch.set_num_threads(1)
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _worker = _Converter(output, settings)


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent was killed stops at once instead of writing on into a folder nobody holds."""
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.25)


def _convert_one(source: VolumeSource, slice_bar: bool = False) -> tuple[str, str, int, int, list[str]]:
    """Convert and mark complete. Returns (volume id, error or "", slices, peak RSS in MiB of this process, notes
    on what the source left out)."""
    _worker.notes = []
    try:
        fingerprint = source_fingerprint(source, digest=True)
        rows = _worker.convert(source, slice_bar)
        write_json_atomic(_fingerprint_path(_worker.output, source.volume_id), fingerprint)
        write_json_atomic(_grey_path(_worker.output, source.volume_id), _worker.grey_summary)
        write_bytes_atomic(_part_path(_worker.output, source.volume_id), manifest_rows_to_csv(rows).encode())
        error, count = "", len(rows)
    except Exception as raised:  # a batch goes on; the summary names the volume and the reason
        err = unwrap_transform_error(raised)
        error = str(err) if isinstance(err, InvalidScanError) else f"{source.where}: {type(err).__name__}: {err}"
        count = 0
    return source.volume_id, error, count, int(peak_memory_mib()), _worker.notes


def _part_path(output: Path, volume_id: str) -> Path:
    return output / PARTS_DIR / f"volume-{volume_id}.csv"


def _grey_path(output: Path, volume_id: str) -> Path:
    return output / PARTS_DIR / f"volume-{volume_id}.grey.json"


def _read_grey_parts(output: Path, volume_ids: list[str]) -> dict[str, dict]:
    return {v: json.loads(_grey_path(output, v).read_text()) for v in volume_ids if _grey_path(output, v).exists()}


def _read_parts(output: Path) -> list[dict]:
    rows = []
    for part in sorted((output / PARTS_DIR).glob("volume-*.csv")):
        with open(part, newline="") as handle:
            rows += list(csv.DictReader(handle))
    return rows


@dataclass
class ConvertSummary:
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    slices: int = 0
    peak_rss_mib: int = 0


def _check_settings(output: Path, settings: ConvertSettings, input_path: Path) -> None:
    path = output / SETTINGS_NAME
    wanted = {"input": str(input_path.resolve()), **settings.as_json()}
    if path.exists():
        before = json.loads(path.read_text())
        if before.get("input") != wanted["input"]:
            raise ValueError(f"{output} holds the conversion of {before.get('input')}; converting --input "
                             f"{input_path} into it would mix two datasets. Use another --output.")
        differing = sorted(k for k in wanted if k != "input" and before.get(k) != wanted[k])
        if differing:
            shown = ", ".join(f"{k}: {before.get(k)!r} -> {wanted[k]!r}" for k in differing)
            raise ValueError(f"{output} was converted with other settings ({shown}); use a new --output "
                             "or the same options to carry on.")
    elif any(not entry.name.startswith(LOCK_PREFIX) for entry in output.iterdir()):
        raise ValueError(f"{output} is not empty and was not made by this conversion (no {SETTINGS_NAME}); nothing "
                         "in it is overwritten: choose an empty or new --output.")
    write_json_atomic(path, wanted)


def _source_files(source: VolumeSource) -> list[Path]:
    if source.kind == "2d":
        return [p for item in source.slices for p in (item.image, item.mask) if p is not None]
    return [p for root in (source.image, source.label, *source.segs) if root is not None
            for p in (sorted(q for q in root.iterdir() if q.is_file()) if root.is_dir() else [root])]


def content_digest(files: list[Path]) -> str:
    """sha256 over the names and bytes of ``files``, in order: the same content copied elsewhere in time."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def source_fingerprint(source: VolumeSource, digest: bool = False) -> dict:
    """Path, size and modification time of every file a volume is made of, to tell a changed source on a rerun;
    ``digest``: with their content's sha256 (recorded at conversion), which tells a copy with new times (the data
    downloaded or copied again) from a change."""
    return _fingerprint(_source_files(source), digest)


def _fingerprint(files: list[Path], digest: bool = False) -> dict:
    stats = [(str(p), p.stat()) for p in files]
    found = {"files": len(stats), "bytes": sum(st.st_size for _, st in stats),
             "newest_mtime_ns": max((st.st_mtime_ns for _, st in stats), default=0), "first": stats[0][0] if stats else ""}
    return {**found, "sha256": content_digest(files)} if digest else found


def _fingerprint_path(output: Path, volume_id: str) -> Path:
    return output / PARTS_DIR / f"volume-{volume_id}.source.json"


def _check_unchanged(output: Path, source: VolumeSource) -> None:
    """Refuse a source whose files differ from those converted; times alone may differ when the content is the same
    (then the record takes the new times, so the next rerun does not read the files again)."""
    path = _fingerprint_path(output, source.volume_id)
    if not path.exists():
        return
    files = _source_files(source)
    recorded, found = json.loads(path.read_text()), _fingerprint(files)
    if all(recorded.get(key) == value for key, value in found.items()):
        return
    same_files = all(recorded.get(key) == found[key] for key in ("files", "bytes", "first"))
    if same_files and recorded.get("sha256") == content_digest(files):
        write_json_atomic(path, {**found, "sha256": recorded["sha256"]})
        return
    raise ValueError(f"{source.where} changed since volume {source.volume_id} was converted into {output} (files, "
                     f"size or content differ); delete {_part_path(output, source.volume_id)} to convert it again, or "
                     "use another --output.")


def shard_of(sources: list[VolumeSource], shard: tuple[int, int] | None) -> list[VolumeSource]:
    """The volumes of share ``I`` of ``N`` (:func:`workflows.machine.shards.share`, in volume-id order)."""
    return share(sources, shard, key=lambda s: volume_sort_key(s.volume_id))


def convert(input_path: str | os.PathLike, output: str | os.PathLike, settings: ConvertSettings = ConvertSettings(),
            label: str | os.PathLike | None = None, workers: int = 1, progress: bool = True,
            shard: tuple[int, int] | None = None, merge: bool = False) -> ConvertSummary:
    """Convert everything found under ``input_path`` into the slice set ``output``; see the module docstring.

    ``shard=(I, N)`` converts share I of N (:func:`shard_of`) so N machines (or processes) fill one shared output;
    the shard that finds every volume complete writes the manifest, which is then the one an unsharded run writes.
    ``merge=True`` converts nothing and writes the manifest from the volumes complete so far (a shard failed a volume,
    or was stopped), naming those missing."""
    input_path, output = Path(input_path), Path(output)
    sources, notes = find_volume_sources(input_path, label)
    if not sources and not merge:  # an empty manifest and status 0 would say the conversion worked
        loops = [p.name for p in sorted(input_path.iterdir()) if p.is_symlink() and not p.exists()] \
            if input_path.is_dir() else []
        why = f"; {', '.join(loops[:4])}: symbolic link(s) to nothing or to themselves" if loops else \
            (f"; {notes[0]}" if notes else "")
        raise ValueError(f"--input {input_path}: nothing to convert in it (no NIfTI volume, DICOM series or 2D slice "
                         f"set{why}); check the path.")
    volumes = [s for s in sources if s.kind != "2d"]
    if settings.grey_scale is not None and (volumes or not 0 < settings.grey_scale < math.inf):
        raise ValueError(f"--grey-scale {settings.grey_scale:g}: " + (
            f"{volumes[0].where} is a scan in HU, windowed by --window / --window-hu; the factor rescales 2D sets only "
            "(convert the 2D set on its own)." if volumes else "the factor must be a positive number (e.g. 0.63)."))
    say = tqdm.write if progress else (lambda *_: None)
    say(describe_sources(sources))
    for note in notes:
        say(note)
    output.mkdir(parents=True, exist_ok=True)
    if merge:
        with folder_lock(output, "a conversion"):
            _check_settings(output, settings, input_path)
            return _merge(sources, output, say)
    mine = shard_of(sources, shard)
    lock, what = shard_lock(shard, "a conversion")
    with folder_lock(output, what, lock):
        _check_settings(output, settings, input_path)
        if remove_stale_temporaries(output, ["images", "masks", PARTS_DIR]):
            say("removed temporary files an interrupted run left behind")
        if shard:
            say(f"shard {shard[0]}/{shard[1]}: {len(mine)} of the {len(sources)} volumes")
        summary = _convert_sources(mine, output, settings, workers, progress, say)
        if shard is None:
            return _write_manifest(output, summary, say)
        missing = [s.volume_id for s in sources if not _part_path(output, s.volume_id).exists()]
        if not missing:
            say(f"shard {shard[0]}/{shard[1]}: every volume of the input is complete; writing the manifest")
            return _write_manifest(output, summary, say)
        return _report(summary, say, f"no manifest yet: {len(missing)} volume(s) of the input are not complete (other "
                       "shards); the last shard to finish writes it, or run the same command with --merge in place "
                       "of --shard")


def _merge(sources: list[VolumeSource], output: Path, say) -> ConvertSummary:
    """The manifest and grey levels from the volumes complete in ``output``; the missing ones named."""
    summary = ConvertSummary()
    for source in sources:
        if _part_path(output, source.volume_id).exists():
            _check_unchanged(output, source)
            summary.skipped.append(source.volume_id)
        else:
            summary.failed[source.volume_id] = (f"{source.where}: not converted into {output} yet (its shard failed "
                                                "it, was stopped, or still runs)")
    summary.skipped.sort(key=volume_sort_key)
    return _write_manifest(output, summary, say)


def _convert_sources(sources: list[VolumeSource], output: Path, settings: ConvertSettings, workers: int,
                     progress: bool, say) -> ConvertSummary:
    summary = ConvertSummary()
    todo = []
    for source in sources:
        complete = _part_path(output, source.volume_id).exists()
        if complete:
            _check_unchanged(output, source)
        (summary.skipped if complete else todo).append(source)
    summary.skipped = sorted((s.volume_id for s in summary.skipped), key=volume_sort_key)
    if summary.skipped:
        say(f"{len(summary.skipped)} volume(s) already complete, skipped: {', '.join(summary.skipped[:10])}"
            + (" ..." if len(summary.skipped) > 10 else ""))

    bar = tqdm(total=len(todo), desc="converting", unit="volume", disable=not progress)

    def record(result: tuple[str, str, int, int, list[str]]) -> None:
        volume_id, error, count, rss, notes = result
        summary.peak_rss_mib = max(summary.peak_rss_mib, rss)
        for note in notes:
            say(f"volume {volume_id}: {note}")
        if error:
            summary.failed[volume_id] = error
            say(f"FAILED volume {volume_id}: {error}")
        else:
            summary.converted.append(volume_id)
            summary.slices += count
        bar.update(1)
        bar.set_postfix(slices=summary.slices, failed=len(summary.failed))

    try:
        if workers <= 1:
            _init_worker(output, settings)
            for source in todo:
                record(_convert_one(source, slice_bar=progress))
        else:
            context = multiprocessing.get_context("spawn")  # a clean interpreter per worker: no forked thread pools
            with futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                             initargs=(output, settings, os.getpid())) as pool:
                for future in futures.as_completed([pool.submit(_convert_one, s) for s in todo]):
                    record(future.result())
    finally:  # the bar's last line before any message (Ctrl-C included)
        bar.close()
    return summary


def _write_manifest(output: Path, summary: ConvertSummary, say) -> ConvertSummary:
    """``manifest.csv`` and ``grey_levels.json`` from every complete volume's part files, and the summary said."""
    rows = _read_parts(output)
    write_manifest(output / MANIFEST_NAME, rows)
    records = _read_grey_parts(output, sorted({r["volume_id"] for r in rows}, key=volume_sort_key))
    write_json_atomic(output / GREY_LEVELS_NAME, records)
    warning = disagreeing_sources(source_groups(records))
    if warning:
        say(f"WARNING: {warning}")
    return _report(summary, say, f"manifest: {output / MANIFEST_NAME}")


def _report(summary: ConvertSummary, say, manifest: str) -> ConvertSummary:
    say(f"converted {len(summary.converted)}, skipped {len(summary.skipped)} (already complete), "
        f"failed {len(summary.failed)}; {summary.slices} new slice(s); {manifest}")
    if summary.converted or summary.failed:
        say(f"peak memory per worker {summary.peak_rss_mib} MiB")
    for volume_id, error in summary.failed.items():
        say(f"  failed {volume_id}: {error}")
    return summary
