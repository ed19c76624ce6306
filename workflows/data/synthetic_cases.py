"""Generated LiTS-like CT volumes, the built-in data for tests and the quickstart: the library behind
``python -m workflows.synthetic``.

Each case is an abdomen phantom drawn in patient space (mm): air -1000 HU, subcutaneous and visceral fat about
-100, muscle and soft tissue 40, a liver of 50-80 HU with noise, hypo- and hyperdense lesions of several sizes
inside it (about one case in three has none), spleen, kidneys, aorta, stomach gas, lung bases above the liver
dome, vertebrae and ribs at 700+ HU. In-plane spacing is 0.6-1.0 mm at 512 pixels (smaller ``--size`` keeps the
field of view, so pixels grow), slice thickness 0.7-5 mm (``--slices`` fixes the count instead). Volumes are
stored in several orientations, with flips and axis permutations as real LiTS files are (see
:data:`STORED_ORIENTATIONS`). The same seed gives the same bytes; case ``i`` does not depend on ``--cases``.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, ornt_transform
from scipy import ndimage
from tqdm import tqdm

from transforms import CANONICAL_AXCODES, tumour_mask
from workflows.data.synthetic_dicom import write_ct_series
from workflows.machine.atomic import write_bytes_atomic

__all__ = ["STORED_ORIENTATIONS", "SyntheticCase", "generate_case", "write_case", "generate_dataset"]

#: Orientation codes (nibabel's: the direction each array axis points to) the cases are stored in, in turn:
#: case 0 as most LiTS files (L, P, S), then in-plane transposed and z flipped, RAS, axial-first, z flipped.
STORED_ORIENTATIONS: tuple[str, ...] = ("LPS", "PLI", "RAS", "ILP", "LPI")

SLICE_THICKNESSES_MM = (0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
HU_MIN, HU_MAX = -1024, 3071


@dataclass
class Lesion:
    center: np.ndarray  # (x_left, y_post, z_sup) in mm
    radii: np.ndarray  # semi-axes in mm
    hu_offset: float  # relative to the liver's mean HU (negative: hypodense)


@dataclass
class SyntheticCase:
    """One generated case, held in the canonical orientation (``CANONICAL_AXCODES``, rows P, columns L, slices S).

    ``hu`` (int16) and ``label`` (uint8) are ``(rows, cols, slices)``; ``affine`` maps them to RAS mm.
    ``stored_axcodes`` is the orientation the NIfTI files are written in.
    """

    index: int
    seed: int
    hu: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    stored_axcodes: str
    lesions: list[Lesion] = field(default_factory=list)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    def stored_image(self, array: np.ndarray) -> nib.Nifti1Image:
        """``array`` (canonical) as a NIfTI image reoriented to ``stored_axcodes``, affine and all."""
        canonical = nib.Nifti1Image(array, self.affine)
        canonical.header.set_xyzt_units("mm", "sec")
        transform = ornt_transform(axcodes2ornt(CANONICAL_AXCODES), axcodes2ornt(self.stored_axcodes))
        stored = canonical.as_reoriented(transform)
        stored.set_qform(stored.affine, code=1)
        stored.set_sform(stored.affine, code=1)
        return stored


def _ellipsoid(x, y, z, centre, radii):
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2 < 1


class _Anatomy:
    """The phantom's organs as implicit shapes in patient mm; all random choices are made in ``__init__``."""

    def __init__(self, rng: np.random.Generator, fov_mm: float, z_range: tuple[float, float], tumours: bool):
        u = rng.uniform
        self.body_a = min(u(140, 175), fov_mm / 2 - 8)  # left-right semi-axis
        self.body_b = min(u(95, 125), fov_mm / 2 - 8)  # anterior-posterior semi-axis
        self.body_y = u(-8, 8)
        self.fat = u(8, 22)
        self.fat_hu, self.soft_hu, self.muscle_hu = u(-110, -90), u(35, 45), u(45, 55)
        self.liver_hu = max(u(50, 80), self.soft_hu + 15)  # enough contrast to be seen, as in a real scan
        self.noise_sd = u(8, 14)
        a, b = self.body_a, self.body_b
        self.spine = np.array([0.0, self.body_y + b * 0.5])
        self.spine_r = u(14, 19)
        self.liver_c = np.array([-a * 0.40 + u(-8, 8), self.body_y - b * 0.12 + u(-6, 6), u(-5, 5)])
        self.liver_r = np.array([u(60, 80), u(55, 72), u(65, 85)])
        self.liver_phase = u(0, 2 * np.pi, size=3)
        self.left_lobe_c = self.liver_c + np.array([a * 0.38, -b * 0.22, u(10, 25)])
        self.left_lobe_r = np.array([u(45, 60), u(20, 30), u(35, 50)])
        self.spleen_c = np.array([a * 0.55, self.body_y + b * 0.2, u(5, 20)])
        self.spleen_r = np.array([u(25, 35), u(45, 60), u(40, 55)])
        self.spleen_hu = u(45, 60)
        self.kidney_z = self.liver_c[2] - u(55, 75)
        self.kidney_hu = u(140, 190)
        self.aorta_hu = u(150, 250)
        self.stomach_c = np.array([a * 0.28, self.body_y - b * 0.32, self.liver_c[2] + u(0, 20)])
        self.lung_base = self.liver_c[2] + self.liver_r[2] * u(0.45, 0.65)
        self.rib_angles = np.deg2rad(np.concatenate([np.linspace(200, 330, 6), np.linspace(210, 340, 6) - 180]))
        self.rib_angles += u(-0.08, 0.08, size=self.rib_angles.size)
        self.visceral_fat = rng.standard_normal((6, 6, 6))
        self.z_range = z_range
        self.lesions = self._place_lesions(rng) if tumours else []

    # -- shapes ---------------------------------------------------------------------------------------------
    def liver(self, x, y, z):
        c, r = self.liver_c, self.liver_r
        dz = (z - c[2]) / r[2]
        taper = 1.0 - 0.35 * np.clip(-dz, 0, 1)  # the right lobe narrows caudally
        theta = np.arctan2(y - c[1], x - c[0])
        wobble = 1.0 + 0.10 * np.sin(2 * theta + self.liver_phase[0]) + 0.06 * np.cos(3 * theta + self.liver_phase[1])
        q = ((x - c[0]) / (r[0] * taper)) ** 2 + ((y - c[1]) / (r[1] * taper)) ** 2 + dz**2
        right = q < wobble**2
        cl, rl = self.left_lobe_c, self.left_lobe_r
        left = _ellipsoid(x, y, z, cl, rl)
        inner = self._ellipse(x, y, self.body_a - self.fat - 6, self.body_b - self.fat - 6)
        return (right | left) & inner & ~self.lung(x, y, z) & ~self._spine_column(x, y, 6)

    def lung(self, x, y, z):
        out = np.zeros(np.broadcast(x, y, z).shape, bool)
        for side in (-1, 1):
            cx, cy = side * self.body_a * 0.42, self.body_y + self.body_b * 0.05
            ax, ay = self.body_a * 0.38, self.body_b * 0.62
            d2 = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2
            # the diaphragm is a dome, highest mid-hemithorax: lung bases reach lowest at the edges (the recesses)
            dome = self.lung_base + (8 if side > 0 else 0) + 35 * (1 - d2)
            out |= (d2 < 1) & (z > dome)
        return out

    def _ellipse(self, x, y, a, b, cx=0.0, cy=None):
        cy = self.body_y if cy is None else cy
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 < 1

    def _spine_column(self, x, y, margin=0.0):
        return (x - self.spine[0]) ** 2 + (y - self.spine[1]) ** 2 < (self.spine_r + margin) ** 2

    def _place_lesions(self, rng: np.random.Generator) -> list[Lesion]:
        lesions = []
        count = int(rng.integers(1, 6))
        for n in range(count):
            radius = rng.uniform(12, 25) if n == 0 else float(np.exp(rng.uniform(np.log(3), np.log(18))))
            for _ in range(200):
                centre = self.liver_c + rng.uniform(-1, 1, 3) * self.liver_r * 0.8
                probes = centre + np.concatenate([np.zeros((1, 3)), np.eye(3) * radius, -np.eye(3) * radius])
                if self.liver(probes[:, 0], probes[:, 1], probes[:, 2]).all():
                    break
            else:
                continue
            hu = -rng.uniform(25, 60) if rng.random() < 0.7 else rng.uniform(40, 90)
            lesions.append(Lesion(centre, radius * rng.uniform(0.75, 1.25, 3), hu))
        return lesions

    # -- one axial slice --------------------------------------------------------------------------------------
    def axial_slice(self, x, y, z: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """HU (float32) and label (uint8) of the slice at height ``z`` over the in-plane grid ``x``, ``y`` (mm)."""
        a, b = self.body_a * (1 + 0.04 * np.sin(z / 70)), self.body_b * (1 + 0.04 * np.sin(z / 70))
        hu = np.full(x.shape, -1000.0, np.float32)
        label = np.zeros(x.shape, np.uint8)
        body = self._ellipse(x, y, a, b)
        hu[body] = self.fat_hu
        inner = self._ellipse(x, y, a - self.fat, b - self.fat)
        hu[inner] = self.muscle_hu
        cavity = self._ellipse(x, y, a - self.fat - 8, b - self.fat - 8)
        hu[cavity] = self.soft_hu
        # visceral fat: a smooth random field thresholded inside the cavity
        grid = np.stack([(x + a) / (2 * a) * 5, (y - self.body_y + b) / (2 * b) * 5,
                         np.full(x.shape, (z - self.z_range[0]) / (self.z_range[1] - self.z_range[0]) * 5)])
        fat_field = ndimage.map_coordinates(self.visceral_fat, grid.reshape(3, -1), order=1, mode="nearest")
        hu[cavity & (fat_field.reshape(x.shape) > 0.6)] = self.fat_hu + 10
        # lower abdomen: kidneys and bowel gas
        for side in (-1, 1):
            kid = _ellipsoid(x, y, z, (side * 60, self.spine[1] - 5, self.kidney_z), (28, 35, 50))
            hu[kid & cavity] = self.kidney_hu
        sc = self.stomach_c
        stomach = _ellipsoid(x, y, z, sc, (45, 30, 40))
        hu[stomach & cavity] = 25
        hu[stomach & cavity & (y < sc[1] - 12)] = -900  # gas rises anteriorly in a supine patient
        spleen = _ellipsoid(x, y, z, self.spleen_c, self.spleen_r)
        hu[spleen & cavity] = self.spleen_hu
        # vessels in front of the spine
        hu[(x - 18) ** 2 + (y - (self.spine[1] - self.spine_r - 13)) ** 2 < 11**2] = self.aorta_hu
        hu[(x + 22) ** 2 + (y - (self.spine[1] - self.spine_r - 10)) ** 2 < 10**2] = self.aorta_hu - 60
        # lungs above the diaphragm
        hu[self.lung(x, y, z) & inner] = -850
        # liver and lesions
        liver = self.liver(x, y, z)
        pixel = float(abs(x[0, 1] - x[0, 0]))
        # perihepatic fat: a thin plane around the liver where it meets the other organs
        rim = ndimage.binary_dilation(liver, iterations=max(1, round(2.5 / pixel))) & ~liver & cavity
        hu[rim & ~self.lung(x, y, z)] = self.fat_hu + 30
        hu[liver] = self.liver_hu
        label[liver] = 1
        for lesion in self.lesions:
            inside = _ellipsoid(x, y, z, lesion.center, lesion.radii) & liver
            hu[inside] = self.liver_hu + lesion.hu_offset
            label[inside] = 2
        # vertebra (body, canal, arch; discs every 30 mm) and ribs
        vertebral_hu = 90.0 if (z % 30) < 5 else 750.0
        sx, sy, sr = self.spine[0], self.spine[1], self.spine_r
        hu[(x - sx) ** 2 + (y - sy) ** 2 < sr**2] = vertebral_hu
        rim = ((x - sx) ** 2 + (y - sy) ** 2 < sr**2) & ((x - sx) ** 2 + (y - sy) ** 2 > (sr - 2.5) ** 2)
        hu[rim & (vertebral_hu > 100)] = 1100
        canal_y = sy + sr + 8
        hu[(x - sx) ** 2 + (y - canal_y) ** 2 < 13**2] = 900
        hu[(x - sx) ** 2 + (y - canal_y) ** 2 < 7**2] = 15
        hu[(np.abs(x - sx) < 4) & (y > canal_y + 10) & (y < canal_y + 30) & body] = 850
        if z > self.liver_c[2] - self.liver_r[2] * 0.9:
            for angle in self.rib_angles:
                depth = self.fat + 4
                rx = (a - depth) * np.cos(angle + z * 0.002)
                ry = self.body_y + (b - depth) * np.sin(angle + z * 0.002)
                hu[(x - rx) ** 2 + (y - ry) ** 2 < 5.5**2] = 950
        # partial volume, then quantum noise
        hu = ndimage.gaussian_filter(hu, sigma=0.6, mode="nearest")
        hu += rng.normal(0.0, self.noise_sd, hu.shape).astype(np.float32)
        return hu, label


def generate_case(index: int, seed: int = 0, size: int = 512, slices: int | None = None) -> SyntheticCase:
    """Generate case ``index`` of the data set ``seed``: ``size`` x ``size`` pixels, ``slices`` slices
    (default: the z extent divided by a thickness drawn from 0.7-5 mm)."""
    if size < 16 or size % 8:
        raise ValueError(f"`size` must be a multiple of 8 and at least 16, got {size!r}.")
    if slices is not None and slices < 1:
        raise ValueError(f"`slices` must be at least 1, got {slices!r}.")
    rng = np.random.default_rng([seed, index])
    fov = rng.uniform(0.6, 1.0) * 512
    pixel = round(fov / size, 4)
    extent = rng.uniform(170, 230)
    if slices is None:
        thickness = float(rng.choice(SLICE_THICKNESSES_MM))
        slices = max(1, int(round(extent / thickness)))
    else:
        rng.choice(SLICE_THICKNESSES_MM)  # keep the draws in step with the default path
        thickness = round(extent / slices, 4)
    z0 = -0.55 * extent
    anatomy = _Anatomy(rng, pixel * size, (z0, z0 + thickness * slices), tumours=index % 3 != 1)

    centre = (size - 1) / 2
    y, x = np.meshgrid((np.arange(size) - centre) * pixel, (np.arange(size) - centre) * pixel, indexing="ij")
    hu = np.empty((size, size, slices), np.int16)
    label = np.empty((size, size, slices), np.uint8)
    for k in range(slices):
        hu_k, label[..., k] = anatomy.axial_slice(x, y, z0 + k * thickness, rng)
        hu[..., k] = np.clip(np.rint(hu_k), HU_MIN, HU_MAX)
    # canonical PLS: rows toward posterior (-y in RAS), columns toward patient left (-x), slices superior (+z)
    affine = np.array([
        [0.0, -pixel, 0.0, centre * pixel],
        [-pixel, 0.0, 0.0, centre * pixel],
        [0.0, 0.0, thickness, z0],
        [0.0, 0.0, 0.0, 1.0],
    ])
    stored = STORED_ORIENTATIONS[index % len(STORED_ORIENTATIONS)]
    return SyntheticCase(index, seed, hu, label, affine, stored, anatomy.lesions)


def _nifti_gz_bytes(image: nib.Nifti1Image) -> bytes:
    # gzip with mtime 0 and no file name, so the same case gives the same bytes
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def write_case(case: SyntheticCase, out_dir: str | os.PathLike, dicom: bool = False) -> list[Path]:
    """Write ``volume-<i>.nii.gz`` and ``segmentation-<i>.nii.gz`` (and the DICOM series) atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, array in ((f"volume-{case.index}.nii.gz", case.hu), (f"segmentation-{case.index}.nii.gz", case.label)):
        path = out_dir / name
        write_bytes_atomic(path, _nifti_gz_bytes(case.stored_image(array)))
        written.append(path)
    if dicom:  # the series, with its label beside it as convert expects (dicom/volume-<i>/ + segmentation-<i>)
        written.append(write_ct_series(case, out_dir / "dicom" / f"volume-{case.index}"))
        written.append(write_bytes_atomic(out_dir / "dicom" / written[1].name, written[1].read_bytes()))
    return written


def generate_dataset(
    out_dir: str | os.PathLike, cases: int, seed: int = 0, size: int = 512, slices: int | None = None,
    dicom: bool = False, progress: bool = True, skip_existing: bool = False,
) -> list[SyntheticCase]:
    """Generate and write ``cases`` cases; returns them (without their arrays kept in memory).
    ``skip_existing`` leaves cases whose two NIfTI files exist alone (an interrupted run carries on)."""
    if cases < 1:
        raise ValueError(f"`cases` must be at least 1, got {cases!r}.")
    summaries = []
    for index in tqdm(range(cases), desc="generating cases", unit="case", disable=not progress):
        names = (f"volume-{index}.nii.gz", f"segmentation-{index}.nii.gz")
        if skip_existing and not dicom and all((Path(out_dir) / n).exists() for n in names):
            continue
        case = generate_case(index, seed, size, slices)
        write_case(case, out_dir, dicom)
        tumour_voxels = int(tumour_mask(case.label).sum())
        if progress:
            tqdm.write(
                f"volume-{index}: {case.hu.shape[0]}x{case.hu.shape[1]}x{case.hu.shape[2]} canonical, stored "
                f"{case.stored_axcodes}, spacing {case.spacing[0]:.3f}x{case.spacing[1]:.3f}x{case.spacing[2]:.3f} mm, "
                f"{len(case.lesions)} lesion(s), {tumour_voxels} tumour voxels"
            )
        case.hu = case.label = np.empty(0)
        summaries.append(case)
    return summaries
