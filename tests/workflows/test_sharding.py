"""Sharded conversion: N runs, each converting share I of N into one output, give the files one run gives."""

import subprocess
import sys
from pathlib import Path

import pytest

from workflows.data.conversion import convert, shard_of
from workflows.machine.shards import parse_shard
from workflows.data.discovery import find_volume_sources
from workflows.data.synthetic_cases import generate_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def raw(tmp_path):
    generate_dataset(tmp_path / "raw", cases=5, seed=4, size=16, slices=4, progress=False)
    return tmp_path / "raw"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shards_are_even_disjoint_and_cover_every_volume(raw):
    sources, _ = find_volume_sources(raw)
    shares = [[s.volume_id for s in shard_of(sources, (i, 2))] for i in (1, 2)]
    assert shares == [["0", "2", "4"], ["1", "3"]]
    assert [s.volume_id for s in shard_of(sources, None)] == [s.volume_id for s in sources]


def test_two_shards_into_one_output_give_the_bytes_of_one_run(raw, tmp_path):
    convert(raw, tmp_path / "whole", progress=False)
    shared = tmp_path / "shared"
    first = convert(raw, shared, progress=False, shard=(1, 2))
    assert first.converted == ["0", "2", "4"] and not (shared / "manifest.csv").exists()
    second = convert(raw, shared, progress=False, shard=(2, 2))  # the last shard writes the manifest
    assert second.converted == ["1", "3"]
    assert _files(shared) == _files(tmp_path / "whole")


def test_merge_writes_the_manifest_of_what_is_complete_and_names_the_missing(raw, tmp_path, capsys):
    shared = tmp_path / "shared"
    convert(raw, shared, progress=False, shard=(2, 2))
    merged = convert(raw, shared, progress=True, merge=True)
    assert sorted(merged.failed) == ["0", "2", "4"] and "not converted into" in merged.failed["0"]
    manifest = (shared / "manifest.csv").read_text()
    assert "volume-1_slice_0" in manifest and "volume-0_slice_0" not in manifest
    convert(raw, shared, progress=False, shard=(1, 2))  # the missing shard completes it: one run's manifest
    convert(raw, tmp_path / "whole", progress=False)
    assert _files(shared) == _files(tmp_path / "whole")


@pytest.mark.parametrize("text", ["0/2", "3/2", "2", "a/b", "1/0"])
def test_a_bad_shard_is_refused_in_one_line(text):
    with pytest.raises(ValueError, match="--shard must be I/N"):
        parse_shard(text)


def test_the_command_line_takes_shard_or_merge(raw, tmp_path):
    base = [sys.executable, "-m", "workflows.convert", "--input", str(raw), "--output", str(tmp_path / "out")]
    bad = subprocess.run(base + ["--shard", "3/2"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("got '3/2'.") and "Traceback" not in bad.stderr
    for shard in ("1/2", "2/2"):
        done = subprocess.run(base + ["--shard", shard], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "manifest.csv").is_file()
    assert "writing the manifest" in done.stdout + done.stderr
