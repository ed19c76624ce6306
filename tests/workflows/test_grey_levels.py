import numpy as np

from workflows.data.grey_levels import GreyLevels, disagreeing_sources, source_groups


def test_histograms_count_liver_and_body_outside_it():
    """Inside the liver every grey level counts; outside it, grey level 0 (air, what the window cuts off) does not."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (64, 48)).astype(np.uint8)
    labels = rng.integers(0, 3, (64, 48)).astype(np.uint8)
    levels = GreyLevels()
    levels.add(grey, labels)
    levels.add(grey[:, ::2], None)  # a strided slice without labels: all of it outside the liver
    liver = labels >= 1
    assert np.array_equal(levels.liver, np.bincount(grey[liver], minlength=256))
    expected_outside = (np.bincount(grey[~liver & (grey > 0)], minlength=256)
                        + np.bincount(grey[:, ::2][grey[:, ::2] > 0], minlength=256))
    assert np.array_equal(levels.outside, expected_outside)


def test_sources_a_window_apart_are_flagged():
    records = {"a": {"source": "scans", "window": "-160..240 HU", "liver_median": 150.0},
               "b": {"source": "pngs", "window": "unknown", "liver_median": 240.0}}
    assert "differ by more than 40" in disagreeing_sources(source_groups(records))
    records["b"]["liver_median"] = 170.0
    assert disagreeing_sources(source_groups(records)) is None
