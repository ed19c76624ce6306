"""Conversion never mixes, overwrites or deletes what it does not own, and runs once per output folder."""

import os
import signal
import subprocess
import sys
import time

import pytest

from workflows.data.conversion import convert
from workflows.machine.locking import LOCK_NAME, FolderInUse, folder_lock, machine_tag
from workflows.data.synthetic_cases import generate_dataset


@pytest.fixture()
def raw(tmp_path):
    generate_dataset(tmp_path / "raw", cases=2, seed=3, size=16, slices=4, progress=False)
    return tmp_path / "raw"


def test_a_second_input_into_a_finished_output_is_refused(raw, tmp_path):
    convert(raw, tmp_path / "out", progress=False)
    other = tmp_path / "other"
    generate_dataset(other, cases=1, seed=9, size=16, slices=4, progress=False)
    with pytest.raises(ValueError, match=r"holds the conversion of .*raw.*would mix two datasets. Use another --output"):
        convert(other, tmp_path / "out", progress=False)


def test_a_folder_not_made_by_conversion_is_refused_and_left_untouched(raw, tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"thesis is not empty and was not made by this conversion"):
        convert(raw, mine, progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["chapter1.txt"]


def test_a_source_changed_since_it_was_converted_is_refused_by_name(raw, tmp_path):
    convert(raw, tmp_path / "out", progress=False)
    volume = raw / "volume-1.nii.gz"
    data = bytearray(volume.read_bytes())
    data[-9] ^= 0xFF  # the same size, other content
    volume.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"volume-1.nii.gz changed since volume 1 was converted.*volume-1.csv"):
        convert(raw, tmp_path / "out", progress=False)


def test_a_source_copied_again_with_new_times_is_not_converted_again(raw, tmp_path):
    out = tmp_path / "out"
    convert(raw, out, progress=False)
    slices = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    for volume in raw.iterdir():  # what `cp -r` without -p or a new download does
        stat = volume.stat()
        os.utime(volume, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    summary = convert(raw, out, progress=False)
    assert summary.converted == [] and sorted(summary.skipped) == ["0", "1"] and not summary.failed
    assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == slices
    assert convert(raw, out, progress=False).skipped  # the record took the new times


def test_only_the_tools_own_stale_temporaries_in_its_own_folders_are_removed(raw, tmp_path):
    out = tmp_path / "out"
    convert(raw, out, progress=False)
    dead = 2**22 + 12345  # above the usual pid_max: no such process
    (out / "images" / f".tmp-{dead}-volume-0_slice_0.png").write_bytes(b"half")
    (out / "images" / f".tmp-{os.getppid()}-in-use.png").write_bytes(b"a live run's")
    below = out / "scans_of_mine"
    below.mkdir()
    (below / f".tmp-{dead}-notes.txt").write_text("not the tool's")
    mine = out / "images" / f".tmp-{dead}.{machine_tag()}-volume-1_slice_0.png"
    mine.write_bytes(b"half, this machine's")
    elsewhere = out / "images" / f".tmp-{dead}.0badc0de-volume-1_slice_1.png"  # a shard on another machine writes
    elsewhere.write_bytes(b"being written on another machine")
    convert(raw, out, progress=False)
    assert not (out / "images" / f".tmp-{dead}-volume-0_slice_0.png").exists() and not mine.exists()
    assert elsewhere.exists()
    assert (out / "images" / f".tmp-{os.getppid()}-in-use.png").exists()
    assert (below / f".tmp-{dead}-notes.txt").read_text() == "not the tool's"


def test_a_second_run_on_one_folder_is_refused_naming_the_first(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / LOCK_NAME).write_text(f"{sleeper.pid}\n")
        with pytest.raises(FolderInUse, match=rf"in use by a conversion running as PID {sleeper.pid}"):
            with folder_lock(tmp_path / "out", "a conversion"):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with folder_lock(tmp_path / "out", "a conversion"):  # the holder is gone: its lock is taken over
        assert (tmp_path / "out" / LOCK_NAME).read_text().split() == [str(os.getpid()), machine_tag()]
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads child processes from /proc (Linux)")
def test_conversion_workers_die_with_a_killed_parent(tmp_path):
    generate_dataset(tmp_path / "raw", cases=6, seed=3, size=64, slices=40, progress=False)
    process = subprocess.Popen([sys.executable, "-m", "workflows.convert", "--input", str(tmp_path / "raw"),
                                "--output", str(tmp_path / "out"), "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    workers = []
    while time.time() < deadline and len(workers) < 2 and process.poll() is None:
        workers = [pid for pid in _children(process.pid) if "spawn_main" in open(f"/proc/{pid}/cmdline").read()]
        time.sleep(0.05)
    assert len(workers) >= 2, "the workers did not start"
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def test_ctrl_c_ends_a_conversion_in_one_line_with_130_and_a_rerun_carries_on(tmp_path):
    generate_dataset(tmp_path / "raw", cases=6, seed=3, size=128, slices=60, progress=False)  # seconds of work
    command = [sys.executable, "-m", "workflows.convert", "--input", str(tmp_path / "raw"), "--output",
               str(tmp_path / "out")]
    # a shell that starts jobs in the background ignores SIGINT for them (CI may): give the command Ctrl-C back
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "out" / "images").glob("*.png")):
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "interrupted; rerun the same command to continue"
    assert not list((tmp_path / "out").rglob(".tmp-*"))  # nothing half-written under any name
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0 and len(list((tmp_path / "out" / "images").glob("*.png"))) == 6 * 60


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are a POSIX thing")
def test_a_named_pipe_given_as_a_scan_is_refused_not_read(tmp_path):
    from transforms import InvalidScanError, LoadScan

    os.mkfifo(tmp_path / "scan.nii.gz")
    with pytest.raises(InvalidScanError, match=r"scan.nii.gz: not a regular file \(a pipe"):
        LoadScan()(tmp_path / "scan.nii.gz")


def test_a_full_disk_fails_the_volume_in_one_line_and_keeps_the_finished_ones(raw, tmp_path, monkeypatch):
    import errno

    import workflows.data.conversion as conversion

    original = conversion.write_bytes_atomic

    def full_for_volume_1(path, data):
        if "volume-1_" in path.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(path, data)

    monkeypatch.setattr(conversion, "write_bytes_atomic", full_for_volume_1)
    summary = convert(raw, tmp_path / "out", progress=False)
    assert summary.converted == ["0"] and "No space left on device" in summary.failed["1"]
    assert "\n" not in summary.failed["1"]
    monkeypatch.setattr(conversion, "write_bytes_atomic", original)  # space freed: the rerun carries on
    again = convert(raw, tmp_path / "out", progress=False)
    assert again.skipped == ["0"] and again.converted == ["1"]


def test_a_lock_held_on_another_machine_is_never_taken_over(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).write_text(f"{2**22 + 1} 0badc0de\n")  # no such PID here: not proof of a kill there
    with pytest.raises(FolderInUse, match="on another machine"):
        with folder_lock(tmp_path / "out", "a conversion"):
            pass
