"""Liver lesions synthesised inside real livers, a training transform like augmentation.

After Hu et al. (CVPR 2023, "Label-Free Liver Tumor Segmentation"): a lesion is a distorted ellipsoid solid
placed inside the liver away from vessels, its intensity the liver's own plus a contrast and a smooth noise
texture, with a soft or sharp edge and, for some, a rim; the label gets the tumour where the image was changed. The
ranges come from the real lesions we hold, measured (``python -m tests.benchmarks.real_lesions``, table in the
bundle's benchmarks page), widened to the field's lesion types. Our own implementation of those published principles.

Grey levels are the network's input (0..1 = 0..255 of the slice; in the abdomen window one grey level is 1.57 HU).
A sample carries its slice and ``context`` neighbours on each side as channels: the lesion is a solid, so each
neighbour shows its own section (smaller, or none, away from the lesion's centre); the label is the middle slice's.

Example::

    synth = SynthesizeLesionsd(keys="image", label_key="label", liver_key="liver", target="both", prob=0.5)
    synth.set_random_state(seed=7)
    sample = synth({"image": grey, "label": target, "liver": liver})  # grey (2k+1, H, W) in 0..1, liver (1, H, W)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform
from scipy import ndimage

from transforms.labels import TARGET_CHANNELS

__all__ = ["LESION_TYPES", "parse_lesion_types", "SynthesizeLesions", "SynthesizeLesionsd"]

#: per lesion type: contrast to the liver (grey levels, of 255), edge width (fraction of the radius), rim contrast
#: (grey levels; 0: none). Measured (``tests.benchmarks.real_lesions``): the equilibrium-phase HCCs -16 to -17 HU
#: (about -11 grey levels, edges 5-11 mm wide), the arterial-phase HCC +24 HU (+15), the 2D set's lesions -6 to -35
#: grey levels (edges 0.7-12 mm, most of a lesion's radius); widened to the field's metastases (-30 to -70 HU in the
#: portal venous phase) and arterial hypervascular lesions (to +55 HU).
LESION_TYPES: dict[str, dict] = {
    "faint": {"contrast": (-18.0, -6.0), "edge": (0.3, 0.8), "rim": (0.0, 0.0)},
    "hypodense": {"contrast": (-45.0, -18.0), "edge": (0.2, 0.6), "rim": (0.0, 0.0)},
    "hyperdense": {"contrast": (10.0, 35.0), "edge": (0.2, 0.6), "rim": (0.0, 0.0)},
    "rim": {"contrast": (-40.0, -12.0), "edge": (0.15, 0.4), "rim": (8.0, 25.0)},
}
#: grey levels above the liver's median that mark a vessel (about 50 HU in the abdomen window)
VESSEL_ABOVE_LIVER = 32.0 / 255


def parse_lesion_types(value) -> dict[str, float]:
    """``--lesion_types``: weights of the lesion types, ``"faint:1,hypodense:1,hyperdense:1,rim:1"`` or a mapping;
    a type left out is never drawn."""
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        items = [part.split(":", 1) if ":" in part else (part, "") for part in str(value).replace(" ", "").split(",")
                 if part]
    try:
        weights = {str(name): float(weight) for name, weight in items}
    except ValueError:
        weights = {}
    if not weights or any(n not in LESION_TYPES for n in weights) or \
            any(not np.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"--lesion_types must be weights of {', '.join(LESION_TYPES)} (e.g. \"faint:1,hypodense:1\"), "
                         f"got {value!r}.")
    return weights


class SynthesizeLesions(Randomizable, Transform):
    """Put 1 to ``max_lesions`` lesions inside the liver of one sample, with probability ``prob``.

    Args:
        prob: the chance that a sample gets lesions (0: never, the transform passes samples through).
        max_lesions: at most this many lesions per sample (1 to ``max_lesions``, uniform).
        lesion_types: the mix of lesion types (:data:`LESION_TYPES`), weights by name.
        radius: the lesion's in-plane radius as a fraction of the liver section's equivalent radius (min, max;
            drawn log-uniform, so small lesions are as common as large ones).
        depth_slices: the lesion's half-height in slices (min, max), for the neighbours a sample carries.

    ``__call__(image, liver)``: ``image`` ``(2k + 1, H, W)`` grey levels in 0..1, ``liver`` ``(1, H, W)`` or
    ``(H, W)`` 0/1 of the middle slice. Returns the image with the lesions and their mask ``(1, H, W)`` (bool) on the
    middle slice: where, inside the liver, that slice was changed.
    """

    def __init__(self, prob: float = 0.5, max_lesions: int = 3, lesion_types: Mapping[str, float] | str | None = None,
                 radius: tuple[float, float] = (0.05, 0.35), depth_slices: tuple[float, float] = (1.0, 4.0)) -> None:
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"`prob` must be from 0 to 1, got {prob!r}.")
        if int(max_lesions) < 1:
            raise ValueError(f"`max_lesions` must be at least 1, got {max_lesions!r}.")
        self.prob, self.max_lesions = float(prob), int(max_lesions)
        weights = parse_lesion_types(lesion_types or {name: 1.0 for name in LESION_TYPES})
        self.types = list(weights)
        self.type_p = np.asarray([weights[t] for t in self.types]) / sum(weights.values())
        self.radius, self.depth_slices = tuple(map(float, radius)), tuple(map(float, depth_slices))

    def randomize(self, data=None) -> None:
        self._do = self.R.random_sample() < self.prob

    def __call__(self, image, liver, randomize: bool = True):
        if randomize:
            self.randomize()
        as_torch = isinstance(image, torch.Tensor)
        grey = np.array(image.detach().cpu().numpy() if as_torch else image, dtype=np.float32, copy=True)
        liver = liver.detach().cpu().numpy() if isinstance(liver, torch.Tensor) else np.asarray(liver)
        inside = liver.reshape(grey.shape[-2:]) > 0
        lesions = np.zeros(grey.shape[-2:], dtype=bool)
        if self._do and inside.sum() >= 16:
            middle = grey.shape[0] // 2
            liver_grey = float(np.median(grey[middle][inside]))
            vessels = grey[middle] > liver_grey + VESSEL_ABOVE_LIVER
            room = ndimage.distance_transform_edt(inside & ~vessels)
            for _ in range(self.R.randint(1, self.max_lesions + 1)):
                lesions |= self._one_lesion(grey, inside, room, vessels, lesions)
        out = torch.as_tensor(grey) if as_torch else grey
        if as_torch and hasattr(image, "meta"):
            out = type(image)(out, meta=image.meta)
        return out, lesions[None]

    def _one_lesion(self, grey: np.ndarray, inside: np.ndarray, room: np.ndarray, vessels: np.ndarray,
                    taken: np.ndarray) -> np.ndarray:
        """Draw and paint one lesion; returns its middle-slice mask (empty when no place was found)."""
        kind = LESION_TYPES[self.types[self.R.choice(len(self.types), p=self.type_p)]]
        liver_radius = float(np.sqrt(inside.sum() / np.pi))
        low, high = (max(2.0, f * liver_radius) for f in self.radius)
        radius = float(np.exp(self.R.uniform(np.log(low), np.log(max(low, high)))))
        for _ in range(10):  # a centre inside the liver, away from its vessels and from lesions already placed
            candidates = np.argwhere((room >= 0.5 * radius) & ~taken)
            if len(candidates) == 0:
                return np.zeros_like(inside)
            centre = candidates[self.R.randint(len(candidates))]
            shape, depth, offset = self._section_shape(grey.shape[-2:], centre, radius)
            if (shape <= 1).any() and (vessels & (shape <= 1)).sum() <= 0.05 * (shape <= 1).sum():
                break
        else:
            return np.zeros_like(inside)
        return self._paint(grey, inside, shape, kind, radius, depth, offset)

    def _section_shape(self, size, centre, radius: float) -> tuple[np.ndarray, float, float]:
        """Normalised distance ``rho`` of every pixel from the lesion's centre (1 on its outline): an ellipse, turned
        and distorted by low-frequency waves along its outline; with the solid's half-height (slices) and its
        centre's offset from the middle slice."""
        rows, cols = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)
        dy, dx = rows - centre[0], cols - centre[1]
        angle, squash = self.R.uniform(0, np.pi), self.R.uniform(0.6, 1.0)
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / squash
        phi = np.arctan2(v, u)
        wave = 1.0 + sum(self.R.uniform(0, 0.12) * np.cos(k * phi + self.R.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
        depth = self.R.uniform(*self.depth_slices)
        offset = self.R.uniform(-0.5, 0.5) * depth  # the middle slice always cuts the lesion
        return np.sqrt(u ** 2 + v ** 2) / (radius * wave), depth, offset

    def _paint(self, grey: np.ndarray, inside: np.ndarray, rho: np.ndarray, kind: dict, radius: float, depth: float,
               offset: float) -> np.ndarray:
        """Change the slices where the solid (half-height ``depth`` slices, centre ``offset`` from the middle slice)
        cuts them; returns the middle slice's section."""
        contrast = self.R.uniform(*kind["contrast"]) / 255
        rim = self.R.uniform(*kind["rim"]) / 255 if kind["rim"][1] > 0 else 0.0
        edge = self.R.uniform(*kind["edge"])
        texture = ndimage.gaussian_filter(self.R.standard_normal(grey.shape[-2:]).astype(np.float32),
                                          sigma=self.R.uniform(0.8, 2.0))
        texture *= self.R.uniform(0.1, 0.35) * abs(contrast) / max(1e-6, float(texture.std()))
        texture = np.clip(texture, -0.8 * abs(contrast), 0.8 * abs(contrast))  # never cancels the contrast
        middle = grey.shape[0] // 2
        mask = np.zeros_like(inside)
        for channel in range(grey.shape[0]):
            height = ((channel - middle) - offset) / depth
            scale = np.sqrt(max(0.0, 1.0 - height ** 2))  # the solid's section on this slice
            if scale <= 0:
                continue
            section = (rho < scale) & inside  # the middle slice's liver stands in for its neighbours'
            if not section.any():
                continue
            weight = np.clip((scale - rho) / (edge * scale), 0.0, 1.0)
            weight = np.where(section, np.maximum(weight * weight * (3 - 2 * weight), 0.05), 0.0)  # smooth, > 0 inside
            change = contrast + texture
            if rim:
                ring = section & (rho > scale * (1 - min(0.35, 2.5 / max(radius, 1.0))))
                change = np.where(ring, rim, change)
            grey[channel] = np.where(section, np.clip(grey[channel] + weight * change, 0.0, 1.0), grey[channel])
            if channel == middle:
                mask = section
        return mask


class SynthesizeLesionsd(Randomizable, MapTransform):
    """Dictionary wrapper of :class:`SynthesizeLesions`: lesions in ``keys`` (the image), the tumour channel of
    ``label_key`` set where they are (for ``target`` ``both`` or ``tumor``; a liver target keeps its label: a lesion
    in the liver is liver), the liver from ``liver_key`` (``(1, H, W)``, dropped from the sample afterwards).
    Seeded like the rest of augmentation (``set_random_state``), so a resumed run draws the same lesions."""

    def __init__(self, keys: KeysCollection, label_key: str = "label", liver_key: str = "liver", target: str = "both",
                 prob: float = 0.5, max_lesions: int = 3, lesion_types: Mapping[str, float] | str | None = None,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if target not in TARGET_CHANNELS:
            raise ValueError(f"`target` must be one of {list(TARGET_CHANNELS)}, got {target!r}.")
        self.label_key, self.liver_key = label_key, liver_key
        channels = TARGET_CHANNELS[target]
        self.tumour_channel = channels.index("tumor") if "tumor" in channels else None
        self.synthesis = SynthesizeLesions(prob=prob, max_lesions=max_lesions, lesion_types=lesion_types)

    def set_random_state(self, seed=None, state=None) -> SynthesizeLesionsd:
        super().set_random_state(seed, state)
        self.synthesis.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        self.synthesis.randomize()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        liver = d.pop(self.liver_key, None)
        if liver is None:
            return d
        self.randomize()
        for key in self.key_iterator(d):
            d[key], lesions = self.synthesis(d[key], liver, randomize=False)
            if self.tumour_channel is not None and lesions.any() and self.label_key in d:
                label = d[self.label_key]
                placed = torch.as_tensor(lesions[0], device=label.device if isinstance(label, torch.Tensor) else None)
                if isinstance(label, torch.Tensor):
                    label = label.clone()
                    label[self.tumour_channel][placed] = 1
                else:
                    label = np.array(label, copy=True)
                    label[self.tumour_channel][lesions[0]] = 1
                d[self.label_key] = label
        return d
