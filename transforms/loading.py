"""Load CT scans, a NIfTI file or a DICOM series folder, as channel-first HU volumes with their affine."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Hashable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from isal import igzip
from monai.config import DtypeLike, KeysCollection
from monai.data import MetaTensor, NibabelReader, PydicomReader
from monai.data.utils import correct_nifti_header_if_necessary
from monai.transforms import LoadImage, MapTransform, Transform
from monai.utils import ensure_tuple

from transforms.dicom_seg import is_dicom_seg, read_dicom_seg, referenced_series_uid
from transforms.dicom_series import NOT_IMAGES, check_series_geometry, dicom_series
from transforms.validation import InvalidScanError, check_volume

logger = logging.getLogger("liver_ct.loading")

__all__ = ["NIFTI_SUFFIXES", "MAX_VOXELS", "is_nifti", "nifti_stem", "is_dicom_series_folder", "dicom_series_files",
           "check_nifti_header", "LoadScan",
           "LoadScand", "LoadLabeld"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: the way out of a scan file that cannot be read
_AGAIN = "copy or export it again (a NIfTI .nii / .nii.gz file, or a DICOM series folder)."


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike) -> str:
    """``volume-3.nii.gz`` -> ``volume-3`` (both NIfTI suffixes removed)."""
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def is_dicom_series_folder(folder: str | os.PathLike, probe: int = 20) -> bool:
    """Whether ``folder`` holds DICOM files: one of its first ``probe`` files that are not hidden or NIfTI is DICOM
    (a README or thumbnail exported beside the images does not hide the series)."""
    candidates = (p for p in sorted(Path(folder).iterdir()) if p.is_file() and not p.name.startswith(".")
                  and not is_nifti(p))
    return any(_is_dicom_image(path) for _, path in zip(range(probe), candidates))


def _is_dicom_image(path: Path) -> bool:
    """A DICOM file that is an image (not a SEG, structure set or report stored beside a series)."""
    if not pydicom.misc.is_dicom(str(path)):
        return False
    try:
        modality = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality")
    except Exception:  # damaged: counted as DICOM, the series reader names the problem
        return True
    return modality not in NOT_IMAGES


def dicom_series_files(folder: str | os.PathLike, modality: str | None = "CT") -> list[Path]:
    """The image files of the one series in ``folder`` that make its volume, inferior to superior (localizers,
    reformats of another orientation and exact copies left out): :func:`transforms.dicom_series.dicom_series`.

    Raises:
        InvalidScanError: no DICOM file, more than one series, another modality, or not one regular volume.
    """
    return dicom_series(folder, modality).files


@contextlib.contextmanager
def _quiet_gpu_decoder_probe():
    """LoadImage builds every registered reader, including the GPU DICOM decoder, which warns on a CPU machine."""
    logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            warnings.filterwarnings("ignore", message=".*NvImgCodec.*")
            yield
    finally:
        logger.setLevel(level)


#: Largest volume read (voxels): 2**30 float32 voxels are 4 GiB, four times a 987-slice LiTS volume.
MAX_VOXELS = 2**30


def _is_nifti2(first_bytes: bytes) -> bool:
    """Whether a NIfTI file starting with these 4 bytes (``sizeof_hdr``) is NIfTI-2: a 540-byte header, not 348."""
    return 540 in (int.from_bytes(first_bytes, "little"), int.from_bytes(first_bytes, "big"))


def check_nifti_header(path: str | os.PathLike) -> None:
    """Refuse, from the header alone and before any voxel is allocated, a NIfTI whose geometry cannot be used or
    whose size is not what it says: a NaN or sheared affine, a zero voxel size, more than :data:`MAX_VOXELS` voxels,
    an uncompressed file shorter than its header describes.

    Raises:
        InvalidScanError: naming the file and the value found.
    """
    path = Path(path)
    try:  # the header as stored: nibabel's loader silently sets a 0 pixdim to 1
        with nib.openers.ImageOpener(path) as handle:
            nifti2 = _is_nifti2(handle.read(4))
            handle.seek(0)
            header = (nib.Nifti2Header if nifti2 else nib.Nifti1Header).from_fileobj(handle, check=False)
        shape = tuple(int(n) for n in header.get_data_shape())
        zooms = tuple(float(z) for z in header["pixdim"][1:4])
        affine = np.asarray(header.get_best_affine(), dtype=float)
    except Exception as err:  # not even a header: the reader says why
        raise InvalidScanError(f"{path}: cannot be read ({type(err).__name__}: {err}); {_AGAIN}") from err
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > MAX_VOXELS:
        raise InvalidScanError(f"{path}: the header describes {shape} = {voxels:,} voxels, more than the "
                               f"{MAX_VOXELS:,} this tool reads; crop or resample the scan first.")
    if not str(path).lower().endswith(".gz"):
        expected = int(header.get_data_offset()) + voxels * np.dtype(header.get_data_dtype()).itemsize
        actual = path.stat().st_size
        if actual < expected:
            raise InvalidScanError(f"{path}: cannot be read (truncated: the header describes {expected:,} bytes, "
                                   f"the file holds {actual:,}); {_AGAIN}")
    if len(shape) < 3:
        return  # not a volume: check_volume says so, with the shape
    if not np.all(np.isfinite(affine)):
        raise InvalidScanError(f"{path}: the affine holds NaN or infinite values, so the scan has no place in space; "
                               "fix the header (qform/sform) first.")
    if min(zooms) <= 0 or np.any(np.linalg.norm(affine[:3, :3], axis=0) < 1e-6):
        raise InvalidScanError(f"{path}: voxel size {zooms} mm has a zero (or negative) axis; fix pixdim in the header.")
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cosines = np.abs(axes.T @ axes - np.eye(3))
    if float(cosines.max()) > 1e-3:
        raise InvalidScanError(f"{path}: the affine is sheared (axes not at right angles, cosine "
                               f"{float(cosines.max()):.3f}); resample it onto an orthogonal grid first.")


def _root_cause(err: BaseException) -> str:
    """The reader's own reason in one line: MONAI's ``LoadImage`` wraps it (with the tracebacks of every reader it
    tried) in a ``RuntimeError``; ``ImageFileError: File x is not a gzip file`` is what a user can act on."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # the readers' tracebacks are text in LoadImage's message; the first is the reader asked for (ours)
    reasons = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    if reasons:
        name, _, message = reasons[0].partition(": ")
        return f"{name.rsplit('.', 1)[-1]}: {message}"
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


class _NiftiReader(NibabelReader):
    """MONAI's NIfTI reader, handing ``LoadImage`` the C-ordered array it makes of every volume, copied one slice at
    a time: the same values, five times faster than numpy's whole-volume copy from NIfTI's Fortran order (0.08 s
    against 0.39 s for 512x512x120 int16, whose source stride defeats the caches)."""

    def read(self, data, **kwargs):
        """A ``.nii.gz`` file is decompressed by ISA-L (``isal``), twice as fast as Python's ``gzip`` (0.11 s
        against 0.23 s for a 512x512x120 int16 volume); nibabel reads the header and voxels from it as usual."""
        paths = [str(p) for p in ensure_tuple(data)]
        if len(paths) != 1 or not paths[0].lower().endswith(".gz"):
            return super().read(data, **kwargs)
        path = paths[0]
        self.filenames = (path,)  # as the base reader records them, for get_data
        handle = igzip.open(path, "rb")
        try:
            nifti2 = _is_nifti2(handle.read(4))
            handle.seek(0)
            holder = nib.FileHolder(path, handle)
            img = (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_file_map({"header": holder, "image": holder})
        except BaseException:
            handle.close()
            raise
        return correct_nifti_header_if_necessary(img)

    def _get_array_data(self, img, filename):
        try:
            data = super()._get_array_data(img, filename)
        finally:  # the voxels are in memory: the decompressing reader is done
            handle = img.file_map["image"].fileobj
            if handle is not None:
                handle.close()
        if data.ndim != 3 or data.flags.c_contiguous or not data.flags.f_contiguous:
            return data
        ordered = np.empty(data.shape, data.dtype)
        for k in range(data.shape[2]):
            ordered[:, :, k] = data[:, :, k]
        return ordered


class LoadScan(Transform):
    """Read a CT scan as a float32 ``(1, X, Y, Z)`` MetaTensor in HU, with a RAS affine, and check it.

    Args:
        modality: the DICOM modality required of a series (default ``"CT"``; ``None`` accepts any).
        dtype: the voxel type (default float32; ``None``: as stored, for labels).

    ``__call__(path)`` takes a NIfTI file (``.nii`` / ``.nii.gz``, LiTS volumes and segmentations) or a folder
    holding one DICOM series (uncompressed or JPEG 2000; rescale slope and intercept applied; the images of the
    series' own orientation ordered along the slice normal, others left out with a logged note kept in
    ``meta["series_notes"]``, see :mod:`transforms.dicom_series`). Both go through MONAI's ``LoadImage``. Labels
    load the same way.

    Raises:
        InvalidScanError: a missing or unreadable file, a folder without one CT series, a series that is not one
            regular volume (gaps, uneven spacing, tilt, conflicting duplicates), a 2D or 4D image, NaNs.
    """

    def __init__(self, modality: str | None = "CT", dtype: DtypeLike = np.float32) -> None:
        self.modality = modality
        with _quiet_gpu_decoder_probe():
            self.dicom = LoadImage(reader=PydicomReader(fname_regex=None), image_only=True, ensure_channel_first=True, dtype=dtype)
            self.nifti = LoadImage(reader=_NiftiReader(), image_only=True, ensure_channel_first=True, dtype=dtype)

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        path = Path(path)
        if not path.exists():
            what = "a symbolic link to nothing (or to itself)" if path.is_symlink() else "no such file or folder"
            raise InvalidScanError(f"{path}: {what}.")
        if path.is_dir():
            return self._load_series(path)
        if not path.is_file():  # a pipe or device would block the reader forever
            raise InvalidScanError(f"{path}: not a regular file (a pipe, socket or device); give a NIfTI file.")
        if path.stat().st_size == 0:
            raise InvalidScanError(f"{path}: empty (0 bytes); copy the scan again.")
        if not is_nifti(path):
            raise InvalidScanError(
                f"{path}: not a scan this loader reads; expected a NIfTI file ({', '.join(NIFTI_SUFFIXES)}) "
                "or a folder holding one DICOM series."
            )
        check_nifti_header(path)
        return self._read(self.nifti, path, path)

    def _load_series(self, folder: Path) -> MetaTensor:
        series = dicom_series(folder, self.modality)
        if series.complete:
            img = self._read(self.dicom, folder, folder)
        else:  # the reader takes a folder: give it one holding only the images kept (links, the user's files untouched)
            with tempfile.TemporaryDirectory(prefix="liver-ct-series-") as kept:
                for file in series.files:
                    try:
                        os.symlink(file.resolve(), Path(kept) / file.name)
                    except OSError:  # no symlinks (Windows without the privilege): a copy in the temporary folder
                        shutil.copy2(file, Path(kept) / file.name)
                img = self._read(self.dicom, Path(kept), folder)
        check_series_geometry(series, img.affine.numpy())
        img.meta["series_notes"] = list(series.notes)
        return img

    @staticmethod
    def _read(loader: LoadImage, target: Path, source: Path) -> MetaTensor:
        try:
            img = loader(str(target))
        except Exception as err:  # readers raise anything from EOFError to zlib.error on a damaged file
            raise InvalidScanError(f"{source}: cannot be read ({_root_cause(err)}); {_AGAIN}") from err
        img.meta["filename_or_obj"] = str(source)
        check_volume(img, str(source))
        return img


class LoadScand(MapTransform):
    """Dictionary-based wrapper of :class:`LoadScan`."""

    def __init__(self, keys: KeysCollection, modality: str | None = "CT", allow_missing_keys: bool = False,
                 dtype: DtypeLike = np.float32) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadScan(modality, dtype)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


def _series_uid(folder: Path) -> str | None:
    """The SeriesInstanceUID of the first DICOM image in ``folder``."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and _is_dicom_image(path):
            return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                       .get("SeriesInstanceUID", "")) or None
    return None


class LoadLabeld(MapTransform):
    """Load label maps for the scan already loaded under ``image_key`` (``LoadScand`` first): a NIfTI file or
    DICOM series as :class:`LoadScan` reads it (any modality), or DICOM SEG objects made by another tool (a path
    or a list of paths, e.g. a liver SEG and a tumour SEG), each placed frame by frame on the scan's grid with
    :func:`transforms.dicom_seg.read_dicom_seg` and merged (tumour over liver). What each SEG segment became is
    kept in the label's ``meta["seg_notes"]``.

    Raises:
        InvalidScanError: an unreadable label, a SEG without liver or tumour segment, a frame off the scan's grid.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.loader = LoadScan(modality=None, dtype=None)  # labels as stored (no float32 copy of the volume)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            paths = [Path(p) for p in value] if isinstance(value, (list, tuple)) else [Path(value)]
            if all(is_dicom_seg(p) for p in paths):
                d[key] = self._from_segs(paths, d[self.image_key])
            elif len(paths) == 1:
                d[key] = self.loader(paths[0])
            else:
                raise InvalidScanError(f"{', '.join(map(str, paths))}: several label files are read only when all are "
                                       "DICOM SEG objects.")
        return d

    @staticmethod
    def _from_segs(paths: list[Path], image: MetaTensor) -> MetaTensor:
        notes: list[str] = []
        label = np.zeros(tuple(image.shape[1:]), np.uint8)
        series = Path(str(image.meta.get("filename_or_obj", "")))
        uid = _series_uid(series) if series.is_dir() else None
        for path in paths:
            try:
                referenced = referenced_series_uid(pydicom.dcmread(path, stop_before_pixels=True))
            except Exception as err:  # pydicom raises many kinds on a damaged object
                raise InvalidScanError(f"{path}: cannot be read as a DICOM SEG ({_root_cause(err)}).") from err
            if uid and referenced and referenced != uid:
                raise InvalidScanError(f"{path}: labels another series (ReferencedSeriesSequence {referenced}) than "
                                       f"{series} ({uid}), whose other labels are beside it; put each SEG with the "
                                       "series it labels, or remove it.")
            try:
                label = np.maximum(label, read_dicom_seg(path, image.affine, tuple(image.shape[1:]), notes))
            except ValueError as err:
                raise InvalidScanError(str(err)) from None
            except Exception as err:  # pydicom raises many kinds on a damaged object
                raise InvalidScanError(f"{path}: cannot be read as a DICOM SEG ({_root_cause(err)}).") from err
        meta = {k: v for k, v in image.meta.items() if k != "affine"}  # the affine is given once, below
        meta.update({"filename_or_obj": str(paths[0]), "seg_notes": notes, "series_notes": []})
        return MetaTensor(label[None].astype(np.float32), affine=image.affine.clone(), meta=meta)
