"""`pip install .` (not only -e) gives a working medge: every package, the schemas, the
dashboard page and the bundled data end up in the wheel, and the installed copy runs."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_a_working_medge(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("medge-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("medge/main.py", "medge/edge/sources/watch.py", "medge/train/pipeline.py",
                     "medge/convert/pipeline.py", "medge/dashboard/static/index.html", "medge/fleet/cli.py",
                     "medge/edge/schemas/result.schema.json", "medge/edge/schemas/bundle.schema.json",
                     "medge/data/pneumoniamnist_28.npz", "medge/data/chest_xray_samples/NORMAL/IM-0115-0001.jpeg"):
        assert expected in names, expected

    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    # Run from an empty folder with only the installed copy on the path (not this checkout).
    script = ("import medge, medge.data, medge.edge.schemas as s; "  # noqa: UP031
              "assert medge.__file__.startswith(%r), medge.__file__; "
              "assert medge.data.PNEUMONIAMNIST.exists() and len(medge.data.chest_xray_sample_files()) == 3; "
              "assert s.load_schema('result')['properties']['schema']['const'] == 'medge.result/1'; "
              "from medge.main import main; main()") % str(target)
    env = dict(os.environ, PYTHONPATH=str(target))
    done = subprocess.run([sys.executable, "-c", script, "--version"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "medge, version" in done.stdout


def test_the_build_backend_is_pinned_and_installed_at_that_version():
    """The wheel above is built without isolation, with whatever setuptools is installed: the
    test extra installs exactly the [build-system] pin, so a fresh venv builds like CI does
    (`license = "Apache-2.0"` needs setuptools >= 77; a looser pin let 75 through)."""
    import tomllib
    from importlib.metadata import version

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (requirement,) = [r for r in pyproject["build-system"]["requires"] if r.startswith("setuptools")]
    name, _, pinned = requirement.partition("==")
    assert name == "setuptools" and pinned, f"{requirement}: pin the build backend exactly"
    assert f"setuptools=={pinned}" in pyproject["project"]["optional-dependencies"]["test"]
    assert version("setuptools") == pinned, "reinstall: pip install -e '.[all]'"
    assert tuple(int(part) for part in pinned.split(".")[:1]) >= (77,)


def test_ci_runs_the_readme_commands_exactly_as_written():
    """.ci/readme-commands reads the README's "Two commands" block itself; nothing is retyped."""
    done = subprocess.run([str(ROOT / ".ci" / "readme-commands"), "--dry-run"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    readme = (ROOT / "README.md").read_text()
    block = readme.split("\n## Two commands", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    expected = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert done.stdout.splitlines() == expected
    assert expected[0].startswith("python3 -m pip install") and "medge demo" in expected[0]
    assert expected[-1] == "python3 -m pytest -q"


def test_the_version_the_device_reports_is_the_distributions():
    # medge.edge.about holds the version edge publishes (status, results); pyproject.toml the one pip sees.
    import tomllib

    from medge.edge.about import __version__

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == __version__
