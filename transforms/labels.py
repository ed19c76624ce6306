"""LiTS label maps (0 background, 1 liver, 2 tumour) to training targets."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_tensor

__all__ = [
    "LITS_LABELS", "TARGET_CHANNELS", "TUMOUR_UNKNOWN", "check_lits_labels", "parse_label_map", "RemapLabels", "RemapLabelsd",
    "LabelToTarget", "LabelToTargetd", "target_to_lits", "liver_mask", "tumour_mask",
]

#: LiTS label values.
LITS_LABELS: dict[str, int] = {"background": 0, "liver": 1, "tumor": 2}

#: What each output channel of a target is. ``liver`` is label >= 1 (liver with its tumours, what the Kaggle
#: masks hold); ``tumor`` is label == 2; ``both`` is the two as channels (multi-label, one sigmoid each).
TARGET_CHANNELS: dict[str, tuple[str, ...]] = {"liver": ("liver",), "tumor": ("tumor",), "both": ("liver", "tumor")}

#: The tumour channel's value where a source does not label tumours (inside the liver of a liver-only source): the
#: loss (:class:`networks.BCEDiceLoss`) leaves such pixels out; outside the liver the tumour is known to be absent.
TUMOUR_UNKNOWN = -1.0


def liver_mask(label: NdarrayOrTensor) -> NdarrayOrTensor:
    """Where a LiTS label map has liver: label >= 1, the liver with its tumours (what the Kaggle masks hold)."""
    return label >= LITS_LABELS["liver"]


def tumour_mask(label: NdarrayOrTensor) -> NdarrayOrTensor:
    """Where a LiTS label map has tumour: label == 2."""
    return label == LITS_LABELS["tumor"]


def check_lits_labels(label: NdarrayOrTensor, source: object = "label") -> None:
    """Raise ``ValueError`` naming ``source`` when ``label`` holds values other than 0, 1, 2."""
    label = convert_to_tensor(label, track_meta=False)
    allowed = (label == 0) | (label == 1) | (label == 2)  # a pass over the voxels, not a sort of them
    if not bool(allowed.all()):
        unexpected = torch.unique(label[~allowed]).tolist()
        shown = ", ".join(f"{v:g}" for v in unexpected[:10])
        raise ValueError(
            f"{source}: label values must be LiTS labels 0 (background), 1 (liver), 2 (tumour), got also {shown}; "
            "map other label schemes first (workflows.convert --label-map 5:1, or transforms.RemapLabels)."
        )


def parse_label_map(text: str) -> dict[int, int]:
    """``"5:1,6:2"`` -> ``{5: 1, 6: 2}``: source label value to LiTS label (1 liver, 2 tumour)."""
    mapping = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        source, _, lits = part.partition(":")
        try:
            value, label = int(source), int(lits)
        except ValueError:
            raise ValueError(f"label map entries are SOURCE:LITS integers like '5:1', got {part!r} in {text!r}.") from None
        if mapping.setdefault(value, label) != label:
            raise ValueError(f"label map {text!r} sends {value} to both {mapping[value]} and {label}; give each source "
                             "value once.")
    if not mapping or not set(mapping.values()) <= {1, 2}:
        raise ValueError(f"a label map must send source values to 1 (liver) or 2 (tumour), got {text!r}.")
    return mapping


class RemapLabels(Transform):
    """Map another label scheme to LiTS labels: each ``mapping`` key becomes its value, every other value 0.

    For a multi-organ map where 5 is the liver (TotalSegmentator): ``RemapLabels({5: 1})``. Unlike MONAI's
    ``MapLabelValue``, values not named become background, so the other organs drop out.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, mapping: Mapping[int, int]) -> None:
        if not mapping or not set(mapping.values()) <= {1, 2}:
            raise ValueError(f"`mapping` must send label values to 1 (liver) or 2 (tumour), got {dict(mapping)!r}.")
        self.mapping = dict(mapping)

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        """``label`` remapped. A label whose values include none of the mapping's keys is refused (it would become
        all background: a volume without liver); keys the label lacks are noted in a MetaTensor's ``seg_notes``."""
        present = {int(v) for v in np.unique(np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label))}
        shown = ",".join(f"{k}:{v}" for k, v in self.mapping.items())
        if present - {0} and not present & set(self.mapping):
            raise ValueError(f"--label-map {shown} matches no value of this label (it holds "
                             f"{', '.join(map(str, sorted(present)[:8]))}): every voxel would be background; give the "
                             "values it uses (value:1 for liver, value:2 for tumour), or leave --label-map out for "
                             "LiTS labels.")
        out = label * 0
        for source, lits in self.mapping.items():
            out[label == source] = lits
        missing = [k for k in self.mapping if k not in present]
        if missing and isinstance(out, MetaTensor):
            out.meta["seg_notes"] = [*out.meta.get("seg_notes", []),
                                     f"--label-map: no label value {', '.join(map(str, missing))} in this label"]
        return out


class RemapLabelsd(MapTransform):
    """Dictionary-based wrapper of :class:`RemapLabels`."""

    def __init__(self, keys: KeysCollection, mapping: Mapping[int, int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.remap = RemapLabels(mapping)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.remap(d[key])
        return d


class LabelToTarget(Transform):
    """Turn a channel-first LiTS label map ``(1, *spatial)`` into target channel(s).

    Args:
        target: ``"liver"`` (label >= 1), ``"tumor"`` (label == 2) or ``"both"`` (two channels, liver then tumour).
        dtype: output dtype. Defaults to ``np.float32``, what losses take; ``np.uint8`` for masks on disk.

    Returns:
        ``(C, *spatial)`` of 0/1 with ``C = len(TARGET_CHANNELS[target])``.

    Raises:
        ValueError: for an unknown target, a label with more than one channel, or values outside {0, 1, 2}.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, target: str = "liver", dtype: DtypeLike = np.float32) -> None:
        if target not in TARGET_CHANNELS:
            raise ValueError(f"`target` must be one of {list(TARGET_CHANNELS)}, got {target!r}.")
        self.target = target
        self.dtype = dtype

    def __call__(self, label: NdarrayOrTensor, tumour_labelled: bool = True) -> NdarrayOrTensor:
        """``tumour_labelled=False`` (a source that labels the liver only): the tumour channel is
        :data:`TUMOUR_UNKNOWN` inside the liver, 0 outside it."""
        if label.shape[0] != 1:
            raise ValueError(f"LabelToTarget expects a channel-first label map (1, *spatial), got shape {tuple(label.shape)}.")
        source = getattr(label, "meta", {}).get("filename_or_obj", "label")
        check_lits_labels(label, source)
        channels = [liver_mask(label) if name == "liver" else tumour_mask(label) for name in TARGET_CHANNELS[self.target]]
        stacked = torch.cat(channels, 0) if isinstance(label, torch.Tensor) else np.concatenate(channels, 0)
        stacked = convert_data_type(stacked, dtype=self.dtype)[0]
        if not tumour_labelled and "tumor" in TARGET_CHANNELS[self.target]:
            if np.dtype(self.dtype).kind == "u":
                raise ValueError("a label whose tumour is unknown needs a signed dtype (it is marked -1).")
            c = TARGET_CHANNELS[self.target].index("tumor")
            stacked[c][liver_mask(label)[0]] = TUMOUR_UNKNOWN
        return stacked


def target_to_lits(channels: np.ndarray, target: str) -> np.ndarray:
    """The inverse of :class:`LabelToTarget`: target channels ``(C, *spatial)`` (probabilities or 0/1, cut at 0.5)
    as one LiTS-coded map ``(*spatial)`` of uint8 (1 liver, 2 tumour; tumour drawn over liver)."""
    if target not in TARGET_CHANNELS or len(channels) != len(TARGET_CHANNELS[target]):
        raise ValueError(f"`target` {target!r} needs {len(TARGET_CHANNELS.get(target, ()))} channel(s), "
                         f"got {len(channels)}.")
    out = np.zeros(channels.shape[1:], np.uint8)
    for c, name in enumerate(TARGET_CHANNELS[target]):
        out[np.asarray(channels[c]) > 0.5] = LITS_LABELS["tumor"] if name == "tumor" else LITS_LABELS["liver"]
    return out


class LabelToTargetd(MapTransform):
    """Dictionary-based wrapper of :class:`LabelToTarget`. ``known_key``: the sample's flag (a datalist entry's
    ``tumour_labelled``, absent meaning true) saying whether its source labels tumours; it is taken out of the
    sample, so batches of entries with and without it collate alike."""

    def __init__(
        self, keys: KeysCollection, target: str = "liver", dtype: DtypeLike = np.float32, known_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.to_target = LabelToTarget(target, dtype)
        self.known_key = known_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        known = bool(d.pop(self.known_key, True)) if self.known_key else True
        for key in self.key_iterator(d):
            d[key] = self.to_target(d[key], tumour_labelled=known)
        return d
