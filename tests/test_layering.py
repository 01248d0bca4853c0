"""The device installs medge[edge] only: nothing under medge.edge may pull in TensorFlow,
Keras, or the host-side packages (medge.train, medge.convert)."""
import ast
import subprocess
import sys
from pathlib import Path

EDGE_DIR = Path(__file__).resolve().parents[1] / "edge"
FORBIDDEN = ("tensorflow", "keras", "tf2onnx", "medge.train", "medge.convert", "medge.dashboard")


def test_importing_every_edge_module_never_imports_tensorflow():
    script = (
        "import importlib, pkgutil, sys, medge.edge\n"
        "for module in pkgutil.walk_packages(medge.edge.__path__, 'medge.edge.'):\n"
        "    importlib.import_module(module.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx') "
        "or m.startswith(('medge.train', 'medge.convert', 'medge.dashboard')))\n"
        "print(len([m for m in sys.modules if m.startswith('medge.edge')]))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip().splitlines()[-1]) > 3  # the walk really imported the package


def test_no_edge_source_file_imports_host_packages():
    offenders = []
    for path in EDGE_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level >= 2:
                names = [f"medge.{node.module or ''}"]  # from ..train import x
            offenders += [f"{path.name}: {name}" for name in names if name.startswith(FORBIDDEN)]
    assert not offenders, offenders
