"""Which files of a DICOM series folder make one volume, in which order; refused when they cannot.

Hospital exports put more than the axial stack in a series folder: a localizer, a reformatted image of another
orientation (each ``hcc_tace_*`` series holds one coronal image among its axial ones), an exact copy of a file.
:func:`dicom_series` keeps the images of the series' own orientation, sorted along the slice normal, and says which
it left out. What cannot be one volume on a regular grid is refused with the files and the reason, never averaged
away: a missing slice (a gap larger than the usual step), uneven spacing, a tilted stack (gantry tilt), two images
at one position with different pixels, an image without position or orientation, a zero rescale slope.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from transforms.validation import InvalidScanError

__all__ = ["SPACING_TOLERANCE", "DicomSeries", "dicom_series", "check_series_geometry"]

#: Largest difference (mm) between two slice steps, or an in-plane shift between slices, still taken as regular.
SPACING_TOLERANCE = 0.05
#: A step this many times the usual one means slices are missing.
GAP_FACTOR = 1.5
_ORIENTATION_DECIMALS = 3  # direction cosines equal to 1e-3 are one orientation


@dataclass
class DicomSeries:
    """The images of one series folder that make the volume.

    Attributes:
        folder: the series folder.
        files: the image files kept, inferior to superior along the slice normal.
        all_images: every DICOM image file of the folder (kept or not).
        notes: one line per thing left out (named), for the user.
        step_mm: the distance between consecutive slices (0 for one slice).
    """

    folder: Path
    files: list[Path]
    all_images: list[Path]
    notes: list[str] = field(default_factory=list)
    step_mm: float = 0.0
    #: the geometry the kept images' tags give (LPS, mm): row and column cosines, PixelSpacing (between rows, between
    #: columns), the matrix (rows, columns) and the first and last image's position
    orientation: tuple[float, ...] = ()
    pixel_spacing: tuple[float, float] = (0.0, 0.0)
    matrix: tuple[int, int] = (0, 0)
    first_position: tuple[float, ...] = ()
    last_position: tuple[float, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether the volume is every image of the folder (nothing left out)."""
        return len(self.files) == len(self.all_images)


def _names(paths: list[Path], most: int = 4) -> str:
    shown = ", ".join(p.name for p in paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def _floats(header: pydicom.Dataset, name: str, count: int) -> np.ndarray | None:
    value = header.get(name)
    try:
        array = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (count,) and np.all(np.isfinite(array)) else None


#: DICOM objects that sit beside images but are not images of the series (labels, reports, presentation states)
NOT_IMAGES = ("SEG", "RTSTRUCT", "SR", "PR", "KO")


def dicom_series(folder: str | os.PathLike, modality: str | None = "CT") -> DicomSeries:
    """The checked, ordered images of the one series in ``folder``.

    Raises:
        InvalidScanError: no DICOM image, several series, another modality, or images that are not one regular
            volume (see the module docstring), naming the files and the reason.
    """
    folder = Path(folder)
    headers: list[tuple[Path, pydicom.Dataset]] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue  # not DICOM (a README, a thumbnail): ignore
        if "PixelData" not in header and not hasattr(header, "Rows"):
            continue  # DICOMDIR, SEG references without images, ...
        if header.get("Modality") in NOT_IMAGES:
            continue  # a segmentation, structure set or report kept with its series labels it: not an image
        headers.append((path, header))
    if not headers:
        raise InvalidScanError(f"{folder}: no DICOM image files in this folder (expected one CT series).")
    series = {str(h.get("SeriesInstanceUID", "")) for _, h in headers}
    if len(series) > 1:
        raise InvalidScanError(f"{folder}: holds {len(series)} DICOM series; put one series per folder.")
    modalities = {str(h.get("Modality", "")) for _, h in headers}
    if modality is not None and modalities != {modality}:
        raise InvalidScanError(
            f"{folder}: DICOM modality is {', '.join(sorted(modalities)) or 'missing'}, expected {modality}."
        )
    result = DicomSeries(folder, [], [p for p, _ in headers])

    localizers = [p for p, h in headers if "LOCALIZER" in [str(v).upper() for v in h.get("ImageType", [])]]
    if localizers:
        result.notes.append(f"{folder}: left out {len(localizers)} localizer image(s): {_names(localizers)}")
    headers = [(p, h) for p, h in headers if p not in localizers]

    unplaced = [p for p, h in headers
                if _floats(h, "ImagePositionPatient", 3) is None or _floats(h, "ImageOrientationPatient", 6) is None]
    if unplaced:
        raise InvalidScanError(f"{folder}: {_names(unplaced)} carry no valid ImagePositionPatient / "
                               "ImageOrientationPatient, so their place in the volume is unknown; remove them or "
                               "export the series again.")
    zero_slope = [p for p, h in headers if "RescaleSlope" in h and float(h.RescaleSlope) == 0.0]
    if zero_slope:
        raise InvalidScanError(f"{folder}: {_names(zero_slope)} have RescaleSlope 0, which maps every pixel to one "
                               "value; the files are damaged.")

    orientation = {p: tuple(np.round(_floats(h, "ImageOrientationPatient", 6), _ORIENTATION_DECIMALS) + 0.0)
                   for p, h in headers}
    counts = Counter(orientation.values()).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        raise InvalidScanError(f"{folder}: as many images in one orientation as in another ({counts[0][1]} each); "
                               "which is the series cannot be told. Put each stack in its own folder.")
    main = counts[0][0]
    other = [p for p, _ in headers if orientation[p] != main]
    if other:
        result.notes.append(f"{folder}: left out {len(other)} image(s) of another orientation (a reformat or "
                            f"localizer): {_names(other)}")
    headers = [(p, h) for p, h in headers if orientation[p] == main]

    row, column = np.array(main[:3]), np.array(main[3:])
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    positions = {p: _floats(h, "ImagePositionPatient", 3) for p, h in headers}
    headers.sort(key=lambda item: float(positions[item[0]] @ normal))

    kept: list[tuple[Path, pydicom.Dataset]] = []
    for path, header in headers:  # one image per position: exact copies dropped, different pixels refused
        if kept and abs(float((positions[path] - positions[kept[-1][0]]) @ normal)) < 1e-3:
            twin = kept[-1][0]
            if pydicom.dcmread(path).PixelData != pydicom.dcmread(twin).PixelData:
                raise InvalidScanError(f"{folder}: {twin.name} and {path.name} sit at the same position with "
                                       "different pixels; remove the one that does not belong.")
            result.notes.append(f"{folder}: left out {path.name}, an exact copy of {twin.name}")
            continue
        kept.append((path, header))
    result.files = [p for p, _ in kept]
    spacings = {p: _floats(h, "PixelSpacing", 2) for p, h in kept}
    unspaced = [p for p, value in spacings.items() if value is None or np.any(value <= 0)]
    if unspaced:
        raise InvalidScanError(f"{folder}: {_names(unspaced)} carry no valid PixelSpacing, so the voxel size is "
                               "unknown (reading it as 1 mm would make every volume wrong); export the series again "
                               "with its PixelSpacing.")
    first_spacing = spacings[kept[0][0]]
    other = [p for p, value in spacings.items() if np.max(np.abs(value - first_spacing)) > 1e-4]
    if other:
        raise InvalidScanError(f"{folder}: {_names(other)} have PixelSpacing {'/'.join(f'{v:g}' for v in spacings[other[0]])}"
                               f" mm, {kept[0][0].name} {'/'.join(f'{v:g}' for v in first_spacing)} mm; one volume "
                               "has one voxel size: remove the images that do not belong, or export the series again.")
    result.orientation = tuple(float(v) for v in _floats(kept[0][1], "ImageOrientationPatient", 6))
    result.pixel_spacing = (float(first_spacing[0]), float(first_spacing[1]))
    result.matrix = (int(kept[0][1].get("Rows", 0) or 0), int(kept[0][1].get("Columns", 0) or 0))
    result.first_position = tuple(float(v) for v in positions[kept[0][0]])
    result.last_position = tuple(float(v) for v in positions[kept[-1][0]])
    if len(kept) < 2:
        return result

    offsets = np.diff(np.stack([positions[p] for p, _ in kept]), axis=0)
    steps = offsets @ normal
    step = float(np.median(steps))
    shifts = np.linalg.norm(offsets - np.outer(steps, normal), axis=1)
    if float(shifts.max()) > SPACING_TOLERANCE:
        i = int(np.argmax(shifts))
        raise InvalidScanError(f"{folder}: the stack is tilted (gantry tilt): {kept[i + 1][0].name} is shifted "
                               f"{shifts[i]:.2f} mm in-plane from {kept[i][0].name} (tolerance {SPACING_TOLERANCE} mm); "
                               "resample it onto a regular grid first.")
    for i, value in enumerate(steps):
        if value > GAP_FACTOR * step:
            raise InvalidScanError(f"{folder}: slices are missing between {kept[i][0].name} and {kept[i + 1][0].name}: "
                                   f"a gap of {value:.2f} mm where the series steps {step:.2f} mm; export the "
                                   "whole series.")
        if abs(value - step) > SPACING_TOLERANCE:
            raise InvalidScanError(f"{folder}: uneven slice spacing: {value:.3f} mm between {kept[i][0].name} and "
                                   f"{kept[i + 1][0].name}, {step:.3f} mm elsewhere (tolerance {SPACING_TOLERANCE} mm); "
                                   "resample it onto a regular grid first.")
    result.step_mm = step
    return result


def check_series_geometry(series: DicomSeries, affine_ras: np.ndarray) -> None:
    """Refuse a volume whose affine (RAS, as the reader built it) is not the one the series' own tags give: voxel
    axes along the row, column and slice directions with PixelSpacing and the slice step as their lengths, and the
    first voxel at a corner of the stack. A reader that cannot parse a tag (over-long ImageOrientationPatient
    strings) falls back to a 1 mm identity grid without a word; that is refused here, by name.

    Raises:
        InvalidScanError: the geometries differ, naming both.
    """
    affine = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine_ras, dtype=float)[:3]  # RAS -> LPS, as the tags
    axes, origin = affine[:, :3], affine[:, 3]
    row, column = np.array(series.orientation[:3]), np.array(series.orientation[3:])
    normal = np.cross(row, column)
    expected = [(row, series.pixel_spacing[1]), (column, series.pixel_spacing[0])]
    if len(series.files) > 1:
        expected.append((normal / np.linalg.norm(normal), series.step_mm))
    lengths = np.linalg.norm(axes, axis=0)
    found = []
    for direction, spacing in expected:
        matches = [j for j in range(3) if lengths[j] > 0 and abs(abs(axes[:, j] @ direction) / lengths[j] - 1) < 1e-3
                   and abs(lengths[j] - spacing) <= 1e-3 * max(1.0, spacing)]
        found.append(bool(matches))
    rows, columns = series.matrix
    first, last = np.array(series.first_position), np.array(series.last_position)
    corners = [first + a * (columns - 1) * series.pixel_spacing[1] * row + b * (rows - 1) * series.pixel_spacing[0]
               * column + c * (last - first) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    placed = min(float(np.linalg.norm(origin - corner)) for corner in corners) < 1e-2 * max(1.0, float(lengths.max()))
    if not (all(found) and placed):
        read = " x ".join(f"{v:.3g}" for v in sorted(lengths))
        tags = " x ".join(f"{v:.3g}" for v in sorted(s for _, s in expected))
        raise InvalidScanError(f"{series.folder}: the reader built another geometry ({read} mm voxels) than the "
                               f"series' tags give ({tags} mm, ImageOrientationPatient, PixelSpacing and "
                               "ImagePositionPatient); a tag it could not parse (an over-long or malformed value) is "
                               "the usual cause: export the series again.")
