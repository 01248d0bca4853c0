"""The install/deploy guides stay true: the files they name exist, and the tflite-runtime
fallback set differs from pyproject.toml only where NumPy 1.x forces it."""
import re
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "docs" / "install.md", REPO / "docs" / "deploy.md"]
FALLBACK = REPO / "deploy" / "requirements-edge-tflite.txt"
# Held back for NumPy 1.x, or replaced by tflite-runtime: the only allowed differences.
NUMPY1_OVERRIDES = {"numpy", "opencv-python-headless", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "tflite-runtime"}


def pins(requirements: list[str]) -> dict[str, str]:
    found = {}
    for line in requirements:
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_the_fallback_set_matches_pyproject_except_for_the_numpy1_holdbacks():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = pins(project["dependencies"] + extras["edge"] + extras["dicom"])
    fallback = pins(FALLBACK.read_text().splitlines())
    assert fallback["numpy"].startswith("1.") and fallback["tflite-runtime"] == "2.14.0"
    major, minor = map(int, fallback["opencv-python-headless"].split(".")[:2])
    assert (major, minor) < (4, 12)
    for name, version in fallback.items():
        if name not in NUMPY1_OVERRIDES:
            assert wanted.get(name) == version, f"{name}: fallback {version}, pyproject {wanted.get(name)}"
    # Every non-runtime dependency of the device install is in the fallback set.
    runtimes = {"ai-edge-litert", "onnxruntime"}
    assert set(wanted) - runtimes <= set(fallback), set(wanted) - runtimes - set(fallback)


def test_every_deploy_path_the_guides_name_exists():
    missing = []
    for doc in DOCS:
        for path in sorted(set(re.findall(r"deploy/[A-Za-z0-9_./-]+", doc.read_text()))):
            path = path.rstrip(".")
            if path.startswith("deploy/") and not (REPO / path).exists() and "example.org" not in path:
                missing.append(f"{doc.name}: {path}")
    assert not missing, missing


def test_make_credentials_documents_every_option_the_guides_use():
    usage = subprocess.run(["bash", str(REPO / "deploy" / "mosquitto" / "make-credentials.sh"), "-h"],
                           capture_output=True, text=True, timeout=30)
    assert usage.returncode == 0
    for doc in DOCS:
        text = doc.read_text().replace("\\\n", " ")  # join shell line continuations
        for command in re.findall(r"make-credentials\.sh[^\n`]*", text):
            for option in re.findall(r"(?<!\S)(-[a-zA-Z])(?=\s)", command + " "):
                assert f"  {option} " in usage.stderr, f"{doc.name} uses {option}, which -h does not list"
