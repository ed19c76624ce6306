"""The project is installed (``pip install -r requirements.txt`` holds ``-e .``): it imports from any folder and its
command lines exist."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_the_packages_import_from_another_folder(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import networks, transforms, workflows.bundle; "
                             "print(workflows.bundle.bundle_root())"], cwd=tmp_path, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("bundles/liver_tumor_ct_segmentation")


COMMANDS = ["liver-ct-convert", "liver-ct-explore", "liver-ct-split", "liver-ct-evaluate", "liver-ct-infer",
            "liver-ct-synthetic", "liver-ct-quickstart", "liver-ct-realdata", "liver-ct-ensemble"]


def _installed(command):
    return shutil.which(command) or shutil.which(command, path=str(Path(sys.executable).parent))


def test_every_command_line_is_installed_and_one_answers(tmp_path):
    assert all(_installed(c) for c in COMMANDS), [c for c in COMMANDS if not _installed(c)]
    result = subprocess.run([_installed("liver-ct-infer"), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and "--input" in result.stdout and "--output" in result.stdout, result.stderr


@pytest.mark.parametrize("command", ["convert", "explore", "split", "evaluate", "infer", "synthetic", "quickstart",
                                     "realdata", "ensemble"])
def test_help_answers_without_importing_torch_or_monai(command):
    code = (f"import sys\nfrom workflows.{command} import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
