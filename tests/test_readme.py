"""The README is a map: short, every docs page linked, and every command line it shows works as written (the
command lines answer --help; the bundle commands name configs, run ids and settings that exist)."""

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
DOCS = REPO / "bundles" / "liver_tumor_ct_segmentation" / "docs"


def _commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_is_a_map_under_8000_characters_linking_every_docs_page():
    assert len(README) < 8000, len(README)
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    assert links and all((REPO / link).exists() for link in links), [l for l in links if not (REPO / l).exists()]
    linked = {(REPO / link).resolve() for link in links}
    assert {p.resolve() for p in DOCS.glob("*.md")} <= linked


def test_the_docs_pages_link_only_to_what_exists():
    for page in DOCS.glob("*.md"):
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / link).exists() or (REPO / link).exists(), (page.name, link)


COMMAND_LINES = sorted({c.split()[2] for c in _commands() if c.startswith("python -m workflows.")})


@pytest.mark.parametrize("module", COMMAND_LINES)
def test_each_command_line_the_readme_shows_answers_help(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-1000:]
    shown = [c for c in _commands() if c.split()[2] == module]
    options = set(re.findall(r"--[a-z][a-z-]*", result.stdout))
    for command in shown:  # every option the README gives is one the command line has
        given = [a for a in shlex.split(command)[3:] if a.startswith("--")]
        assert set(given) <= options, (command, set(given) - options)


BUNDLE_COMMANDS = [c for c in _commands() if "monai.bundle run" in c]
#: settings ``monai.bundle run`` takes itself, not the config
RUN_ARGUMENTS = {"config_file", "meta_file", "logging_file", "args_file", "tracking"}


@pytest.mark.parametrize("command", BUNDLE_COMMANDS, ids=lambda c: re.search(r"monai.bundle run (\S+)", c).group(1))
def test_each_bundle_command_names_configs_a_run_id_and_settings_that_exist(command):
    args = shlex.split(command)
    args = args[args.index("run") + 1:]
    run_id, options = args[0], dict(zip(args[1::2], args[2::2]))
    files = options["--config_file"]
    files = ast.literal_eval(files) if files.startswith("[") else [files]
    assert all((REPO / f).is_file() for f in files), files
    parser = ConfigParser()
    parser.read_config([str(REPO / f) for f in files])
    assert run_id in parser.config and isinstance(parser.config[run_id], list)
    for key in options:
        name = key[2:]
        assert name in RUN_ARGUMENTS or name.split("#")[0] in parser.config, (command, name)
