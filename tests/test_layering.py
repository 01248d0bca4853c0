"""The device installs medge[edge] only: nothing under medge.edge may pull in TensorFlow,
Keras, the host-side packages (medge.train, medge.convert, medge.dashboard, medge.fleet), or the root `medge`
package (cli/: the command line, demo, local broker), which itself imports edge."""
import ast
import subprocess
import sys
from pathlib import Path

EDGE_DIR = Path(__file__).resolve().parents[1] / "edge"
FORBIDDEN = ("tensorflow", "keras", "tf2onnx", "medge.train", "medge.convert", "medge.dashboard", "medge.fleet")
# The root package's own modules (cli/*.py, found on disk so a new one is covered without an edit).
ROOT_MODULES = tuple(sorted(f"medge.{path.stem}" for path in (EDGE_DIR.parent / "cli").glob("*.py")
                            if path.stem != "__init__"))


def test_importing_every_edge_module_never_imports_tensorflow():
    script = (
        "import importlib, pkgutil, sys, medge.edge\n"
        "for module in pkgutil.walk_packages(medge.edge.__path__, 'medge.edge.'):\n"
        "    importlib.import_module(module.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx') "
        "or m.startswith(('medge.train', 'medge.convert', 'medge.dashboard', 'medge.fleet')) "
        f"or m in {ROOT_MODULES!r})\n"
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
                if node.module == "medge":  # from medge import DISCLAIMER, main, ...
                    names = [f"medge.{alias.name}" for alias in node.names] or ["medge"]
            elif isinstance(node, ast.ImportFrom) and node.level >= 2:
                # from .. import x / from ..train import x: relative to the root package.
                names = [f"medge.{node.module}"] if node.module else [f"medge.{alias.name}" for alias in node.names]
            offenders += [f"{path.relative_to(EDGE_DIR)}: {name}" for name in names
                          if name == "medge" or name.startswith(FORBIDDEN) or _is_root_package(name)]
    assert not offenders, offenders


def _is_root_package(name: str) -> bool:
    """The root package itself, or one of its modules: anything under medge.* that is not a subpackage."""
    parts = name.split(".")
    if parts[0] != "medge":
        return False
    if len(parts) == 1:
        return True
    return f"medge.{parts[1]}" in ROOT_MODULES or parts[1] in ("DISCLAIMER", "__version__")


def test_root_modules_are_known():
    # The list above really holds the CLI modules, so the checks are not vacuous.
    assert {"medge.main", "medge.demo", "medge.broker"} <= set(ROOT_MODULES)
