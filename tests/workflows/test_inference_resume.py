"""Inference carries on: a rerun skips the scans already segmented, shards share one output folder, and outputs of
another model are never replaced unasked."""

import json

import nibabel as nib
import pytest
import torch

from networks import ThreeLevelUNet
from workflows.bundle import run_workflow
from workflows.infer import main as infer_main
from workflows.data.synthetic_cases import generate_case

CHANNELS = [4, 8, 16, 32]


@pytest.fixture()
def scans(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for k in range(3):
        case = generate_case(k, seed=11, size=24, slices=5)
        nib.save(case.stored_image(case.hu), folder / f"volume-{k}.nii.gz")
    return folder


def _model(path, seed=0):
    torch.manual_seed(seed)
    torch.save(ThreeLevelUNet(channels=CHANNELS).state_dict(), path)
    return path


def _infer(scans, out, model, **overrides):
    settings = {"input": str(scans), "output_dir": str(out), "ckpt_file": str(model), "spatial_size": 24,
                "network_def#channels": CHANNELS, **overrides}
    return run_workflow("inference", ["inference"], "infer", **settings)[0]


def _stamps(out):
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("*_seg.nii.gz"))}


def test_a_rerun_skips_finished_scans_and_overwrite_redoes_them(scans, tmp_path, capfd):
    model = _model(tmp_path / "model.pt")
    out = tmp_path / "out"
    first = _infer(scans, out, model)
    stamps = _stamps(out)
    assert len(stamps) == 3
    (out / "volume-1_seg.nii.gz").unlink()  # one output lost: that scan alone is segmented again
    capfd.readouterr()
    again = _infer(scans, out, model)
    assert "2 scan(s) already segmented" in "".join(capfd.readouterr())  # the bundle's log, on the console
    after = _stamps(out)
    assert after["volume-0_seg.nii.gz"] == stamps["volume-0_seg.nii.gz"] and "volume-1_seg.nii.gz" in after
    assert [r["scan"] for r in again] == [r["scan"] for r in first]
    _infer(scans, out, model, overwrite=True)
    assert all(_stamps(out)[name] != stamps[name] for name in ("volume-0_seg.nii.gz", "volume-2_seg.nii.gz"))


def test_outputs_of_another_model_are_refused_naming_the_way_out(scans, tmp_path, capsys):
    out = tmp_path / "out"
    _infer(scans, out, _model(tmp_path / "a.pt"))
    stamps = _stamps(out)
    other = _model(tmp_path / "b.pt", seed=1)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        infer_main(["--input", str(scans), "--model", str(other), "--output", str(out), "--spatial-size", "24",
                    "--channels", *map(str, CHANNELS)])
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "\n" not in error
    assert "made by another model" in error and "--overwrite" in error
    assert _stamps(out) == stamps  # nothing replaced unasked
    _infer(scans, out, other, overwrite=True)
    assert _stamps(out) != stamps


def test_two_shards_segment_every_scan_once_into_one_summary(scans, tmp_path):
    model = _model(tmp_path / "model.pt")
    out = tmp_path / "out"
    first = _infer(scans, out, model, shard="1/2")
    assert [r["scan"].rsplit("/", 1)[-1] for r in first] == ["volume-0.nii.gz", "volume-2.nii.gz"]
    second = _infer(scans, out, model, shard="2/2")
    records = sorted(p.name for p in (out / ".rows").iterdir())
    assert records == [".naming.json", "volume-0.json", "volume-1.json", "volume-2.json"]  # and how they are named
    assert [r["scan"].rsplit("/", 1)[-1] for r in second] == [f"volume-{k}.nii.gz" for k in range(3)]
    assert json.loads((out / "summary.json").read_text()) == second
    with pytest.raises(ValueError, match="--shard must be I/N"):
        _infer(scans, out, model, shard="3/2")
