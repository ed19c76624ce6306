"""Lesions synthesised inside real livers: only inside the liver, the label exactly where the image changed, one solid
across the slice context, the same lesions for the same seed, none at probability 0."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from transforms import SynthesizeLesions, SynthesizeLesionsd, parse_lesion_types


def _sample(context: int = 1, size: int = 64):
    """A liver (an off-centre disc of mid grey with noise) on darker tissue, one bright vessel through it."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:size, 0:size]
    liver = (rows - 30) ** 2 + (cols - 34) ** 2 < 22 ** 2
    grey = np.where(liver, 0.55, 0.3) + rng.normal(0, 0.01, (size, size))
    grey[28:31, 10:58] = 0.9  # a vessel, much brighter than the liver
    image = np.repeat(grey[None], 2 * context + 1, axis=0).astype(np.float32)
    return torch.as_tensor(image), torch.as_tensor(liver[None].astype(np.float32))


@pytest.mark.parametrize("seed", range(6))
def test_lesions_lie_in_the_liver_and_the_label_is_where_the_image_changed(seed):
    image, liver = _sample()
    synth = SynthesizeLesions(prob=1.0, max_lesions=3)
    synth.set_random_state(seed=seed)
    out, lesions = synth(image, liver)
    changed = (out != image).any(dim=0).numpy()
    middle_changed = (out[1] != image[1]).numpy()
    assert lesions.any(), "probability 1 places at least one lesion"
    assert not (changed & ~liver[0].numpy().astype(bool)).any(), "nothing changes outside the liver"
    np.testing.assert_array_equal(lesions[0], middle_changed)  # the label is exactly the middle slice's change
    assert not (lesions[0] & (image[1].numpy() > 0.8)).sum() > 0.05 * lesions.sum()  # not on the vessel
    assert out.min() >= 0 and out.max() <= 1


def test_a_lesion_is_one_solid_across_the_context_slices():
    image, liver = _sample(context=2)
    synth = SynthesizeLesions(prob=1.0, max_lesions=1, depth_slices=(3.0, 4.0))  # tall: every neighbour cut
    synth.set_random_state(seed=3)
    out, lesions = synth(image, liver)
    sections = [(out[c] != image[c]).numpy() for c in range(out.shape[0])]
    middle = sections[2]
    assert all(section.any() for section in sections)
    centre = np.asarray(ndimage.center_of_mass(middle))
    for section in sections:  # the other sections of the same solid: around the same centre, overlapping it
        assert np.linalg.norm(np.asarray(ndimage.center_of_mass(section)) - centre) < 4
        assert (section & middle).sum() >= 0.5 * min(section.sum(), middle.sum())
    areas = [int(section.sum()) for section in sections]
    assert areas[0] != areas[2] or areas[4] != areas[2]  # sections differ in size along the solid


def test_the_same_seed_draws_the_same_lesions_and_another_seed_others():
    image, liver = _sample()
    outputs = []
    for seed in (11, 11, 12):
        synth = SynthesizeLesions(prob=1.0)
        synth.set_random_state(seed=seed)
        outputs.append(synth(image, liver)[0])
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


def test_probability_zero_leaves_samples_as_they_are():
    image, liver = _sample()
    synth = SynthesizeLesions(prob=0.0)
    synth.set_random_state(seed=1)
    out, lesions = synth(image, liver)
    assert torch.equal(out, image) and not lesions.any()


def test_the_dictionary_wrapper_sets_the_tumour_channel_and_drops_the_liver():
    image, liver = _sample(context=0)
    label = torch.stack([liver[0], torch.zeros_like(liver[0])])  # target both: liver, tumour
    synth = SynthesizeLesionsd(keys="image", label_key="label", liver_key="liver", target="both", prob=1.0)
    synth.set_random_state(seed=5)
    out = synth({"image": image, "label": label, "liver": liver})
    tumour = out["label"][1].bool().numpy()
    assert "liver" not in out and tumour.any()
    np.testing.assert_array_equal(tumour, (out["image"][0] != image[0]).numpy())
    assert torch.equal(out["label"][0], label[0])  # the liver channel keeps its liver (a lesion in it is liver)
    liver_only = SynthesizeLesionsd(keys="image", target="liver", prob=1.0).set_random_state(seed=5)
    kept = liver_only({"image": image, "label": liver.clone(), "liver": liver})
    assert torch.equal(kept["label"], liver) and not torch.equal(kept["image"], image)


def test_lesion_types_are_parsed_by_name():
    assert parse_lesion_types("faint:2,rim:1") == {"faint": 2.0, "rim": 1.0}
    for bad in ("round:1", "faint:-1", "", "faint:0"):
        with pytest.raises(ValueError, match="--lesion_types must be weights of faint, hypodense, hyperdense, rim"):
            parse_lesion_types(bad)
    synth = SynthesizeLesions(prob=1.0, lesion_types="hyperdense:1")
    synth.set_random_state(seed=2)
    image, liver = _sample()
    out, lesions = synth(image, liver)
    assert (out[1][torch.as_tensor(lesions[0])] > image[1][torch.as_tensor(lesions[0])]).all()  # brighter than liver
