import cv2
import numpy as np
import torch
from monai.data import CacheDataset
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged

import transforms
from workflows.data.slice_set import LoadMaskd
from workflows.engine.training_data import CompactCacheDataset


def _preprocessing(spatial_size):
    """The training's cached preprocessing, as train.json wires it (flattened: nothing left for each epoch)."""
    return Compose([
        LoadImaged(keys="image", reader="PILReader", reverse_indexing=False, image_only=True),
        EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
        LoadMaskd(keys="label"),
        transforms.LabelToTargetd(keys="label", target="both"),
        transforms.network_input(keys="image", label_keys="label", spatial_size=spatial_size),
        EnsureTyped(keys=["image", "label"], track_meta=False),
    ]).flatten()


def _slices(tmp_path, count=3, size=64):
    rng = np.random.default_rng(0)
    items = []
    for k in range(count):
        image, mask = tmp_path / f"image_{k}.png", tmp_path / f"mask_{k}.png"
        cv2.imwrite(str(image), rng.integers(0, 256, (size, size)).astype(np.uint8))
        cv2.imwrite(str(mask), rng.integers(0, 3, (size, size)).astype(np.uint8))
        items.append({"image": str(image), "label": str(mask)})
    return items


def test_the_compact_cache_gives_back_the_same_tensors_holding_8_bit_data_as_uint8(tmp_path):
    items = _slices(tmp_path)
    for spatial_size, image_is_compact in ((64, True), (48, False)):  # not resized: grey levels stay 8-bit
        plain = CacheDataset(items, _preprocessing(spatial_size), progress=False)
        compact = CompactCacheDataset(items, _preprocessing(spatial_size), progress=False)
        for k in range(len(items)):
            for key in ("image", "label"):
                assert compact[k][key].dtype == torch.float32
                assert torch.equal(compact[k][key], plain[k][key]), (spatial_size, key)
        cached = compact._cache[0]
        assert isinstance(cached["image"], torch.Tensor) != image_is_compact
        assert cached["label"].data.dtype == torch.uint8  # 0/1 per channel, whatever the size


def test_the_training_cache_holds_slices_ready_for_the_network():
    """CacheDataset caches up to its first random transform, and a nested Compose counts as one: the training's
    dataset runs network_input (scaling and resizing) once per slice and chunk, not once per epoch."""
    from monai.bundle import ConfigParser
    from monai.transforms.traits import RandomizableTrait
    from monai.transforms import Transform

    from transforms import ResizeSlicesd
    from workflows.bundle import config_file

    parser = ConfigParser()
    parser.read_config(config_file("train"))
    parser.update({"dataset_dir": "unused", "target": "liver"})
    dataset = parser.get_parsed_content("train#dataset")
    assert isinstance(dataset, CompactCacheDataset)
    steps = dataset.transform.transforms
    assert dataset.transform.get_index_of_first(
        lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)) is None
    assert any(isinstance(t, ResizeSlicesd) for t in steps)
