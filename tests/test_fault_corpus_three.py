"""The third fault corpus: model files training would replace, numbers passed on as text, settings nobody reads,
reports that say zero for what a model does not segment, conversions that match nothing, shards that disagree,
report links, privacy under ``--deidentify``, and errors that must stay one line. One generated case per class; each
asserts the exit status, one line naming the file or setting, no traceback, and that nothing the user owns changed
(hashes before and after). Tiny and generated on the fly."""

from __future__ import annotations

import csv
import errno
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import nibabel as nib
import pytest
import torch
from monai.bundle import ConfigWorkflow

from networks import ThreeLevelUNet
from workflows.bundle import BundleCommandError, config_file, run_workflow
from workflows.data.synthetic_cases import generate_case
from workflows.engine.model_file import save_model_file
from workflows.inference import NOT_SEGMENTED

from .bundles.conftest import TINY, TRAIN, lists  # noqa: F401 (the session's tiny lists)
from .test_fault_corpus_two import (_hashes, _no_handler_on_a_closed_capture, _one_error_line, convert_main,  # noqa: F401
                                    infer_main)

CASE = generate_case(0, seed=2, size=16, slices=6)
CHANNELS = ["4", "8", "16", "32"]
BUNDLE_RUN = [sys.executable, "-m", "monai.bundle", "run"]


@pytest.fixture(scope="module")
def liver_model(tmp_path_factory):
    """A liver-only model file with its settings, as training writes one."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("corpus3") / "liver.pt"
    settings = {"architecture": "three_level_unet", "target": "liver", "spatial_size": 16, "channels": [4, 8, 16, 32],
                "context": 0, "window": "abdomen"}
    return save_model_file(path, ThreeLevelUNet(channels=(4, 8, 16, 32)).state_dict(), settings)


def _infer(*args):
    return infer_main(list(args))


def _scan(folder: Path, name: str = "ct.nii.gz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(CASE.stored_image(CASE.hu), folder / name)
    return folder / name


def _last_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


# -- 1. training never replaces a model file it did not write --------------------------------------------------------
def test_training_refuses_a_ckpt_dir_holding_the_users_own_model(lists, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    torch.save(ThreeLevelUNet(channels=(4, 8, 16, 32)).state_dict(), models / "model.pt")  # the user's own model
    before = _hashes(models)
    with pytest.raises(ValueError, match=r"model.pt: is already there and was not written by this training.*move it "
                                         r"away, or choose another --ckpt_dir"):
        run_workflow("training", ["train"], "train", **{**TINY, "dataset_dir": str(lists), "ckpt_dir": str(models)})
    assert _hashes(models) == before


def test_training_carries_on_over_its_own_model_files(lists, tmp_path):
    models = tmp_path / "models"
    overrides = {**TINY, "dataset_dir": str(lists), "ckpt_dir": str(models)}
    run_workflow("training", ["train"], "train", **overrides, chunk=0)
    first = (models / "model.pt").read_bytes()
    run_workflow("training", ["train"], "train", **overrides, chunk=1)  # replaces model.pt: it wrote it
    assert (models / "model.pt").read_bytes() != first
    written = json.loads((models / "written_models.json").read_text())
    assert len(written["model.pt"]) == 2


# -- 2. a liver-only model says it does not segment tumours ----------------------------------------------------------
def test_a_liver_model_reports_its_tumour_as_not_segmented_not_zero(liver_model, tmp_path, capsys):
    scan = _scan(tmp_path / "scans")
    assert _infer("--input", str(scan), "--model", str(liver_model), "--output", str(tmp_path / "out")) == 0
    printed = capsys.readouterr().out
    row = json.loads((tmp_path / "out" / "summary.json").read_text())[0]
    assert row["tumour_ml"] == NOT_SEGMENTED and row["lesions"] == NOT_SEGMENTED and "lesion_table" not in row
    assert f"tumour {NOT_SEGMENTED}" in printed and "tumour 0.0 mL" not in printed
    with open(tmp_path / "out" / "summary.csv") as handle:
        assert next(csv.DictReader(handle))["tumour_ml"] == NOT_SEGMENTED
    page = (tmp_path / "out" / "report.html").read_text()
    assert f"tumour {NOT_SEGMENTED}" in page and ">none<" not in page


# -- 3. numbers given as text reach every component as numbers -------------------------------------------------------
def test_numbers_with_leading_zeros_train_and_infer_as_numbers(lists, tmp_path):
    models = tmp_path / "models"
    train = [*BUNDLE_RUN, "training", "--config_file", TRAIN, "--dataset_dir", str(lists), "--ckpt_dir", str(models),
             "--network_def#channels", "[4,8,16,32]", "--progress", "false", "--chunk", "0", "--spatial_size", "032",
             "--batch_size", "02", "--epochs_per_chunk", "01", "--val_interval", "01", "--checkpoint_every", "01",
             "--seed", "00"]
    result = subprocess.run(train, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    settings = torch.load(models / "model.pt", weights_only=True)["settings"]
    assert settings["spatial_size"] == 32 and settings["channels"] == [4, 8, 16, 32]
    scan = _scan(tmp_path / "scans")
    infer = [*BUNDLE_RUN, "inference", "--config_file", config_file("inference"), "--ckpt_file",
             str(models / "model.pt"), "--input", str(scan), "--output_dir", str(tmp_path / "out"),
             "--sw_batch_size", "05", "--min_tumour_mm3", "010"]
    result = subprocess.run(infer, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "ct_seg.nii.gz").is_file()


# -- 4. a setting nobody reads is refused, naming the closest known one ----------------------------------------------
@pytest.mark.parametrize("flag, value, words", [
    ("--largest_livr", "false", "--largest_livr: not a setting of inference.json (it would be ignored); did you mean "
                                "--largest_liver?"),
    ("--stage", "whole", "--stage: not a setting of inference.json"),
    ("--network_def#chanels", "[4,8,16,32]", "did you mean --network_def#channels?"),
], ids=["typo", "another workflow's", "nested typo"])
def test_an_unknown_bundle_setting_is_one_line(flag, value, words, liver_model, tmp_path):
    scan = _scan(tmp_path / "scans")
    before = _hashes(tmp_path)
    args = [*BUNDLE_RUN, "inference", "--config_file", config_file("inference"), "--ckpt_file", str(liver_model),
            "--input", str(scan), "--output_dir", str(tmp_path / "out"), flag, value]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 1 and words in _last_error(result.stderr)
    assert _hashes(tmp_path) == before and not (tmp_path / "out").exists()


def test_an_unknown_setting_from_python_is_refused_too(lists, tmp_path):
    with pytest.raises(ValueError, match=r"--epochs_per_chunck: not a setting of train.json.*did you mean "
                                         r"--epochs_per_chunk\?"):
        run_workflow("training", ["train"], "train", dataset_dir=str(lists), ckpt_dir=str(tmp_path),
                     epochs_per_chunck=3)


# -- 5. a label map that matches nothing ------------------------------------------------------------------------------
def test_a_label_map_matching_no_label_value_is_refused_by_file(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    nib.save(CASE.stored_image(CASE.hu), raw / "volume-0.nii.gz")
    nib.save(CASE.stored_image(CASE.label), raw / "segmentation-0.nii.gz")
    before = _hashes(raw)
    assert convert_main(["--input", str(raw), "--output", str(tmp_path / "out"), "--label-map", "9:1"]) == 1
    printed = capsys.readouterr()
    failed = [line for line in printed.out.splitlines() if line.startswith("FAILED volume 0")]
    assert len(failed) == 1 and "volume-0.nii.gz" in failed[0] and "--label-map 9:1 matches no value" in failed[0]
    assert "Traceback" not in printed.out + printed.err and _hashes(raw) == before
    assert convert_main(["--input", str(raw), "--output", str(tmp_path / "out2"), "--label-map", "9:1,1:1,2:2"]) == 0
    assert "no label value 9 in this label" in capsys.readouterr().out


# -- 6. budgets that are not numbers of minutes -----------------------------------------------------------------------
@pytest.mark.parametrize("minutes", ["nan", "inf", "-inf"])
def test_realdata_refuses_minutes_that_are_not_finite(minutes, tmp_path, capsys):
    from workflows.realdata import main as realdata_main

    with pytest.raises(SystemExit) as stop:
        realdata_main(["--data", str(tmp_path), "--output", str(tmp_path / "out"), f"--minutes={minutes}"])
    assert stop.value.code == 2
    assert _one_error_line(capsys.readouterr().err, "--minutes must be a positive, finite number", minutes)


# -- 7. shards of one output folder agree on how scans are named -----------------------------------------------------
def test_shards_that_name_scans_two_ways_are_refused(liver_model, tmp_path, capsys):
    scans = tmp_path / "scans"
    for k in range(2):
        _scan(scans, f"ct{k}.nii.gz")
    out = tmp_path / "out"
    assert _infer("--input", str(scans), "--model", str(liver_model), "--output", str(out), "--shard", "1/2",
                  "--deidentify") == 0
    before = _hashes(out)
    capsys.readouterr()
    assert _infer("--input", str(scans), "--model", str(liver_model), "--output", str(out), "--shard", "2/2") == 2
    assert _one_error_line(capsys.readouterr().err, str(out), "with --deidentify", "named two ways")
    assert _hashes(out) == before


# -- 8. picture links load whatever the scan is called ---------------------------------------------------------------
def test_report_links_are_url_encoded(liver_model, tmp_path):
    scans = tmp_path / "scans"
    for name in ("x#y.nii.gz", "100%25 ok?.nii.gz"):
        _scan(scans, name)
    assert _infer("--input", str(scans), "--model", str(liver_model), "--output", str(tmp_path / "out")) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    sources = [part.split('"')[0] for part in page.split('<img src="')[1:]]
    assert sources and all("#" not in s and "?" not in s and " " not in s for s in sources)
    assert all((tmp_path / "out" / unquote(s.replace("&amp;", "&"))).is_file() for s in sources)


# -- 9 and 10. privacy and spreadsheets --------------------------------------------------------------------------------
def test_deidentified_refusal_of_an_output_inside_the_input_names_no_path(liver_model, tmp_path, capsys):
    scans = tmp_path / "DOE_JOHN_MRN123"
    _scan(scans)
    assert _infer("--input", str(scans), "--model", str(liver_model), "--output", str(scans / "out"),
                  "--deidentify") == 2
    err = capsys.readouterr().err
    assert _one_error_line(err, "--output_dir is inside --input") and "DOE" not in err


def test_deidentified_bundle_run_hides_the_readers_note_on_an_unreadable_file(liver_model, tmp_path):
    scans = tmp_path / "DOE_JOHN_MRN123_folder"
    _scan(scans)
    (scans / "broken.nii.gz").write_bytes(b"\x1f\x8b" + b"not a scan" * 20)
    args = [*BUNDLE_RUN, "inference", "--config_file", config_file("inference"), "--ckpt_file", str(liver_model),
            "--input", str(scans), "--output_dir", str(tmp_path / "out"), "--deidentify", "true"]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "DOE" not in result.stdout + result.stderr


def test_a_scan_named_like_a_formula_stays_text_in_the_summary(liver_model, tmp_path, monkeypatch):
    _scan(tmp_path, "=HYPERLINK(1).nii.gz")
    monkeypatch.chdir(tmp_path)  # relative paths: the summary's cells start with the file's name
    assert _infer("--input", "=HYPERLINK(1).nii.gz", "--model", str(liver_model), "--output", "+out") == 0
    with open(tmp_path / "+out" / "summary.csv") as handle:
        row = next(csv.DictReader(handle))
    assert row["scan"].startswith("'") and "=HYPERLINK(1)" in row["scan"]
    assert row["segmentation"].startswith("'+out")
    assert all(not value.startswith(("=", "+", "@", "-")) for value in row.values())


# -- 11. one line, never a traceback ------------------------------------------------------------------------------------
def test_a_model_file_whose_settings_are_not_a_dictionary_is_one_line(tmp_path, capsys):
    scan = _scan(tmp_path / "scans")
    model = tmp_path / "model.pt"
    torch.save({"model": ThreeLevelUNet(channels=(4, 8, 16, 32)).state_dict(), "settings": [16, "liver"]}, model)
    assert _infer("--input", str(scan), "--model", str(model), "--output", str(tmp_path / "out")) == 2
    assert _one_error_line(capsys.readouterr().err, str(model), "settings are a list, not a dictionary")


def test_a_model_files_bad_settings_are_blamed_on_the_file_not_a_flag(tmp_path, capsys):
    scan = _scan(tmp_path / "scans")
    model = tmp_path / "model.pt"
    torch.save({"model": {}, "settings": {"target": "liver", "spatial_size": "abc"}}, model)
    assert _infer("--input", str(scan), "--model", str(model), "--output", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert _one_error_line(err, str(model), "records spatial_size 'abc'", "damaged") and "--spatial_size" not in err


def test_evaluation_samples_as_text_is_checked_before_anything_is_built(lists, tmp_path):
    run_workflow("training", ["train"], "train", **{**TINY, "dataset_dir": str(lists), "ckpt_dir": str(tmp_path)},
                 chunk=0)
    workflow = ConfigWorkflow(config_file=[TRAIN, config_file("evaluate")], workflow_type="eval", run_id="evaluating",
                              logging_file=False, **{**TINY, "dataset_dir": str(lists), "ckpt_dir": str(tmp_path),
                                                     "output_dir": str(tmp_path / "eval"), "evaluation_samples": "abc"})
    workflow.initialize()
    with pytest.raises(BundleCommandError, match=r"--evaluation_samples must be a whole number .* got 'abc'"):
        workflow.run()
    assert not (tmp_path / "eval").exists()


def test_a_symlink_loop_as_input_is_one_line(liver_model, tmp_path, capsys):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert _infer("--input", str(tmp_path / "loop"), "--model", str(liver_model), "--output", str(tmp_path / "o")) == 2
    assert _one_error_line(capsys.readouterr().err, "loop", "a symbolic link to nothing (or to itself)")
    folder = tmp_path / "only_a_loop"
    folder.mkdir()
    (folder / "loop").symlink_to(folder / "loop")
    assert convert_main(["--input", str(folder), "--output", str(tmp_path / "c")]) == 2
    assert _one_error_line(capsys.readouterr().err, "only_a_loop", "nothing to convert", "loop: symbolic link")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("setting, words", [
    ("tensorboard_dir", "tensorboard.txt is a file, not a folder"),
    ("mlflow_tracking_uri", "--mlflow_tracking_uri notascheme://x: MLflow cannot use it"),
], ids=["tensorboard_dir a file", "bad mlflow uri"])
def test_training_outputs_it_cannot_use_are_one_line_before_training(setting, words, lists, tmp_path):
    (tmp_path / "tensorboard.txt").write_text("the user's notes\n")
    before = _hashes(tmp_path)
    value = str(tmp_path / "tensorboard.txt") if setting == "tensorboard_dir" else "notascheme://x"
    with pytest.raises(ValueError, match=words):
        run_workflow("training", ["train"], "train", **{**TINY, "dataset_dir": str(lists),
                                                        "ckpt_dir": str(tmp_path / "models"), setting: value,
                                                        "mlflow": setting == "mlflow_tracking_uri"})
    assert _hashes(tmp_path) == before and not (tmp_path / "models" / "checkpoint_chunk_0.pt").exists()


def test_a_full_disk_during_inference_is_one_line_naming_the_file(liver_model, tmp_path, capsys, monkeypatch):
    import builtins

    def full_for_masks(path, *args, **kwargs):  # the mask's write fails as on a full disk: no file name in it
        return _FullFile() if "_seg.nii.gz" in str(path) else builtins.open(path, *args, **kwargs)

    monkeypatch.setattr("workflows.machine.atomic.open", full_for_masks, raising=False)
    scan = _scan(tmp_path / "scans")
    assert _infer("--input", str(scan), "--model", str(liver_model), "--output", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert _one_error_line(err, str(tmp_path / "out" / "ct_seg.nii.gz"), "no space left on device", "free some space")
    assert not list((tmp_path / "out").glob(".tmp-*"))


class _FullFile:
    """A file whose writes fail as on a full disk (``OSError`` with no file name)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


# -- 12. messages that say what happened ---------------------------------------------------------------------------------
def test_a_kill_between_a_mask_and_its_record_is_not_blamed_on_another_tool(liver_model, tmp_path, capsys,
                                                                             monkeypatch):
    import workflows.inference.scans as scans_module

    scan = _scan(tmp_path / "scans")
    original, calls = scans_module.write_json_atomic, []

    def killed_at_the_record(path, payload):
        calls.append(path)
        if Path(path).parent.name == ".rows" and isinstance(payload, dict) and payload.get("row"):
            raise KeyboardInterrupt  # the mask is written, its finished record is not
        return original(path, payload)

    monkeypatch.setattr(scans_module, "write_json_atomic", killed_at_the_record)
    assert _infer("--input", str(scan), "--model", str(liver_model), "--output", str(tmp_path / "out")) == 130
    assert (tmp_path / "out" / "ct_seg.nii.gz").is_file()
    monkeypatch.setattr(scans_module, "write_json_atomic", original)
    capsys.readouterr()
    assert _infer("--input", str(scan), "--model", str(liver_model), "--output", str(tmp_path / "out")) == 0
    assert "not written by this tool" not in capsys.readouterr().err


def test_a_scan_added_to_a_deidentified_run_is_called_a_renumbering(liver_model, tmp_path, capsys):
    scans = tmp_path / "scans"
    _scan(scans, "b.nii.gz")
    out = tmp_path / "out"
    assert _infer("--input", str(scans), "--model", str(liver_model), "--output", str(out), "--deidentify") == 0
    hu = CASE.hu.copy()
    hu[0, 0, 0] += 1
    nib.save(CASE.stored_image(hu), scans / "a.nii.gz")  # sorts first: takes scan-001
    before = _hashes(out)
    capsys.readouterr()
    assert _infer("--input", str(scans), "--model", str(liver_model), "--output", str(out), "--deidentify") == 2
    err = capsys.readouterr().err
    assert _one_error_line(err, "de-identified names go by position") and "another model" not in err
    assert _hashes(out) == before


def test_a_training_log_that_is_not_json_is_named(lists, tmp_path):
    overrides = {**TINY, "dataset_dir": str(lists), "ckpt_dir": str(tmp_path)}
    run_workflow("training", ["train"], "train", **overrides, chunk=0)
    (tmp_path / "training_log.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"training_log.json: not a training log \(not JSON\); move it out of "
                                         r"--ckpt_dir"):
        run_workflow("training", ["train"], "train", **overrides, chunk=1)


# -- 13. busy machines --------------------------------------------------------------------------------------------------
def test_the_default_threads_leave_the_cores_another_program_keeps_busy():
    from workflows.machine.threads import available_cores, busy_cores, default_threads, set_threads

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = busy_cores(0.5)
        threads, reason = default_threads()
    finally:
        spinner.kill()
        spinner.wait()
    assert busy >= 0.6, busy  # one core spinning
    assert threads == max(1, available_cores() - max(1, round(busy))) and "busy with other programs" in reason
    assert set_threads(1) == 1 == torch.get_num_threads()  # --threads stays the override

