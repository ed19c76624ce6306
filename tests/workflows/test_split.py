import hashlib
import json

import pytest
from monai.data import load_decathlon_datalist

from workflows.slice_set import read_manifest
from workflows.split import main
from workflows.splitting import check_disjoint, plan_split, write_split


def _hash_tree(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.json"))}


def test_split_is_by_patient_with_requested_chunk_sizes(slice_set, tmp_path, capsys):
    assert main(["--input", str(slice_set), "--output", str(tmp_path), "--positives", "16", "--negatives", "8",
                 "--chunk-size", "8", "--val-fraction", "0.34", "--seed", "1"]) == 0
    split = json.loads((tmp_path / "split.json").read_text())
    volumes = split["volumes"]
    assert len(volumes["train"]) == 4 and len(volumes["val"]) == 2 and not volumes["test"]
    assert not set(volumes["train"]) & set(volumes["val"])

    assert split["counts"]["train_available"]["negative"] >= 8  # so nothing had to scale down
    chunks = [load_decathlon_datalist(tmp_path / f"chunk_{k}.json", data_list_key="training") for k in range(3)]
    assert [len(c) for c in chunks] == [8, 8, 8]
    assert not (tmp_path / "chunk_3.json").exists()
    assert all(5 <= sum(e["positive"] for e in c) <= 6 for c in chunks)  # each chunk holds its share
    training = [e for c in chunks for e in c]
    assert sum(e["positive"] for e in training) == 16
    assert {e["volume_id"] for e in training} <= set(volumes["train"])
    assert all(e["image"].endswith(".png") and (tmp_path / e["image"]).exists() for e in training)  # absolute now
    assert len({e["image"] for e in training}) == 24  # no slice twice

    val = load_decathlon_datalist(tmp_path / "val.json", data_list_key="validation")
    assert {e["volume_id"] for e in val} == set(volumes["val"]) and len(val) == 20  # every slice of those volumes
    balanced = load_decathlon_datalist(tmp_path / "val_balanced.json", data_list_key="validation")
    assert sum(e["positive"] for e in balanced) * 2 == len(balanced) > 0


def test_counts_beyond_the_data_scale_down_keeping_the_ratio(slice_set):
    rows = read_manifest(slice_set)
    plan = plan_split(rows, positives=10_000, negatives=10_000, chunk_size=2_000, seed=0)
    used = plan.counts["train_used"]
    assert used["positive"] == used["negative"] == min(plan.counts["train_available"].values())
    assert "asked for 10000 positive + 10000 negative" in plan.messages[0]


def test_same_seed_same_files_other_seed_other_split(slice_set, tmp_path):
    rows = read_manifest(slice_set)
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        write_split(plan_split(rows, positives=12, negatives=12, chunk_size=10, seed=seed), tmp_path / name, slice_set)
    assert _hash_tree(tmp_path / "a") == _hash_tree(tmp_path / "b")
    assert _hash_tree(tmp_path / "a") != _hash_tree(tmp_path / "c")


def test_tumour_volumes_reach_validation_and_test(slice_set):
    rows = read_manifest(slice_set)
    with_tumour = {r["volume_id"] for r in rows if r["tumor_pixels"]}
    plan = plan_split(rows, target="tumor", positives=5, negatives=5, val_fraction=0.2, test_fraction=0.2, seed=2)
    assert set(plan.volumes["val"]) & with_tumour and set(plan.volumes["train"]) & with_tumour
    assert sum(bool(r["tumor_pixels"]) for c in plan.chunks for r in c) == 5


def test_overlapping_volumes_are_refused_by_name(slice_set, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(slice_set), "--out", str(tmp_path), "--val-volumes", "1,2", "--test-volumes", "2"])
    assert "volume 2 in val and test" in capsys.readouterr().err
    with pytest.raises(ValueError, match="volume 3 in train and val"):
        check_disjoint({"train": ["1", "3"], "val": ["3"]})


def test_a_slice_set_without_manifest_names_the_command(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--out", str(tmp_path / "lists")])
    assert "python -m workflows.convert" in capsys.readouterr().err


def test_an_empty_balanced_sample_is_refused_with_the_way_out(slice_set):
    rows = [r for r in read_manifest(slice_set) if r["liver_pixels"]]  # only positive slices
    with pytest.raises(ValueError, match=r"0 negative slices: a balanced sample of 10000 \+ 10000 is empty. "
                                         r"Ask --negatives 0"):
        plan_split(rows, val_fraction=0)
    plan = plan_split(rows, negatives=0, val_fraction=0)
    assert plan.counts["train_used"] == {"positive": len(rows), "negative": 0}


def test_the_old_positional_input_still_works_and_the_input_is_given_once(slice_set, tmp_path, capsys):
    # `split SLICES --out LISTS` was the spelling before release 0.2; --input / --output are the new ones
    assert main([str(slice_set), "--out", str(tmp_path / "old"), "--positives", "4", "--negatives", "4"]) == 0
    assert (tmp_path / "old" / "split.json").exists()
    for argv in ([str(slice_set), "--input", str(slice_set), "--output", str(tmp_path / "twice")],
                 ["--output", str(tmp_path / "none")]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "--input" in capsys.readouterr().err
