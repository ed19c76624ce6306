import numpy as np
import pytest
import torch

from transforms import (
    TARGET_CHANNELS, LabelToTarget, LabelToTargetd, RemapLabels, RemapLabelsd, parse_label_map, target_to_lits,
)

LABEL = torch.tensor([[[0, 1, 2, 1], [2, 0, 0, 1]]], dtype=torch.float32)  # (1, 2, 4)


def test_liver_target_is_liver_with_its_tumours():
    assert LabelToTarget("liver")(LABEL).tolist() == [[[0, 1, 1, 1], [1, 0, 0, 1]]]


def test_tumour_target_is_label_2_only():
    assert LabelToTarget("tumor")(LABEL).tolist() == [[[0, 0, 1, 0], [1, 0, 0, 0]]]


def test_both_gives_liver_then_tumour_channels():
    out = LabelToTarget("both")(LABEL)
    assert out.shape == (2, 2, 4) and TARGET_CHANNELS["both"] == ("liver", "tumor")
    assert torch.equal(out[0], LabelToTarget("liver")(LABEL)[0])
    assert torch.equal(out[1], LabelToTarget("tumor")(LABEL)[0])


def test_numpy_labels_and_mask_dtype():
    out = LabelToTarget("liver", dtype=np.uint8)(LABEL.numpy())
    assert out.dtype == np.uint8 and out.sum() == 5


def test_values_outside_lits_are_refused_with_the_values():
    with pytest.raises(ValueError, match=r"got also 5, 117"):
        LabelToTarget()(torch.tensor([[[0.0, 5.0, 117.0, 1.0]]]))


def test_unknown_target_and_multichannel_labels_are_refused():
    with pytest.raises(ValueError, match="`target` must be one of"):
        LabelToTarget("kidney")
    with pytest.raises(ValueError, match=r"channel-first label map \(1, \*spatial\)"):
        LabelToTarget()(torch.zeros(2, 4, 4))


def test_dictionary_version():
    out = LabelToTargetd(keys="label", target="tumor")({"label": LABEL, "image": LABEL})
    assert out["label"].sum() == 2 and out["image"].sum() == LABEL.sum()


def test_other_label_schemes_map_to_lits_with_the_rest_as_background():
    totalseg = torch.tensor([[[0.0, 5.0, 2.0, 117.0, 5.0]]])
    assert RemapLabels(parse_label_map("5:1"))(totalseg).tolist() == [[[0, 1, 0, 0, 1]]]
    out = RemapLabelsd(keys="label", mapping={5: 1, 2: 2})({"label": totalseg})["label"]
    assert out.tolist() == [[[0, 1, 2, 0, 1]]]


@pytest.mark.parametrize("text", ["5", "5:3", "a:1", ""])
def test_bad_label_maps_are_refused(text):
    with pytest.raises(ValueError, match="label map"):
        parse_label_map(text)


def test_target_channels_back_to_lits_labels():
    for target in ("liver", "tumor", "both"):
        back = target_to_lits(LabelToTarget(target)(LABEL).numpy(), target)
        expected = {"liver": (LABEL[0] >= 1) * 1, "tumor": (LABEL[0] == 2) * 2, "both": LABEL[0]}[target]
        assert np.array_equal(back, expected.numpy())
    with pytest.raises(ValueError, match="needs 2 channel"):
        target_to_lits(np.zeros((1, 4, 4)), "both")


def test_a_source_that_labels_the_liver_only_leaves_its_tumour_unknown_inside_the_liver_only():
    from transforms import TUMOUR_UNKNOWN

    liver_only = torch.tensor([[[0, 1, 1, 1], [1, 0, 0, 1]]], dtype=torch.float32)
    out = LabelToTarget("both")(liver_only, tumour_labelled=False)
    assert torch.equal(out[0], liver_only[0])  # the liver is known
    assert out[1].tolist() == [[0, TUMOUR_UNKNOWN, TUMOUR_UNKNOWN, TUMOUR_UNKNOWN], [TUMOUR_UNKNOWN, 0, 0, TUMOUR_UNKNOWN]]
    assert torch.equal(LabelToTarget("liver")(liver_only, tumour_labelled=False), LabelToTarget("liver")(liver_only))
    with pytest.raises(ValueError, match="signed dtype"):
        LabelToTarget("both", dtype=np.uint8)(liver_only, tumour_labelled=False)


def test_the_dictionary_version_reads_the_entrys_flag_and_takes_it_out_of_the_sample():
    both = LabelToTargetd(keys="label", target="both", known_key="tumour_labelled")
    unknown = both({"label": LABEL, "tumour_labelled": False})
    known, unflagged = both({"label": LABEL, "tumour_labelled": True}), both({"label": LABEL})
    assert "tumour_labelled" not in unknown and "tumour_labelled" not in known
    assert torch.equal(known["label"], unflagged["label"]) and torch.equal(known["label"], LabelToTarget("both")(LABEL))
    assert int((unknown["label"][1] < 0).sum()) == int((LABEL > 0).sum())  # every liver pixel, tumour included
