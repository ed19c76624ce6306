import json

import nibabel as nib
import numpy as np

from workflows import quickstart

TINY = {
    "cases": 5, "size": 32, "slices": 12, "chunk_size": 16,
    "overrides": {"spatial_size": 32, "network_def#channels": [4, 8, 16, 32], "epochs_per_chunk": 1, "batch_size": 4,
                  "learning_rate": 0.002, "checkpoint_every": 5},
}


def test_quickstart_runs_end_to_end_and_carries_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quickstart, "QUICK_SETTINGS", TINY)
    assert quickstart.main(["--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["channels"]["liver"]
    honest = metrics["honest"]["dice_slices_with_target"]
    assert f"contain liver (honest): {honest:.4f}" in printed
    assert "python -m monai.bundle run training --config_file" in printed and "--chunk" not in printed
    assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "eval" / "val_predictions" / "sample_0.png").exists()
    held_out = nib.load(tmp_path / "held_out" / "pred" / "volume-5_seg.nii.gz")
    scan = nib.load(tmp_path / "held_out" / "scan" / "volume-5.nii.gz")
    assert "".join(nib.aff2axcodes(scan.affine)) == quickstart.HELD_OUT_AXCODES
    assert held_out.shape == scan.shape and np.allclose(held_out.affine, scan.affine)
    assert (tmp_path / "held_out" / "evaluation" / "summary.json").exists() and "held-out scan volume-5" in printed
    n_chunks = len(json.loads((tmp_path / "lists" / "split.json").read_text())["chunks"])
    assert n_chunks >= 2 and len(json.loads((tmp_path / "models" / "training_log.json").read_text())) == n_chunks

    model = (tmp_path / "models" / "model.pt").read_bytes()
    assert quickstart.main(["--out", str(tmp_path)]) == 0  # the old spelling still works; a rerun carries on: nothing left to train
    printed = capsys.readouterr().out
    assert "5 volume(s) already complete, skipped" in printed and f"all {n_chunks} chunks are already done" in printed
    assert (tmp_path / "models" / "model.pt").read_bytes() == model
