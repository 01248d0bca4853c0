"""The CLI as a user meets it: help everywhere, a version, and a reference that matches the code."""
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from medge import __version__
from medge.clidoc import iter_command_paths
from medge.main import cli

ROOT = Path(__file__).resolve().parents[1]


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_every_command_has_help():
    paths = iter_command_paths()
    assert len(paths) >= 10
    for path in paths:
        result = CliRunner().invoke(cli, path[1:] + ["--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


def test_cli_reference_is_in_sync_with_the_code():
    # Rendered in a fresh process, exactly as the committed file was made.
    done = subprocess.run([sys.executable, "-m", "medge.clidoc"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed.strip() == done.stdout.strip(), \
        "docs/cli.md is stale: run `python -m medge.clidoc > docs/cli.md`"
    assert "## `medge edge run`" in committed and "## `medge demo`" in committed


def test_installed_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "medge", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "train" in done.stdout and "edge" in done.stdout
