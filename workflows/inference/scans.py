"""Segment new scans with a trained model: the Python the bundle's ``inference`` workflow names.

``inference.json`` wires the pieces the model zoo's way: ``preprocessing`` (``transforms.canonical_grey`` then
``transforms.network_input``, the same definition training reads its slices through), ``inferer`` (MONAI's
``SliceInferer``), ``evaluator`` (a ``SupervisedEvaluator``) and ``postprocessing`` (``Invertd`` back to the
scan's grid, sigmoid, threshold, LiTS labels, the largest liver, tumour inside the liver, and
:class:`SaveScanMaskd`). :class:`ScanInference` feeds the evaluator one scan at a time, so a bad scan is reported
and skipped while the others are segmented.

Outputs per volume (NIfTI file or DICOM series folder): ``<name>_seg.nii.gz`` on the scan's own grid (its shape and
affine; 0 background, 1 liver, 2 tumour), ``<name>_seg.dcm`` (DICOM SEG) for a DICOM series, and
``<name>_overlay.png``. One 2D image (a windowed PNG/JPG slice, as the Kaggle export) gives ``<name>_mask.png`` and
the reference's side-by-side picture. ``summary.json`` / ``summary.csv``: one row per scan, volumes in mL.

Each finished scan leaves its row in ``.rows/<name>.json`` with the model and the scan it came from: a rerun skips
the scans whose outputs are there (``overwrite`` redoes them; outputs of another model or of a scan changed since
are refused by name, never silently mixed), and ``shard="I/N"`` segments share I of N of the scans, so N machines
fill one output folder; the summary is merged from the rows of every shard.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.data import MetaTensor, list_data_collate  # noqa: E402
from monai.engines import SupervisedEvaluator  # noqa: E402
from monai.transforms import Compose, Invertd, MapTransform  # noqa: E402
from tqdm import tqdm  # noqa: E402

from networks import ThreeLevelUNet, load_reference_state_dict  # noqa: E402
from workflows.machine.precision import InferenceNetwork  # noqa: E402
from transforms import (  # noqa: E402
    TARGET_CHANNELS, InvalidScanError, is_nifti, liver_mask, nifti_stem, target_to_lits, to_canonical, tumour_mask,
    unwrap_transform_error,
)
from workflows.machine.atomic import write_bytes_atomic, write_csv_atomic, write_json_atomic  # noqa: E402
from workflows.inference.dicom_seg import write_dicom_seg  # noqa: E402
from workflows.engine.model_file import read_torch_file  # noqa: E402
from workflows.data.discovery import (  # noqa: E402
    IMAGE_OUTPUTS, SERIES_OUTPUTS, VOLUME_OUTPUTS, ScanList, find_scans, is_image_2d, output_names, planned_outputs,
)
from workflows.machine.settings import flag  # noqa: E402
from workflows.machine.locking import folder_lock  # noqa: E402
from workflows.machine.shards import parse_shard, share, shard_lock  # noqa: E402
from workflows.data.pictures import coronal, montage, overlay, save_figure  # noqa: E402
from workflows.inference.quality import lesion_table, quality_flags  # noqa: E402
from workflows.inference.report import write_report  # noqa: E402
from workflows.data.slice_set import read_grey_slice  # noqa: E402
from workflows.data.liver_boxes import UNKNOWN_SPACING_MM  # noqa: E402

__all__ = ["NOT_SEGMENTED", "not_segmented", "load_weights", "ScanDataset", "SomeScansFailed", "CurrentScan", "SaveScanMaskd", "ScanInference"]

logger = logging.getLogger("liver_ct.inference")


def load_weights(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Weights from ``model.pt``, a training checkpoint (``{"model": ...}``) or the reference project's state_dict.
    A file that does not fit the network fails naming the setting that differs."""
    state = read_torch_file(path)
    if isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        return load_reference_state_dict(network, state)
    except ValueError:
        hints = []
        # the hints read the ThreeLevelUNet's layer names; another architecture says which keys differ
        final = state.get("final.weight") if isinstance(network, ThreeLevelUNet) else None
        if final is not None and final.shape[0] != network.out_channels:
            hints.append(f"the checkpoint has {final.shape[0]} output channel(s), the network {network.out_channels}: "
                         "set --target to what it was trained for (liver/tumor: 1, both: 2)")
        first = state.get("enc1.conv.0.weight")
        widths = [int(state[k].shape[0]) for k in ("enc1.conv.0.weight", "enc2.conv.0.weight", "enc3.conv.0.weight",
                                                   "bottleneck.conv.0.weight") if k in state]
        if first is not None and final is not None and tuple(widths) != tuple(network.channels):
            shown = str(widths).replace(" ", "")
            hints.append(f"the checkpoint was trained with network_def#channels {shown}, the network has "
                         f"{str(list(network.channels)).replace(' ', '')}: pass --network_def#channels \"{shown}\" "
                         f"(workflows.infer: --channels {' '.join(map(str, widths))})")
        raise ValueError(f"{path} does not fit the configured network: " + ("; ".join(hints) or "keys differ")) from None


class ScanDataset(torch.utils.data.Dataset):
    """The scans under ``input`` (:func:`workflows.data.discovery.find_scans`), each item
    ``transform({"image": path, "name": output name})``. The bundle's ``dataset``; 2D images are listed too and
    segmented apart (they have no volume grid)."""

    def __init__(self, input: str | os.PathLike, transform=None, deidentify: bool = False) -> None:
        self.input, self.transform, self.deidentify = Path(input), transform, flag(deidentify, "deidentify")
        self._found: ScanList | None = None

    @property
    def found(self) -> ScanList:
        if self._found is None:  # listed when used, so building the bundle's objects never fails on --input
            self._found = find_scans(self.input)
            self.names = ({scan: f"scan-{k + 1:03d}" for k, scan in enumerate(self._found.scans)} if self.deidentify
                          else output_names(self._found.scans))
            self._left_out = {p: f"left-out-{k + 1:03d}" for k, (p, _) in enumerate(self._found.skipped)}
        return self._found

    @property
    def scans(self) -> list[Path]:
        return self.found.scans

    def __len__(self) -> int:
        return len(self.scans)

    def shown(self, path: Path, text: str | None = None) -> str:
        """How ``path`` (or a ``text`` naming it) appears in summaries and logs: as given, or, de-identified, by
        a neutral name only (folder and file names may carry a patient's name)."""
        text = str(path) if text is None else text
        if not self.deidentify:
            return text
        _ = self.found  # lists (and names) the scans on first use
        neutral = self.names.get(path) or self._left_out.get(path, "input")
        text = text.replace(str(path), neutral).replace(str(self.input), "input")
        # a message about a series names its files (DOE_JOHN_IM0009.dcm): each becomes "a file of <neutral>"
        inside = sorted((p.name for p in path.iterdir()), key=len, reverse=True) if path.is_dir() else []
        for name in [*inside, path.name, self.input.name]:
            if name:
                text = text.replace(name, f"a file of {neutral}" if name in inside else neutral)
        return text

    def __getitem__(self, index: int) -> dict:
        scan = self.scans[index]
        item = {"image": str(scan), "name": self.names[scan]}
        return self.transform(item) if self.transform is not None else item


def _content_hash(path: Path) -> str:
    """SHA-1 of a file's bytes, computed once per file version (path, size, modification time)."""
    stat = path.stat()
    return _hash_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _hash_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


#: what a summary cell holds for a structure the model does not segment (never a zero: that would say "none found")
NOT_SEGMENTED = "not segmented by this model"


def not_segmented(target: str, fields: tuple[str, str] = ("liver_ml", "tumour_ml")) -> dict:
    """The summary's liver and tumour fields a model of ``target`` does not segment, each :data:`NOT_SEGMENTED`: a
    liver model's tumour, a tumour model's liver (its liver is where it found tumour)."""
    segmented = TARGET_CHANNELS[target]
    return {field: NOT_SEGMENTED for field, what in zip(fields, ("liver", "tumor")) if what not in segmented}


class SomeScansFailed(ValueError):
    """Scans that could not be segmented; the others were. ``rows`` is the whole summary."""

    def __init__(self, rows: list[dict], summary: Path) -> None:
        failed = [r for r in rows if r.get("error")]
        done = sum(1 for r in rows if r.get("segmentation"))
        super().__init__(f"{len(failed)} scan(s) failed ({'; '.join(r['error'] for r in failed[:3])}"
                         f"{' ...' if len(failed) > 3 else ''}); {done} segmented; every row in {summary}")
        self.rows = rows


class CurrentScan:
    """The evaluator's data: one batch, the scan being segmented now (:class:`ScanInference` sets it)."""

    def __init__(self) -> None:
        self.batch: dict | None = None

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        yield self.batch


class SaveScanMaskd(MapTransform):
    """The writer at the end of ``postprocessing``: a LiTS label map on the scan's own grid (under ``keys``, its
    meta from ``Invertd``) to ``<name>_seg.nii.gz`` (the NIfTI source's own header, or the series' affine), a DICOM
    SEG for a DICOM series, and ``<name>_overlay.png``; the summary row goes to ``d["row"]``.

    Args:
        output_dir: where the files go.
        target: what the model segments (``liver``, ``tumor``, ``both``): the segments a DICOM SEG holds.
        image_key: the network input, inverted to the scan's grid too, drawn under the mask.
    """

    def __init__(self, keys, output_dir: str, target: str = "liver", image_key: str = "image", deidentify: bool = False,
                 trained_slice_mm: float | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.target, self.image_key = Path(output_dir), target, image_key
        self.trained_slice_mm = trained_slice_mm
        self.deidentify = flag(deidentify, "deidentify")

    def __call__(self, data: Mapping[Hashable, MetaTensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d["row"] = self._write(d[key], d.get(self.image_key), d.get("name"), d.get("qc"))
        return d

    def _write(self, pred: MetaTensor, image: MetaTensor | None, name: str | None, qc: dict | None = None) -> dict:
        qc = dict(qc or {})
        scan = Path(pred.meta["filename_or_obj"])
        array = pred[0].detach().cpu().numpy().astype(np.uint8)
        affine = pred.affine.detach().cpu()
        expected = tuple(int(s) for s in pred.meta["spatial_shape"])
        if array.shape != expected or not np.allclose(affine.numpy(), np.asarray(pred.meta["original_affine"]), atol=1e-3):
            raise RuntimeError(f"{scan}: the mask did not return to the scan's grid (internal error).")
        name = name or (nifti_stem(scan) if scan.is_file() else scan.name)
        output = self.output_dir / f"{name}_seg.nii.gz"
        if is_nifti(scan):  # the scan's own header: same affine, qform and sform codes, as a viewer expects
            source = nib.load(scan)
            header = source.header.copy()
            header.set_data_dtype(np.uint8)
            header.set_slope_inter(1.0, 0.0)
            for text in ("descrip", "aux_file", "intent_name", "db_name"):  # free text may name the patient
                if text in header:
                    header[text] = b""
            header.extensions.clear()
            seg = nib.Nifti1Image(array, source.affine, header)
        else:
            seg = nib.Nifti1Image(array, affine.numpy())
        write_bytes_atomic(output, gzip.compress(seg.to_bytes(), mtime=0))
        row = {"scan": name if self.deidentify else str(scan), "segmentation": str(output),
               "shape": "x".join(map(str, array.shape))}
        if pred.meta.get("series_notes"):  # images a DICOM series left out (a reformat, a localizer, a copy)
            notes = pred.meta["series_notes"]
            row["notes"] = f"{len(notes)} note(s) withheld (de-identified)" if self.deidentify else "; ".join(notes)
        spacing = torch.linalg.norm(affine[:3, :3], dim=0)
        voxel_ml = float(torch.prod(spacing)) / 1000.0
        row["liver_ml"] = round(float(np.count_nonzero(liver_mask(array))) * voxel_ml, 2)
        row["tumour_ml"] = round(float(np.count_nonzero(tumour_mask(array))) * voxel_ml, 2)
        row.update(not_segmented(self.target))
        if scan.is_dir() and self.deidentify:  # a SEG must carry its series' patient and study to attach to them
            row["dicom_seg"] = "not written: de-identified outputs (a DICOM SEG carries the patient and study)"
        elif scan.is_dir():  # a DICOM series also gets a DICOM SEG referencing it, for PACS and DICOM viewers
            try:
                row["dicom_seg"] = str(write_dicom_seg(array, affine, scan, self.output_dir / f"{name}_seg.dcm",
                                                       self.target))
            except ValueError as err:  # the NIfTI mask stands; say why there is no SEG
                logger.warning(f"no DICOM SEG for {scan}: {err}")
                row["dicom_seg"] = f"not written: {err}"
        canonical = to_canonical(MetaTensor(torch.as_tensor(array)[None], affine=affine))
        label = canonical[0].numpy()  # the radiological view, whatever the stored orientation
        canonical_spacing = torch.linalg.norm(canonical.affine[:3, :3].float(), dim=0).tolist()
        flags = quality_flags(label, canonical_spacing, qc, self.trained_slice_mm, self.target)
        row["flags"] = "; ".join(flags)
        row.update(qc)
        row["slice_mm"] = round(float(canonical_spacing[2]), 3)
        if "tumor" in TARGET_CHANNELS[self.target]:
            lesions = lesion_table(label, canonical_spacing)
            row["lesions"] = len(lesions)
            row["largest_lesion_mm"] = lesions[0]["longest_axial_mm"] if lesions else None
            row["lesion_table"] = lesions
        else:
            row["lesions"] = NOT_SEGMENTED
        if image is not None:
            grey = to_canonical(MetaTensor(torch.as_tensor(image.detach().cpu().float()).as_subclass(torch.Tensor), affine=affine))[0].numpy()
            grey = np.clip(np.floor(grey * 255 + 0.5), 0, 255).astype(np.uint8)
            montage(grey, label, self.output_dir / f"{name}_overlay.png", name)
            coronal(grey, label, canonical_spacing, self.output_dir / f"{name}_coronal.png", name)
        return row


class ScanInference:
    """Segment every scan under ``input`` (a NIfTI file, a DICOM series folder, a folder of either, or one 2D
    image) into ``output_dir`` with the bundle's ``evaluator``; returns one summary row per scan.

    Args:
        network: the network the evaluator runs (weights loaded here from ``ckpt_file``; a ``.ts`` file from
            ``python -m monai.bundle ckpt_export`` replaces it).
        evaluator: a ``SupervisedEvaluator`` reading ``scan`` with the inferer and postprocessing.
        dataset: a :class:`ScanDataset` whose transform is the preprocessing.
        scan: the evaluator's :class:`CurrentScan`.
        network_input: the preprocessing's last step, used alone for 2D images (grey levels already).
        target: what the model segments.
        context: neighbouring slices on each side the network takes (a 2D image repeats itself as its neighbours).
        tumour_staged: the model file's tumour stage (:class:`workflows.inference.cascade.TumourStaged`), applied
            to 2D images here (the postprocessing applies it to volumes); ``None`` or disabled: one stage.
        shard: ``"I/N"``: segment share I of N of the scans (:mod:`workflows.machine.shards`); ``None``: all.
        overwrite: segment again the scans a run before finished (default: skip them).
    """

    def __init__(self, network: torch.nn.Module, ckpt_file: str, output_dir: str, evaluator: SupervisedEvaluator,
                 dataset: ScanDataset, scan: CurrentScan, network_input: Compose, target: str = "liver",
                 context: int = 0, tumour_staged=None, shard: str | None = None, overwrite: bool | str = False) -> None:
        if target not in TARGET_CHANNELS:
            raise ValueError(f"`target` must be one of {list(TARGET_CHANNELS)}, got {target!r}.")
        self.shard, self.overwrite = parse_shard(shard), flag(overwrite, "overwrite")
        self.network, self.ckpt_file, self.output_dir = network, ckpt_file, Path(output_dir)
        self.evaluator, self.dataset, self.scan = evaluator, dataset, scan
        self.network_input, self.target = network_input, target
        self.context, self.tumour_staged = int(context), tumour_staged
        self.invert_2d = Invertd(keys="pred", transform=network_input, orig_keys="image", nearest_interp=False)

    def run(self) -> list[dict]:
        if str(self.ckpt_file).endswith(".ts"):  # TorchScript from `python -m monai.bundle ckpt_export`
            scripted = torch.jit.load(self.ckpt_file, map_location=self.evaluator.state.device).eval()
            if isinstance(self.evaluator.network, InferenceNetwork):  # run it as the checkpoint would run
                self.evaluator.network.use(scripted)
            else:
                self.evaluator.network = scripted
        else:
            load_weights(self.network, self.ckpt_file)
            members = getattr(self.network, "members", None)
            if members is not None:
                logger.info(f"{len(members)} networks averaged per stage ({self.ckpt_file}, python -m workflows.ensemble)")
        found = self.dataset.found  # first: an input that is no file or folder (a symlink loop) is named as such
        source = self.dataset.input.resolve()
        if source.is_dir() and source in [self.output_dir.resolve(), *self.output_dir.resolve().parents]:
            where = "" if self.dataset.deidentify else f" {self.output_dir}"  # a path under the input may name the patient
            raise ValueError(f"--output_dir{where} is inside --input{'' if self.dataset.deidentify else ' ' + str(self.dataset.input)}: "
                             "the results would be mixed with the scans; choose an output folder outside the input.")
        lock, what = shard_lock(self.shard, "an inference")
        with folder_lock(self.output_dir, what, lock):
            return self._segment_all(found)

    # -- one row per finished scan, so a rerun skips it and shards share the summary --------------------------------
    def _check_naming(self) -> None:
        """Runs (shards, reruns) into one output folder must name scans alike: ``deidentify`` names them by position
        (``scan-001``), otherwise by file name; mixed, the summary would list half the scans. The first run records
        the setting in ``.rows/.naming.json``; a run that differs is refused by name."""
        path = self.output_dir / ".rows" / ".naming.json"  # a dot: no scan's record (``<name>.json``) takes its name
        mine = {"deidentify": self.dataset.deidentify}
        if path.is_file():
            try:
                theirs = json.loads(path.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError):
                theirs = None
            if isinstance(theirs, dict) and theirs.get("deidentify") != mine["deidentify"]:
                said = "with --deidentify" if theirs.get("deidentify") else "without --deidentify"
                raise ValueError(f"{self.output_dir}: was filled by a run {said}, and this run is "
                                 f"{'with' if mine['deidentify'] else 'without'} it: scans would be named two ways "
                                 f"(the summary would list half of them); run every shard {said}, or choose another "
                                 "output folder.")
        else:
            write_json_atomic(path, mine)

    def _record_path(self, scan: Path) -> Path:
        return self.output_dir / ".rows" / f"{self.dataset.names[scan]}.json"

    def _made_by(self, scan: Path) -> dict:
        """What a scan's outputs come from: the contents of the model file and of the scan's files (hashed: a file
        rewritten with the same bytes is the same; no path or name goes into the record)."""
        files = sorted(p for p in scan.iterdir() if p.is_file()) if scan.is_dir() else [scan]
        digest = hashlib.sha1()
        for path in files:
            digest.update(_content_hash(path).encode())
        return {"model": _content_hash(Path(self.ckpt_file)), "target": self.target, "scan": digest.hexdigest()[:16]}

    def _finished(self, scan: Path) -> dict | None:
        """The row of a scan a run before segmented (its outputs all there), else None. Outputs of another model,
        target or version of the scan are refused: replacing them is the user's call (``overwrite``)."""
        path = self._record_path(scan)
        if self.overwrite or not path.is_file():
            return None
        record = json.loads(path.read_text())
        row = record.get("row") or {}  # None: a run was killed while segmenting it
        if row.get("error") or not Path(row.get("segmentation") or "/nonexistent").exists():
            return None
        theirs, mine = record.get("made_by") or {}, self._made_by(scan)
        if theirs == mine:
            return row
        if self.dataset.deidentify and theirs.get("model") == mine["model"] and theirs.get("target") == mine["target"]:
            raise ValueError(f"{self.output_dir}: {Path(row['segmentation']).name} belongs to another scan: "
                             "de-identified names go by position in the input, and scans were added or removed "
                             "since; segment the input into a new output folder, or again with --overwrite (the "
                             "bundle: --overwrite true).")
        what = "another model or target" if theirs.get("scan") == mine["scan"] else \
            f"an earlier version of {self.dataset.shown(scan)}"
        raise ValueError(f"{self.output_dir}: {row.get('segmentation')} was made by {what}; segment it again with "
                         "--overwrite (the bundle: --overwrite true), or choose another output folder.")

    def _owned_outputs(self) -> set[str]:
        """The files of the output folder this tool wrote: the summaries beside its ``.rows`` records, and the files
        each record names (for a record from before they were named: the names inference gives its scan)."""
        rows = self.output_dir / ".rows"
        if not rows.is_dir():
            return set()
        owned = {"summary.json", "summary.csv", "report.html"}
        for record in rows.glob("*.json"):
            if record.name.startswith("."):  # the folder's naming record, not a scan's
                continue
            try:
                outputs = json.loads(record.read_text()).get("outputs")
            except (OSError, ValueError, AttributeError):
                continue
            if outputs is None:
                outputs = [record.stem + end for end in VOLUME_OUTPUTS + SERIES_OUTPUTS + IMAGE_OUTPUTS]
            owned.update(outputs)
        return owned

    def _refuse_foreign_files(self, scans: list[Path]) -> None:
        """Refuse, before anything is written, an output folder holding a file this tool did not write under a name
        it would write (the user's own ``ct_seg.nii.gz`` beside ``ct.nii.gz``, their ``summary.csv``)."""
        owned = self._owned_outputs()
        planned = [(name, scan) for scan in scans for name in planned_outputs(scan, self.dataset.names[scan])]
        for name, scan in [*planned, ("summary.json", None), ("summary.csv", None), ("report.html", None)]:
            path = self.output_dir / name
            if (path.exists() or path.is_symlink()) and name not in owned:
                what = f"an output for {self.dataset.shown(scan)}" if scan is not None else "the run's summary"
                raise ValueError(f"{path}: is already there and was not written by this tool ({what} would replace "
                                 "it); move it away, or choose another --output_dir.")

    def _segment_all(self, found: ScanList) -> list[dict]:
        left_out = []
        for path, reason in found.skipped:  # every file of the input has its line: nothing silently ignored
            logger.info(f"left out {self.dataset.shown(path)}: {reason}")
            left_out.append({"scan": self.dataset.shown(path), "segmentation": "", "skipped": reason})
        index_of = {scan: k for k, scan in enumerate(found.scans)}
        mine = share(found.scans, self.shard, key=str)
        if self.shard:
            logger.info(f"shard {self.shard[0]}/{self.shard[1]}: {len(mine)} of the {len(found.scans)} scans")
        self._refuse_foreign_files(mine)
        (self.output_dir / ".rows").mkdir(parents=True, exist_ok=True)  # marks the folder's summaries as this tool's
        self._check_naming()
        done = {scan: row for scan in mine if (row := self._finished(scan)) is not None}
        if done:
            logger.info(f"{len(done)} scan(s) already segmented in {self.output_dir}, skipped (--overwrite true "
                        "segments them again)")
        todo = [scan for scan in mine if scan not in done]
        failed, known = [], dict(done)  # rows read or written once, not re-read after every scan
        for scan in tqdm(todo, desc="segmenting", unit="scan", disable=len(todo) < 2):
            logger.info(f"segmenting {self.dataset.shown(scan)}")
            planned = planned_outputs(scan, self.dataset.names[scan])
            # recorded before any output is written: a kill part-way leaves files a rerun knows as its own
            write_json_atomic(self._record_path(scan), {"made_by": self._made_by(scan), "row": None, "outputs": planned})
            try:  # a bad scan is reported and skipped; the others are segmented
                row = self.segment_image(scan) if is_image_2d(scan) else self.segment_volume(index_of[scan])
            except (RuntimeError, ValueError) as raised:
                err = unwrap_transform_error(raised)
                if isinstance(err, OSError):  # a full or read-only disk: the whole run stops, in one line
                    raise err from None
                if not isinstance(err, ValueError):  # not a bad scan: a bug, shown with its traceback
                    raise
                message = self.dataset.shown(scan, str(err))
                logger.error(f"FAILED {self.dataset.shown(scan)}: {message}")
                row = {"scan": self.dataset.shown(scan), "segmentation": "", "error": message}
                failed.append(row)
            outputs = [name for name in planned if (self.output_dir / name).exists()]
            write_json_atomic(self._record_path(scan), {"made_by": self._made_by(scan), "row": row, "outputs": outputs})
            known[scan] = row
            self._write_summary(left_out, found, known)  # as each scan finishes: a kill keeps what was done
        rows = self._write_summary(left_out, found, known)
        if failed:
            raise SomeScansFailed(rows, self.output_dir / "summary.csv")
        return rows

    def _write_summary(self, left_out: list[dict], found: ScanList, known: dict[Path, dict]) -> list[dict]:
        """The summary of every scan finished in the output folder (by any shard), in input order; ``known`` holds
        the rows already read or written by this run (another shard's are read once, when they appear)."""
        rows = list(left_out)
        for scan in found.scans:
            if scan not in known and self._record_path(scan).is_file():
                row = json.loads(self._record_path(scan).read_text())["row"]
                if row:  # None: another shard is segmenting it now
                    known[scan] = row
            if scan in known:
                rows.append(known[scan])
        write_json_atomic(self.output_dir / "summary.json", rows)
        columns = [c for c in dict.fromkeys(key for row in rows for key in row) if c != "lesion_table"]
        write_csv_atomic(self.output_dir / "summary.csv", rows, columns, spreadsheet=True)
        write_report(self.output_dir, rows, self.dataset.deidentify)
        return rows

    def segment_volume(self, index: int) -> dict:
        self.scan.batch = list_data_collate([self.dataset[index]])
        self.evaluator.run()
        return self.evaluator.state.output[0]["row"]

    def segment_image(self, path: Path) -> dict:
        try:
            grey = read_grey_slice(path)[0]
        except ValueError as err:
            raise InvalidScanError(str(err)) from None
        item = self.network_input({"image": MetaTensor(torch.as_tensor(grey, dtype=torch.float32)[None])})
        network = self.evaluator.network
        image = item["image"][None].repeat(1, 2 * self.context + 1, 1, 1)  # no neighbours: the image repeats
        with torch.no_grad():
            logits = network(image.to(self.evaluator.state.device))[0].cpu()
        item["pred"] = MetaTensor(logits, meta=item["image"].meta)
        logits = self.invert_2d(item)["pred"]
        if self.tumour_staged is not None and self.tumour_staged.enabled:  # no spacing in a 2D image: LiTS's median
            logits = self.tumour_staged.replace_tumour_2d(torch.as_tensor(logits), grey, [UNKNOWN_SPACING_MM] * 2)
        label = target_to_lits(torch.sigmoid(torch.as_tensor(logits)).numpy(), self.target)
        name = self.dataset.names[path]
        mask_path = self.output_dir / f"{name}_mask.png"
        # 0/255 for liver (as the Kaggle masks), 0/128/255 when tumour is drawn too
        visible = np.where(tumour_mask(label), 255, np.where(liver_mask(label), 255 if self.target == "liver" else 128, 0))
        visible = visible.astype(np.uint8)
        write_bytes_atomic(mask_path, cv2.imencode(".png", visible)[1].tobytes())
        fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
        axes[0].imshow(grey, cmap="gray")
        axes[0].set_title("image")
        axes[1].imshow(overlay(grey, label))
        axes[1].set_title("prediction")
        for ax in axes:
            ax.axis("off")
        save_figure(fig, self.output_dir / f"{name}_prediction.png", dpi=90)
        return {"scan": self.dataset.shown(path), "segmentation": str(mask_path), "shape": "x".join(map(str, grey.shape)),
                "liver_pixels": int(np.count_nonzero(liver_mask(label))),
                "tumour_pixels": int(np.count_nonzero(tumour_mask(label))),
                **not_segmented(self.target, ("liver_pixels", "tumour_pixels"))}
