"""The second fault corpus: settings that lie, outputs over the user's files, geometry the readers half-understand,
privacy, model files, lists, pipes and links, through the command lines and bundle workflows as a user runs them.
Every case asserts the exit status, one line naming the file (or setting) and the reason, no traceback, and that
nothing the user owns changed (hashes before and after). Generated on the fly, tiny. (Resumes that drift:
``tests/bundles/test_resume_drift.py``; every bundle setting by type: ``tests/bundles/test_settings.py``.)"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigWorkflow

from networks import ThreeLevelUNet
from workflows.bundle import BundleCommandError, config_file
from workflows.convert import main as _convert
from workflows.inference.dicom_seg import write_dicom_seg
from workflows.explore import main as _explore
from workflows.infer import main as _infer_main
from workflows.split import main as _split
from workflows.data.synthetic_cases import generate_case
from workflows.data.synthetic_dicom import write_ct_series
from transforms import LoadScan

from .bundles.conftest import TINY, TRAIN

CASE = generate_case(0, seed=2, size=16, slices=6)
CHANNELS = ["4", "8", "16", "32"]


@pytest.fixture(autouse=True)
def _no_handler_on_a_closed_capture():
    """The bundle's logging.conf hands the root logger a handler on the sys.stdout of the test that ran a workflow;
    that test's capture is closed afterwards, and logging into it prints a "Logging error" traceback of the test
    harness, not of the tool: such handlers are dropped."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(getattr(handler, "stream", None), "closed", False):
            root.removeHandler(handler)
    yield


def _status(main):
    """A command line's ``main`` returning its exit status, as the shell sees it (``parser.exit`` included)."""

    def run(argv):
        try:
            return main(argv)
        except SystemExit as stop:
            return stop.code

    return run


convert_main, explore_main, infer_main, split_main = map(_status, (_convert, _explore, _infer_main, _split))


def _hashes(folder: Path) -> dict[str, str]:
    """What the user owns under ``folder``: every regular file's content hash."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def _one_error_line(text: str, *words: str) -> bool:
    lines = [line for line in text.strip().splitlines() if line.startswith("error:")]
    return len(lines) == 1 and all(w in lines[0] for w in words) and "Traceback" not in text


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("corpus2_weights") / "model.pt"
    torch.save(ThreeLevelUNet(channels=tuple(map(int, CHANNELS))).state_dict(), path)
    return path


def _infer(*args):
    return infer_main([*args, "--channels", *CHANNELS, "--spatial-size", "16"])


# -- outputs over the user's files --------------------------------------------------------------------------------
def test_inference_into_the_scans_folder_never_replaces_the_users_ground_truth(weights, tmp_path, capsys):
    nib.save(CASE.stored_image(CASE.hu), tmp_path / "ct.nii.gz")
    nib.save(CASE.stored_image(CASE.label), tmp_path / "ct_seg.nii.gz")  # the user's own label
    before = _hashes(tmp_path)
    code = _infer("--input", str(tmp_path / "ct.nii.gz"), "--model", str(weights), "--output", str(tmp_path))
    err = capsys.readouterr().err
    assert code == 2 and _one_error_line(err, "ct_seg.nii.gz", "not written by this tool", "--output_dir")
    assert _hashes(tmp_path) == before


def test_an_output_folder_holding_the_users_summary_is_refused(weights, tmp_path, capsys):
    nib.save(CASE.stored_image(CASE.hu), tmp_path / "ct.nii.gz")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.csv").write_text("patient,notes\nDOE,mine\n")
    before = _hashes(tmp_path)
    code = _infer("--input", str(tmp_path / "ct.nii.gz"), "--model", str(weights), "--output", str(tmp_path / "out"))
    assert code == 2 and _one_error_line(capsys.readouterr().err, "summary.csv", "not written by this tool")
    assert _hashes(tmp_path) == before


def test_a_rerun_into_its_own_output_folder_is_not_refused(weights, tmp_path, capsys):
    nib.save(CASE.stored_image(CASE.hu), tmp_path / "ct.nii.gz")
    for _ in range(2):
        assert _infer("--input", str(tmp_path / "ct.nii.gz"), "--model", str(weights), "--output",
                      str(tmp_path / "out"), "--overwrite") == 0


def test_scans_that_share_a_stem_get_outputs_of_their_own(weights, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    for k, name in enumerate(["x.nii", "x.nii.gz", "x_nii.nii.gz"]):
        hu = CASE.hu.copy()
        hu[0, 0, 0] = k  # three different scans
        nib.save(CASE.stored_image(hu), scans / name)
    assert _infer("--input", str(scans), "--model", str(weights), "--output", str(tmp_path / "out")) == 0
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())
    masks = [row["segmentation"] for row in rows]
    assert len(rows) == 3 and len(set(masks)) == 3 and all(Path(m).exists() for m in masks)
    assert [Path(row["scan"]).name for row in rows] == ["x.nii", "x.nii.gz", "x_nii.nii.gz"]


# -- one reader per input kind: 2D slices ---------------------------------------------------------------------------
@pytest.mark.parametrize("pixels, words", [
    (np.full((16, 16), 40000, np.uint16), "expected an 8-bit windowed slice"),
    (np.dstack([np.full((16, 16), v, np.uint8) for v in (10, 90, 200)]), "a colour image whose channels differ"),
], ids=["16-bit PNG", "colour PNG"])
def test_inference_reads_2d_slices_as_conversion_does(pixels, words, weights, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "slice.png"), pixels)
    code = _infer("--input", str(tmp_path / "slice.png"), "--model", str(weights), "--output", str(tmp_path / "out"))
    printed = capsys.readouterr().out
    failed = [line for line in printed.splitlines() if ": FAILED: " in line]
    assert code == 1 and len(failed) == 1 and "slice.png" in failed[0] and words in failed[0], printed


# -- model files ----------------------------------------------------------------------------------------------------
class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _model_faults(folder: Path, weights: Path) -> dict[str, tuple[Path, str]]:
    code = folder / "code.pt"
    torch.save({"model": _RunsCode()}, code)
    text = folder / "notes.pt"
    text.write_text("not weights\n")
    truncated = folder / "truncated.pt"
    truncated.write_bytes(weights.read_bytes()[:300])
    plain = folder / "pickled.pt"
    plain.write_bytes(pickle.dumps({"model": [1, 2]}))
    return {"code-running pickle": (code, "would run code when loaded"), "text file": (text, "not a model file"),
            "truncated": (truncated, "truncated or damaged"), "missing": (folder / "nope.pt", "no such model file"),
            "folder": (folder, "not a regular file")}


@pytest.mark.parametrize("fault", ["code-running pickle", "text file", "truncated", "missing", "folder"])
def test_a_bad_model_file_is_one_line_naming_it(fault, weights, tmp_path, capsys):
    nib.save(CASE.stored_image(CASE.hu), tmp_path / "ct.nii.gz")
    models = tmp_path / "models"
    models.mkdir()
    path, words = _model_faults(models, weights)[fault]
    before = _hashes(tmp_path)
    code = _infer("--input", str(tmp_path / "ct.nii.gz"), "--model", str(path), "--output", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2 and _one_error_line(err, str(path), words), err
    assert "weights_only" not in err
    assert _hashes(tmp_path) == before


# -- geometry the readers half-understand ---------------------------------------------------------------------------
def _series(folder: Path) -> list[Path]:
    write_ct_series(CASE, folder)
    return sorted(folder.glob("*.dcm"))


def _edit_all(files, **changes):
    mode = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        for path in files:
            ds = pydicom.dcmread(path)
            for name, value in changes.items():
                if value is None:
                    delattr(ds, name)
                else:
                    setattr(ds, name, value(ds) if callable(value) else value)
            ds.save_as(path)
    finally:
        pydicom.config.settings.writing_validation_mode = mode


def _long_orientation(raw):
    _edit_all(_series(raw / "volume-1"),
              ImageOrientationPatient=lambda ds: [f"{float(v):.20f}" for v in ds.ImageOrientationPatient])
    return raw / "volume-1"


def _no_pixel_spacing(raw):
    _edit_all(_series(raw / "volume-1"), PixelSpacing=None)
    return raw / "volume-1"


def _one_other_spacing(raw):
    files = _series(raw / "volume-1")
    _edit_all(files[2:3], PixelSpacing=["0.5", "0.5"])
    return raw / "volume-1"


def _liver_seg_of_another_series(raw):
    study = raw / "study"
    write_ct_series(CASE, study / "A")
    write_ct_series(dataclasses.replace(CASE, index=7), study / "B")
    load = LoadScan()
    a, b = load(study / "A"), load(study / "B")
    label = np.asarray(CASE.label)
    shape = tuple(a.shape[1:])
    grid = np.zeros(shape, np.uint8)
    grid[4:12, 4:12, 1:5] = 1
    tumour = grid.copy()
    tumour[6:9, 6:9, 2:4] = 2
    write_dicom_seg(grid, b.affine, study / "B", study / "A_ManualROI_Liver.dcm", target="liver")  # references B
    write_dicom_seg(tumour, a.affine, study / "A", study / "A_ManualROI_Tumor.dcm", target="tumor")
    del label
    return study / "A"


GEOMETRY_FAULTS = [
    ("ImageOrientationPatient as over-long strings", _long_orientation, "the reader built another geometry"),
    ("no PixelSpacing", _no_pixel_spacing, "carry no valid PixelSpacing"),
    ("one image of another PixelSpacing", _one_other_spacing, "have PixelSpacing 0.5/0.5 mm"),
    ("liver SEG referencing another series", _liver_seg_of_another_series, "labels another series"),
]


@pytest.mark.parametrize("case", GEOMETRY_FAULTS, ids=lambda c: c[0])
def test_conversion_refuses_geometry_it_cannot_trust(case, tmp_path, capsys):
    _, make, words = case
    raw = tmp_path / "raw"
    raw.mkdir()
    bad = make(raw)
    before = _hashes(raw)
    code = convert_main(["--input", str(raw), "--output", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    failed = [line for line in printed.splitlines() if line.startswith("FAILED volume")]
    assert code == 1 and len(failed) == 1 and words in failed[0] and bad.name in failed[0], printed[-2000:]
    assert _hashes(raw) == before


@pytest.mark.parametrize("case", GEOMETRY_FAULTS[:3], ids=lambda c: c[0])
def test_inference_refuses_geometry_it_cannot_trust(case, weights, tmp_path, capsys):
    _, make, words = case
    raw = tmp_path / "raw"
    raw.mkdir()
    bad = make(raw)
    code = _infer("--input", str(bad), "--model", str(weights), "--output", str(tmp_path / "out"))
    printed = capsys.readouterr()
    failed = [line for line in printed.out.splitlines() if ": FAILED: " in line]
    assert code == 1 and len(failed) == 1 and words in failed[0], printed
    assert "Traceback" not in printed.out + printed.err


# -- privacy --------------------------------------------------------------------------------------------------------
def test_deidentified_inference_names_no_file_anywhere_it_writes(weights, tmp_path, capsys):
    scans = tmp_path / "DOE_JOHN_MRN-987654"
    files = _series(scans / "DOE_JOHN_series")
    for k, path in enumerate(files):
        path.rename(path.with_name(f"DOE_JOHN_IM{k:04d}.dcm"))
    (scans / "DOE_JOHN_series" / "DOE_JOHN_IM0003.dcm").unlink()  # a gap: the error names two files
    nib.save(CASE.stored_image(CASE.hu), scans / "DOE_JANE.nii.gz")
    out = tmp_path / "out"
    code = _infer("--input", str(scans), "--model", str(weights), "--output", str(out), "--deidentify")
    printed = capsys.readouterr()
    assert code == 1
    written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".csv", ".html"))
    names = [p.name for p in out.rglob("*")]
    for text in (written, printed.out, printed.err, " ".join(names)):
        assert "DOE" not in text and "MRN" not in text, text[:2000]
    assert "slices are missing between" in written  # the reason is kept, the names are not


def test_deidentified_bundle_run_does_not_echo_the_input_path(weights, tmp_path):
    import subprocess
    import sys

    scans = tmp_path / "DOE_JOHN_MRN-987654"
    scans.mkdir()
    nib.save(CASE.stored_image(CASE.hu), scans / "ct.nii.gz")
    args = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", config_file("inference"),
            "--ckpt_file", str(weights), "--input", str(scans), "--output_dir", str(tmp_path / "out"),
            "--network_def#channels", "[4,8,16,32]", "--spatial_size", "16", "--deidentify", "true"]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DOE_JOHN" not in result.stdout + result.stderr


# -- command lines: pipes, links, bad lists, contradictions ---------------------------------------------------------
def test_a_pipe_as_input_is_one_line(weights, tmp_path, capsys):
    os.mkfifo(tmp_path / "scan.nii.gz")
    assert _infer("--input", str(tmp_path / "scan.nii.gz"), "--model", str(weights), "--output", str(tmp_path / "o")) == 2
    assert _one_error_line(capsys.readouterr().err, "scan.nii.gz", "not a regular file or folder")
    assert convert_main(["--input", str(tmp_path / "scan.nii.gz"), "--output", str(tmp_path / "c")]) == 2
    assert _one_error_line(capsys.readouterr().err, "scan.nii.gz", "not a regular file or folder")


def test_pipes_and_link_loops_among_scans_are_named_not_passed_over(weights, tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    nib.save(CASE.stored_image(CASE.hu), raw / "volume-0.nii.gz")
    os.mkfifo(raw / "volume-1.nii.gz")
    os.symlink("volume-2.nii.gz", raw / "volume-2.nii.gz")  # a link to itself
    assert convert_main(["--input", str(raw), "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "left out" in printed and "volume-1.nii.gz: not a regular file" in printed
    assert "volume-2.nii.gz: a symbolic link to nothing (or to itself)" in printed
    assert _infer("--input", str(raw), "--model", str(weights), "--output", str(tmp_path / "seg")) == 0
    printed = capsys.readouterr().out
    assert "volume-1.nii.gz: left out (not a regular file)" in printed and "volume-2.nii.gz: left out" in printed


def test_an_output_path_that_is_a_file_is_one_line_with_its_own_advice(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    nib.save(CASE.stored_image(CASE.hu), raw / "volume-0.nii.gz")
    (tmp_path / "taken").write_text("mine")
    assert convert_main(["--input", str(raw), "--output", str(tmp_path / "taken" / "slices")]) == 2
    err = capsys.readouterr().err
    assert _one_error_line(err, "taken", "not a directory") and "free some space" not in err
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_contradictory_label_map_is_refused(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    nib.save(CASE.stored_image(CASE.hu), raw / "volume-0.nii.gz")
    assert convert_main(["--input", str(raw), "--output", str(tmp_path / "out"), "--label-map", "5:1,5:2"]) == 2
    assert _one_error_line(capsys.readouterr().err, "sends 5 to both 1 and 2")


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus2_slices")
    raw = root / "raw"
    raw.mkdir()
    for k in range(3):
        case = dataclasses.replace(CASE, index=k)
        nib.save(case.stored_image(case.hu), raw / f"volume-{k}.nii.gz")
        nib.save(case.stored_image(case.label), raw / f"segmentation-{k}.nii.gz")
    assert convert_main(["--input", str(raw), "--output", str(root / "slices")]) == 0
    return root / "slices"


def _copy(folder: Path, tmp_path: Path) -> Path:
    shutil.copytree(folder, tmp_path / folder.name)
    return tmp_path / folder.name


def test_split_refuses_a_slice_set_given_twice(slices, tmp_path, capsys):
    code = split_main(["--input", str(slices), "--input", str(slices), "--output", str(tmp_path / "lists")])
    assert code == 2 and _one_error_line(capsys.readouterr().err, str(slices), "given twice")
    assert not (tmp_path / "lists").exists()


@pytest.mark.parametrize("content, words", [
    ("volume_id,patient_id\n0,A\n1\n", "line 3 has no patient_id"),
    ("volume_id,patient_id\n0,A\n0,B\n", "volume 0 is given two patients"),
    (None, "not a regular file"),
], ids=["short row", "two patients", "named pipe"])
def test_split_refuses_bad_groups_in_one_line(content, words, slices, tmp_path, capsys):
    groups = tmp_path / "groups.csv"
    if content is None:
        os.mkfifo(groups)  # read, it would block forever
    else:
        groups.write_text(content)
    code = split_main(["--input", str(slices), "--output", str(tmp_path / "lists"), "--groups", str(groups)])
    assert code == 2 and _one_error_line(capsys.readouterr().err, "groups.csv", words)


def test_a_manifest_with_a_renamed_column_is_one_line(slices, tmp_path, capsys):
    copied = _copy(slices, tmp_path)
    manifest = copied / "manifest.csv"
    manifest.write_text(manifest.read_text().replace("slice_index", "slice", 1))
    before = _hashes(copied)
    assert split_main(["--input", str(copied), "--output", str(tmp_path / "lists")]) == 2
    assert _one_error_line(capsys.readouterr().err, "manifest.csv", "no column slice_index")
    assert _hashes(copied) == before


def test_explore_with_one_image_deleted_is_one_line_naming_it(slices, tmp_path, capsys):
    copied = _copy(slices, tmp_path)
    gone = sorted((copied / "images").iterdir())[1]
    gone.unlink()
    assert explore_main(["--input", str(copied), "--output", str(tmp_path / "explore")]) == 2
    assert _one_error_line(capsys.readouterr().err, gone.name, "no such file", "manifest.csv")


# -- training: every file a run needs is checked before it starts ---------------------------------------------------
@pytest.fixture(scope="module")
def lists(slices):
    """Lists beside the slices (they name them by relative path): copying ``lists.parent`` copies both."""
    assert split_main(["--input", str(slices), "--output", str(slices.parent / "lists"), "--chunk-size", "4",
                       "--val-fraction", "0.34"]) == 0
    return slices.parent / "lists"


def _train(lists, ckpt_dir, **overrides):
    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", run_id="training", logging_file=False,
                              **{**TINY, "spatial_size": 16, "dataset_dir": str(lists), "ckpt_dir": str(ckpt_dir),
                                 **overrides})
    workflow.initialize()
    return workflow.run()


@pytest.mark.parametrize("damage, words", [
    ("empty chunk", "chunk_0.json: lists no slice"),
    ("val.json gone", "val.json: listed in"),
    ("ckpt_dir under a file", "--ckpt_dir .*file is a file, not a folder"),
], ids=lambda d: d if isinstance(d, str) and " " in d else None)
def test_training_checks_every_file_it_needs_before_it_starts(damage, words, lists, tmp_path):
    copied = tmp_path / "copy"
    shutil.copytree(lists.parent, copied, symlinks=True)
    copied_lists = copied / "lists"
    ckpt_dir = tmp_path / "models"
    if damage == "empty chunk":
        (copied_lists / "chunk_0.json").write_text(json.dumps({"training": []}))
    elif damage == "val.json gone":
        (copied_lists / "val.json").unlink()
    else:
        (tmp_path / "file").write_text("mine")
        ckpt_dir = tmp_path / "file" / "models"
    with pytest.raises(BundleCommandError, match=words) as error:
        _train(copied_lists, ckpt_dir)
    assert "\n" not in str(error.value)
    assert not list(tmp_path.rglob("checkpoint_*.pt"))  # refused before any chunk trained


def test_ctrl_c_mid_chunk_is_one_line_and_status_130(lists, tmp_path, monkeypatch, capfd):
    import workflows.engine.training as training

    def interrupt(self, engine):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.ProgressCheckpointHandler, "__call__", interrupt)
    with pytest.raises(SystemExit) as stopped:
        _train(lists, tmp_path / "models", checkpoint_every=1)
    printed = capfd.readouterr()
    assert stopped.value.code == 130 and "Traceback" not in printed.out + printed.err
    assert "interrupted; rerun the same command to continue" in printed.err


def test_a_full_disk_is_one_line_naming_the_path_without_a_logged_traceback(lists, tmp_path, monkeypatch, capfd):
    import errno

    import workflows.engine.chunk_run as training  # where checkpoints are written

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(training, "write_bytes_atomic", full)
    with pytest.raises(BundleCommandError, match=r"checkpoint_progress.pt: no space left on device; every file "
                                                 r"written before is whole and kept") as error:
        _train(lists, tmp_path / "models", checkpoint_every=1)
    printed = capfd.readouterr()
    assert "\n" not in str(error.value) and "Traceback" not in printed.out + printed.err


def test_evaluation_with_a_text_model_file_is_one_line(lists, tmp_path):
    (tmp_path / "model.pt").write_text("not weights")
    workflow = ConfigWorkflow(config_file=[TRAIN, config_file("evaluate")], workflow_type="eval",
                              run_id="evaluating", logging_file=False,
                              **{**TINY, "spatial_size": 16, "dataset_dir": str(lists), "ckpt_dir": str(tmp_path),
                                 "output_dir": str(tmp_path / "eval")})
    workflow.initialize()
    with pytest.raises(BundleCommandError, match=r"model.pt: not a model file") as error:
        workflow.run()
    assert "\n" not in str(error.value) and (tmp_path / "model.pt").read_text() == "not weights"
