import numpy as np

from workflows.data.grey_levels import UNKNOWN_WINDOW, GreyLevels, disagreeing_sources, liver_grey_scale, source_groups


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


def test_a_2d_set_in_another_window_gets_the_factor_that_matches_the_scans_liver():
    records = {"s1": {"source": "scans", "window": "-160..240 HU", "liver_median": 140.0},
               "s2": {"source": "scans", "window": "-160..240 HU", "liver_median": 160.0},
               "chaos": {"source": "pngs", "window": UNKNOWN_WINDOW, "liver_median": 240.0},
               "kaggle": {"source": "jpgs", "window": UNKNOWN_WINDOW, "liver_median": 170.0}}
    groups = source_groups(records)
    assert liver_grey_scale(groups, "pngs") == 0.625  # 150 / 240: the scans' median liver grey
    assert liver_grey_scale(groups, "jpgs") is None  # within the margin: left as found
    assert liver_grey_scale(groups, "scans") is None  # a scan's window is known: never rescaled
    assert "--grey-scale 0.625" in disagreeing_sources(groups) and "jpgs" not in disagreeing_sources(groups).split("(")[-1]
    only_2d = source_groups({k: records[k] for k in ("chaos", "kaggle")})
    assert liver_grey_scale(only_2d, "pngs") is None  # no scan to match: the warning stays, with no factor
    assert "--grey-scale" not in disagreeing_sources(only_2d)
    scaled = {**records["chaos"], "window": UNKNOWN_WINDOW + ", grey levels x0.625", "liver_median": 150.0}
    assert liver_grey_scale(source_groups({**records, "chaos": scaled}), "pngs") is None  # rescaled once, not again
