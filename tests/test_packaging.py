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
                     "medge/convert/pipeline.py", "medge/dashboard/static/index.html",
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
