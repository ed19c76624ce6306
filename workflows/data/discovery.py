"""What a folder holds: the volumes (with their labels) conversion reads, the scans and 2D images inference reads,
and which files are labels, not scans. The one home of scan discovery."""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pydicom

from transforms import is_dicom_series_folder, is_nifti, nifti_stem
from transforms.dicom_seg import is_dicom_seg, referenced_series_uid
from workflows.data.slice_set import Slice2D, find_2d_sets

__all__ = ["LABEL_LIKE", "OUTPUT_LIKE", "IMAGE_SUFFIXES_2D", "is_image_2d", "ScanList", "find_scans", "output_names", "planned_outputs", "VOLUME_OUTPUTS", "SERIES_OUTPUTS", "IMAGE_OUTPUTS", "VolumeSource", "find_volume_sources",
           "seg_labels_of", "describe_sources"]

#: File names that mark a label map (``segmentation-3.nii.gz``, ``ct_seg.nii.gz``, ``mask.png``), not a scan.
LABEL_LIKE = re.compile(r"(seg|label|mask)", re.IGNORECASE)
IMAGE_SUFFIXES_2D = (".png", ".jpg", ".jpeg")


def is_image_2d(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES_2D


#: What inference writes (``<name>_seg.nii.gz``, ``<name>_overlay.png``, ...): never read back as a scan.
OUTPUT_LIKE = re.compile(r"(_seg\.nii(\.gz)?|_seg\.dcm|_overlay\.png|_coronal\.png|_mask\.png|_prediction\.png"
                         r"|^summary\.(csv|json)|^report\.html|^\.rows)$", re.IGNORECASE)


@dataclass(frozen=True)
class ScanList:
    """What :func:`find_scans` found: the scans, and the files beside them it left out with the reason."""

    scans: list[Path]
    skipped: list[tuple[Path, str]]


def _why_not_a_scan(path: Path) -> str | None:
    if OUTPUT_LIKE.search(path.name):
        return "an output of this tool"
    if path.name.startswith("."):
        return "hidden"
    if path.is_dir():
        return None if is_dicom_series_folder(path) else "a folder without a DICOM series"
    if not (is_nifti(path) or is_image_2d(path)):
        return "not a NIfTI file or 2D image"
    if LABEL_LIKE.search(path.name):
        return "named like a label (seg, label, mask)"
    if not path.is_file():
        return "not a regular file"
    return None


def find_scans(path: str | os.PathLike) -> ScanList:
    """The scans to segment at ``path``: itself when it is a file or a DICOM series folder, else the NIfTI files,
    DICOM series folders and 2D images directly in it; labels, the tool's own outputs and other files left out,
    each with its reason.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds nothing to segment.
    """
    path = Path(path)
    _check_input(path)
    if path.is_file() or is_dicom_series_folder(path):
        return ScanList([path], [])
    scans, skipped = [], []
    for entry in sorted(path.iterdir()):
        reason = _why_not_a_scan(entry)
        (skipped.append((entry, reason)) if reason else scans.append(entry))
    if not scans:
        raise FileNotFoundError(f"--input {path}: no NIfTI file, DICOM series folder or 2D image in it.")
    return ScanList(scans, skipped)


def _check_input(path: Path) -> None:
    """``--input`` must be a regular file or a folder: a pipe would block its reader forever."""
    if not path.exists():
        what = "a symbolic link to nothing (or to itself)" if path.is_symlink() else "no such file or folder"
        raise FileNotFoundError(f"--input {path}: {what}.")
    if not (path.is_file() or path.is_dir()):
        raise ValueError(f"--input {path}: not a regular file or folder (a pipe, socket or device); give a scan file "
                         "or a folder.")


def output_names(scans: list[Path]) -> dict[Path, str]:
    """The name each scan's outputs carry, unique among ``scans`` (letter case aside, for file systems that ignore
    it): its stem (``volume-3`` of ``volume-3.nii.gz``, a series folder's name), or, where two scans share a stem
    (``scan.nii`` and ``scan.nii.gz``), the whole file name with dots as ``_`` (``scan_nii``, ``scan_nii_gz``); a
    name still taken (``scan_nii.nii.gz`` beside those) gets ``-2``, ``-3``, ... in input order. No scan's output
    replaces another's."""
    stems = {scan: (nifti_stem(scan) if is_nifti(scan) else scan.stem if scan.is_file() else scan.name) for scan in scans}
    counts = Counter(stem.lower() for stem in stems.values())
    names, taken = {}, set()
    for scan in scans:
        base = stems[scan] if counts[stems[scan].lower()] == 1 else scan.name.replace(".", "_")
        name, k = base, 2
        while name.lower() in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name.lower())
        names[scan] = name
    return names


#: The endings of the files inference writes per scan: a volume's mask, pictures and DICOM SEG; a 2D image's mask
#: and picture (the one list of them).
VOLUME_OUTPUTS = ("_seg.nii.gz", "_overlay.png", "_coronal.png")
SERIES_OUTPUTS = ("_seg.dcm",)
IMAGE_OUTPUTS = ("_mask.png", "_prediction.png")


def planned_outputs(scan: Path, name: str) -> list[str]:
    """The files inference writes for ``scan`` under its output ``name``."""
    endings = IMAGE_OUTPUTS if is_image_2d(scan) else VOLUME_OUTPUTS + (SERIES_OUTPUTS if scan.is_dir() else ())
    return [f"{name}{ending}" for ending in endings]


@dataclass(frozen=True)
class VolumeSource:
    """One volume to convert: a NIfTI file or a DICOM series folder, with its label when it has one; or the
    slices of one volume of a 2D set (``slices``)."""

    volume_id: str
    kind: str  # "lits", "msd", "nifti", "dicom" or "2d"
    image: Path | None = None
    label: Path | None = None
    slices: tuple[Slice2D, ...] = ()
    segs: tuple[Path, ...] = ()  # DICOM SEG objects labelling a DICOM series (liver, tumour)
    patient_id: str = ""  # a DICOM series' PatientID: volumes of one patient stay in one split

    @property
    def labelled(self) -> bool:
        return self.label is not None or bool(self.segs) or any(s.mask for s in self.slices)

    @property
    def set_name(self) -> str:
        """A 2D volume's set: the folder holding its ``images/`` (``liver_png_2d``)."""
        return self.slices[0].image.parent.parent.name if self.slices else ""

    @property
    def where(self) -> str:
        return str(self.image) if self.image is not None else str(self.slices[0].image.parent)



def _clean_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "scan"


def find_volume_sources(root: str | os.PathLike, label: str | os.PathLike | None = None) -> tuple[list[VolumeSource], list[str]]:
    """What ``root`` holds: LiTS pairs (``volume-N`` + ``segmentation-N``), the MSD Task03 layout
    (``imagesTr/liver_N`` + ``labelsTr/liver_N``), DICOM series folders (label: a NIfTI inside the folder, or
    ``segmentation-<id>.nii[.gz]`` beside a folder named ``volume-<id>``), other NIfTI volumes (unlabeled), and
    2D sets. ``root`` may also be one NIfTI file or one series folder, with ``label`` its label.

    Returns the sources and notes about files left out. Raises ``ValueError`` when two sources share an id.
    """
    root = Path(root)
    _check_input(root)
    notes: list[str] = []
    if root.is_file() or is_dicom_series_folder(root):
        name = nifti_stem(root) if root.is_file() else root.name
        match = re.fullmatch(r"volume-(.+)", name)
        volume_id = _clean_id(match.group(1) if match else name)
        if label is None and match:  # a LiTS volume finds its segmentation beside it
            label = next((p for p in (root.parent / f"segmentation-{match.group(1)}{e}" for e in (".nii.gz", ".nii"))
                          if p.exists()), None)
        if root.is_dir():
            segs = () if label else seg_labels_of(root)
            if segs and segs[0].parent == root.parent:  # a series of a study: named with the study, as above
                volume_id = _clean_id(f"{root.parent.name}_{root.name}")
            return [VolumeSource(volume_id, "dicom", root, Path(label) if label else None, segs=segs,
                                 patient_id=_patient_id(root))], notes
        return [VolumeSource(volume_id, "nifti", root, Path(label) if label else None)], notes
    if label is not None:
        raise ValueError(f"--label pairs with one scan (a NIfTI file or a DICOM series folder); {root} holds several.")

    sources: list[VolumeSource] = []
    dicom_dirs = sorted(d for d in [root, *root.rglob("*")] if d.is_dir() and not d.name.startswith(".")
                        and is_dicom_series_folder(d))
    used_labels: set[Path] = set()
    segs = {folder: seg_labels_of(folder) for folder in dicom_dirs}
    for folder in dicom_dirs:
        match = re.fullmatch(r"volume-(.+)", folder.name)
        name = match.group(1) if match else folder.name
        # series of several studies share names (31_EQP_Ax5.00mm): the study folder's name tells them apart (a
        # folder holding SEG objects beside its series is a study, even when it is the input itself)
        in_study = folder.parent not in (root, root.parent) or (bool(segs[folder]) and segs[folder][0].parent == folder.parent)
        volume_id = _clean_id(name if match or not in_study else f"{folder.parent.name}_{name}")
        inside = sorted(p for p in folder.iterdir() if is_nifti(p))
        beside = [folder.parent / f"segmentation-{name}{ext}" for ext in (".nii.gz", ".nii")]
        found = inside[:1] or [p for p in beside if p.exists()][:1]
        used_labels.update(found)
        sources.append(VolumeSource(volume_id, "dicom", folder, found[0] if found else None,
                                    segs=() if found else segs[folder], patient_id=_patient_id(folder)))
    sources = _labelled_series_of_studies(sources, notes)

    entries = sorted(p for p in root.rglob("*") if not p.name.startswith("."))
    for path in entries:  # named like a scan but nothing a reader can open: said, never silently passed over
        if is_nifti(path) and not path.is_file() and not path.is_dir():
            what = "a symbolic link to nothing (or to itself)" if path.is_symlink() and not path.exists() else \
                "not a regular file (a pipe, socket or device)"
            notes.append(f"left out {path}: {what}")
    niftis = [p for p in entries if p.is_file() and is_nifti(p)]
    niftis = [p for p in niftis if p not in used_labels and not any(d in p.parents for d in dicom_dirs)]
    lits_labels = {m.group(1): p for p in niftis if (m := re.fullmatch(r"segmentation-(.+)", nifti_stem(p)))}
    for path in niftis:
        stem = nifti_stem(path)
        if (m := re.fullmatch(r"volume-(.+)", stem)) is not None:
            sources.append(VolumeSource(_clean_id(m.group(1)), "lits", path, lits_labels.get(m.group(1))))
        elif path.parent.name in ("imagesTr", "imagesTs") and (m := re.fullmatch(r"liver_(\d+)", stem)):
            msd_label = path.parent.parent / "labelsTr" / path.name
            sources.append(VolumeSource(m.group(1), "msd", path, msd_label if msd_label.exists() else None))
        elif path.parent.name == "labelsTr" or re.fullmatch(r"segmentation-(.+)", stem):
            continue
        elif LABEL_LIKE.search(stem):
            notes.append(f"left out {path}: looks like a label without its scan (pair it with --input SCAN --label)")
        else:
            sources.append(VolumeSource(_clean_id(stem), "nifti", path, None))

    by_volume: dict[str, list[Slice2D]] = defaultdict(list)
    for item in find_2d_sets(root):
        by_volume[_clean_id(item.volume_id)].append(item)
    sources += [VolumeSource(vid, "2d", slices=tuple(items)) for vid, items in sorted(by_volume.items())]

    seen: dict[str, VolumeSource] = {}
    for source in sources:
        if source.volume_id in seen:
            raise ValueError(
                f"volume id {source.volume_id!r} is found twice: {seen[source.volume_id].where} and {source.where}; "
                "convert them into separate outputs or rename one."
            )
        seen[source.volume_id] = source
    return sources, notes


def _first_image(series: Path) -> Path | None:
    return next((p for p in sorted(series.iterdir()) if p.is_file() and not p.name.startswith(".")
                 and pydicom.misc.is_dicom(str(p)) and not is_dicom_seg(p)), None)


def _header_value(series: Path, tag: str) -> str:
    first = _first_image(series)
    return str(pydicom.dcmread(first, stop_before_pixels=True, specific_tags=[tag]).get(tag, "") or "") if first else ""


def _patient_id(series: Path) -> str:
    return _header_value(series, "PatientID").strip()


def seg_labels_of(series: Path) -> tuple[Path, ...]:
    """The DICOM SEG objects inside ``series`` or beside it (in its study folder) that label it: those whose
    ReferencedSeriesSequence names its SeriesInstanceUID, and those whose file name or series description starts
    with the series folder's name (``31_EQP_Ax5.00mm_ManualROI_Liver.dcm``) even when they reference another
    series: such a SEG is refused by name when the volume's labels are read, never dropped while the SEG beside it
    is used (a tumour SEG alone would label the tumour as the whole liver)."""
    candidates = [p for folder in (series, series.parent) for p in sorted(folder.iterdir())
                  if p.is_file() and p.suffix.lower() in (".dcm", "") and is_dicom_seg(p)]
    if not candidates:
        return ()
    uid = _header_value(series, "SeriesInstanceUID")
    found = []
    for path in candidates:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        referenced = referenced_series_uid(header)
        named = path.name.startswith(series.name) or str(header.get("SeriesDescription", "")).startswith(series.name)
        if (referenced and uid and referenced == uid) or named:
            found.append(path)
    return tuple(found)


def _labelled_series_of_studies(sources: list[VolumeSource], notes: list[str]) -> list[VolumeSource]:
    """In a study folder where some series are labelled (a SEG or NIfTI label), the unlabelled series (another
    phase of the same patient) are left out with a note: a slice set should not mix labelled and unlabelled
    series of one patient."""
    labelled_studies = {s.image.parent for s in sources if s.kind == "dicom" and s.labelled}
    kept = []
    for source in sources:
        if source.kind == "dicom" and not source.labelled and source.image.parent in labelled_studies:
            labelled = [s.image.name for s in sources if s.kind == "dicom" and s.labelled
                        and s.image.parent == source.image.parent]
            notes.append(f"left out {source.image}: no label for this series (its study's labelled series: "
                         f"{', '.join(labelled)}); convert it alone with --input {source.image} for unlabelled slices")
        else:
            kept.append(source)
    return kept


def describe_sources(sources: list[VolumeSource]) -> str:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    names = {"lits": "LiTS volume(s)", "msd": "MSD Task03 volume(s)", "dicom": "DICOM series",
             "nifti": "other NIfTI volume(s)", "2d": "2D-set volume(s)"}
    for source in sources:
        counts[source.kind][0] += 1
        counts[source.kind][1] += source.labelled
    parts = [f"{n} {names[kind]} ({labelled} labelled)" for kind, (n, labelled) in counts.items()]
    return "found " + (", ".join(parts) if parts else "nothing to convert")
