import hashlib
import json

import pytest
from monai.data import load_decathlon_datalist

from workflows.data.slice_set import read_manifest
from workflows.split import main
from workflows.data.splitting import check_disjoint, plan_split, read_groups, slices_dirs_of, write_split


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


def test_a_scarce_class_is_used_whole_without_shrinking_the_other(slice_set):
    rows = read_manifest(slice_set)
    plan = plan_split(rows, positives=10_000, negatives=10_000, chunk_size=2_000, seed=0)
    used, available = plan.counts["train_used"], plan.counts["train_available"]
    assert used["positive"] == available["positive"] and used["negative"] == available["negative"]
    assert available["positive"] != available["negative"]  # one kind is scarcer, and the other is kept whole
    assert "asked for 10000 positive + 10000 negative" in plan.messages[0] and "scarcer" in plan.messages[0]
    plan = plan_split(rows, positives=5, negatives=10_000, chunk_size=2_000, seed=0)
    assert plan.counts["train_used"] == {**plan.counts["train_used"], "positive": 5, "negative": available["negative"]}


def test_volumes_of_one_patient_never_straddle_splits(slice_set, tmp_path):
    rows = read_manifest(slice_set)
    ids = sorted({r["volume_id"] for r in rows})
    groups = {ids[0]: "P1", ids[1]: "P1", ids[2]: "P1", ids[3]: "P2", ids[4]: "P2"}
    (tmp_path / "groups.csv").write_text("volume_id,patient_id\n" + "".join(f"{v},{p}\n" for v, p in groups.items()))
    for seed in range(6):
        plan = plan_split(rows, positives=4, negatives=4, val_fraction=0.34, seed=seed,
                          groups=read_groups(tmp_path / "groups.csv"))
        where = {v: s for s, vs in plan.volumes.items() for v in vs}
        assert len({where[v] for v in ids[:3]}) == 1 and len({where[ids[3]], where[ids[4]]}) == 1
    # a recorded DICOM PatientID groups volumes by itself
    twin = [dict(r, patient_id="same") if r["volume_id"] in ids[:2] else r for r in rows]
    for seed in range(6):
        where = {v: s for s, vs in plan_split(twin, positives=4, negatives=4, val_fraction=0.5, seed=seed).volumes.items()
                 for v in vs}
        assert where[ids[0]] == where[ids[1]]
    (tmp_path / "bad.csv").write_text("volume,patient\n1,2\n")
    with pytest.raises(ValueError, match="volume_id,patient_id"):
        read_groups(tmp_path / "bad.csv")


def test_target_both_samples_tumour_slices_first(slice_set):
    rows = read_manifest(slice_set)
    plan = plan_split(rows, target="both", positives=10, negatives=2, val_fraction=0.2, seed=3)
    training = [r for c in plan.chunks for r in c]
    with_tumour = sum(bool(r["tumor_pixels"]) for r in training)
    available = sum(bool(r["tumor_pixels"]) for r in rows if r["volume_id"] in plan.volumes["train"])
    assert with_tumour == min(5, available) == plan.counts["train_used"]["with_tumour"] > 0


def test_several_slice_sets_split_together_and_a_volume_twice_is_refused(slice_set, tmp_path, capsys):
    import shutil

    import cv2
    import numpy as np

    from workflows.data.conversion import convert
    two_d = tmp_path / "set"
    for folder in ("images", "masks"):
        (two_d / folder).mkdir(parents=True)
    for k in range(4):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 255 if k % 2 else 0
        cv2.imwrite(str(two_d / "images" / f"slice_{k}.png"), np.full((32, 32), 90, np.uint8))
        cv2.imwrite(str(two_d / "masks" / f"slice_{k}.png"), mask)
    convert(two_d, tmp_path / "slices_2d", progress=False)
    lists = tmp_path / "lists"
    assert main(["--input", str(slice_set), "--input", str(tmp_path / "slices_2d"), "--output", str(lists),
                 "--positives", "20", "--negatives", "20", "--val-volumes", "set"]) == 0
    assert slices_dirs_of(lists) == [slice_set.resolve(), (tmp_path / "slices_2d").resolve()]
    assert json.loads((lists / "split.json").read_text())["volumes"]["val"] == ["set"]
    shutil.copytree(slice_set, tmp_path / "copy")
    with pytest.raises(SystemExit):
        main(["--input", str(slice_set), "--input", str(tmp_path / "copy"), "--output", str(tmp_path / "again")])
    assert "is in" in capsys.readouterr().err



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


def test_only_one_kind_of_slice_trains_on_it_and_says_so_and_nothing_is_refused(slice_set):
    rows = [r for r in read_manifest(slice_set) if r["liver_pixels"]]  # only positive slices
    plan = plan_split(rows, val_fraction=0)
    assert plan.counts["train_used"]["positive"] == len(rows) and plan.counts["train_used"]["negative"] == 0
    assert "0 negative" in plan.messages[0]
    with pytest.raises(ValueError, match=r"is empty"):
        plan_split(rows, positives=0, val_fraction=0)


def test_the_old_positional_input_still_works_and_the_input_is_given_once(slice_set, tmp_path, capsys):
    # `split SLICES --out LISTS` was the spelling before release 0.2; --input / --output are the new ones
    assert main([str(slice_set), "--out", str(tmp_path / "old"), "--positives", "4", "--negatives", "4"]) == 0
    assert (tmp_path / "old" / "split.json").exists()
    for argv in ([str(slice_set), "--input", str(slice_set), "--output", str(tmp_path / "twice")],
                 ["--output", str(tmp_path / "none")]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "--input" in capsys.readouterr().err


def _kaggle_layout(root):
    import cv2
    import numpy as np
    for folder in ("train_images/train_images", "train_masks/train_masks"):
        (root / folder).mkdir(parents=True)
    for volume in (0, 1, 2):
        for k in range(6):
            name = f"volume-{volume}_slice_{k}.jpg"
            mask = np.zeros((32, 32), np.uint8)
            if k % 2:
                mask[8:24, 8:24] = 255
            cv2.imwrite(str(root / "train_images/train_images" / name), np.full((32, 32), 80 + 20 * (k % 2), np.uint8))
            cv2.imwrite(str(root / "train_masks/train_masks" / name), mask)


def test_the_reference_lists_import_with_their_windows_paths_and_the_leak_is_reported(tmp_path, capsys):
    _kaggle_layout(tmp_path / "kaggle")
    reference = tmp_path / "reference"
    reference.mkdir()
    windows = "C:\\Users\\me\\LiTS\\train_images\\train_images\\"
    (reference / "chunk_0.txt").write_text("".join(f"{windows}volume-{v}_slice_{k}.jpg\r\n" for v in (0, 1) for k in range(0, 6, 2)))
    (reference / "chunk_1.txt").write_text("".join(f"{windows}volume-{v}_slice_{k}.jpg\r\n" for v in (0, 1) for k in (1, 5)))
    (reference / "val_balanced.txt").write_text(f"{windows}volume-1_slice_3.jpg\n{windows}volume-2_slice_1.jpg\n")
    lists = tmp_path / "lists"
    assert main(["--from-reference", str(reference), "--images-root", str(tmp_path / "kaggle"),
                 "--output", str(lists)]) == 0
    out = capsys.readouterr().out
    assert "LEAK: 1 of the 2 validation volumes also train, and 1 validation slices have a neighbouring slice" in out
    chunk = load_decathlon_datalist(lists / "chunk_1.json", data_list_key="training")
    assert [(e["volume_id"], e["slice_index"], e["positive"]) for e in chunk][:2] == [("0", 1, True), ("0", 5, True)]
    assert all(p.endswith(".jpg") for e in chunk for p in (e["image"], e["label"]))
    assert json.loads((lists / "split.json").read_text())["counts"]["leak"]["volumes"] == ["1"]
    (reference / "chunk_2.txt").write_text(f"{windows}volume-9_slice_0.jpg\n")
    with pytest.raises(SystemExit):
        main(["--from-reference", str(reference), "--images-root", str(tmp_path / "kaggle"), "--output", str(lists)])
    assert "volume-9_slice_0.jpg" in capsys.readouterr().err


def test_the_bundle_trains_on_imported_reference_lists(tmp_path):
    from monai.bundle import ConfigWorkflow
    from workflows.bundle import config_file
    _kaggle_layout(tmp_path / "kaggle")
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "chunk_0.txt").write_text("".join(f"D:\\lits\\volume-{v}_slice_{k}.jpg\n" for v in (0, 1) for k in range(6)))
    (reference / "val.txt").write_text("".join(f"D:\\lits\\volume-2_slice_{k}.jpg\n" for k in range(6)))
    assert main(["--from-reference", str(reference), "--images-root", str(tmp_path / "kaggle"),
                 "--output", str(tmp_path / "lists")]) == 0
    workflow = ConfigWorkflow(config_file=config_file("train"), workflow_type="train", run_id="training",
                              **{"dataset_dir": str(tmp_path / "lists"), "ckpt_dir": str(tmp_path / "models"),
                                 "spatial_size": 32, "network_def#channels": [4, 8, 16, 32], "epochs_per_chunk": 1,
                                 "progress": False})
    workflow.initialize()
    log = workflow.run()[-1]
    workflow.finalize()
    assert [e["chunk"] for e in log] == [0] and (tmp_path / "models" / "model.pt").exists()


def test_volumes_that_label_the_liver_only_train_with_their_tumour_marked_unknown(slice_set, tmp_path):
    rows = read_manifest(slice_set)
    volumes = sorted({r["volume_id"] for r in rows})
    plan = plan_split(rows, target="both", positives=10**6, negatives=10**6, val_fraction=0.3, seed=1,
                      liver_only={volumes[0]})
    assert volumes[0] in plan.volumes["train"]
    write_split(plan, tmp_path / "lists", slice_set)
    entries = [e for k in range(len(plan.chunks))
               for e in json.loads((tmp_path / "lists" / f"chunk_{k}.json").read_text())["training"]]
    flagged = {e["volume_id"] for e in entries if e.get("tumour_labelled") is False}
    assert flagged == {volumes[0]}
    assert all("tumour_labelled" not in e for e in entries if e["volume_id"] != volumes[0])
    val = json.loads((tmp_path / "lists" / "val.json").read_text())["validation"]
    assert val and all("tumour_labelled" not in e for e in val)
    with pytest.raises(ValueError, match=rf"{volumes[0]} label the liver but not tumours"):
        plan_split(rows, target="both", test_volumes=[volumes[0]], liver_only={volumes[0]})
