import json

import cv2

from workflows.data.exploration import explore
from workflows.explore import main
from workflows.data.slice_set import read_manifest


def test_report_counts_match_the_manifest_and_pictures_exist(slice_set, tmp_path):
    summary = explore(slice_set, tmp_path, max_images=30, progress=False)
    rows = read_manifest(slice_set)
    assert summary["slices"] == len(rows) == 60 and summary["volumes"] == 6
    assert summary["slices_with_liver"] == sum(bool(r["liver_pixels"]) for r in rows)
    assert summary["slices_with_tumour"] == sum(bool(r["tumor_pixels"]) for r in rows) > 0
    assert summary["per_volume"]["0"]["slices"] == 10
    assert 0 <= summary["pixels"]["min"] < summary["pixels"]["max"] <= 255
    # the liver is brighter than the image average in the abdomen window, tumours differ from it
    assert summary["pixels"]["liver_median"] > summary["pixels"]["mean"]
    assert summary["tumour_sizes"]["unit"] == "mm²" and summary["tumour_sizes"]["median"] > 0
    for figure in ("intensity_histogram.png", "per_volume.png", "tumour_sizes.png", "samples.png"):
        image = cv2.imread(str(tmp_path / figure))
        assert image is not None and image.shape[0] > 100
        assert f"({figure})" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["slices"] == 60


def test_two_d_set_without_tumour_labels_says_unknown(real_data, tmp_path, capsys):
    from workflows.data.conversion import convert

    convert(real_data / "chaos_ct_p1", tmp_path / "slices", progress=False)
    assert main(["--input", str(tmp_path / "slices"), "--output", str(tmp_path / "report"), "--max-images", "20"]) == 0
    assert "95 slices, 93 with liver, unknown with tumour" in capsys.readouterr().out
    assert "tumour_sizes.png" not in (tmp_path / "report" / "report.md").read_text()


def _set_with_liver_grey(root, grey):
    import cv2
    import numpy as np
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for k in range(3):
        image = np.full((32, 32), 40, np.uint8)
        image[8:24, 8:24] = grey
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 8:24] = 255
        cv2.imwrite(str(root / "images" / f"slice_{k}.png"), image)
        cv2.imwrite(str(root / "masks" / f"slice_{k}.png"), mask)


def test_sources_in_different_windows_are_warned_about_loudly(tmp_path, capsys):
    from workflows.data.conversion import convert
    from workflows.explore import main
    _set_with_liver_grey(tmp_path / "raw" / "abdomen_like", 160)
    _set_with_liver_grey(tmp_path / "raw" / "other_window", 240)
    convert(tmp_path / "raw", tmp_path / "slices")
    assert "WARNING: the sources' liver grey levels differ" in capsys.readouterr().out
    assert main(["--input", str(tmp_path / "slices"), "--output", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    assert "2D set abdomen_like (unknown (8-bit 2D source)) 160" in err and "other_window" in err
    assert "abdomen window" in err  # what to do
    report = (tmp_path / "report" / "report.md").read_text()
    assert "**WARNING:" in report and "| 2D set other_window | unknown (8-bit 2D source) | 1 | 240 |" in report


def test_sources_that_agree_raise_no_warning(tmp_path, capsys):
    from workflows.data.conversion import convert
    from workflows.data.exploration import explore
    _set_with_liver_grey(tmp_path / "raw" / "a", 160)
    _set_with_liver_grey(tmp_path / "raw" / "b", 170)
    convert(tmp_path / "raw", tmp_path / "slices")
    assert "WARNING" not in capsys.readouterr().out
    assert explore(tmp_path / "slices", tmp_path / "report", progress=False)["source_warning"] is None
